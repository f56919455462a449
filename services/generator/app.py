"""generator: runs generation tasks per tier and publishes `GenerationDone`."""

from services.llm_worker.service import LLMWorkers
from shared.service import make_app, make_broker
from shared.settings import get_settings

settings = get_settings()
broker = make_broker(settings)
workers = LLMWorkers(broker, settings, "generation")
app = make_app(broker, on_startup=[workers.start], after_shutdown=[workers.stop])
