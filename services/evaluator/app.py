"""evaluator: fans each `GenerationDone` out into evaluation tasks, and runs them per tier."""

from faststream.nats import NatsMessage

from services.evaluator.fanout import evaluation_messages
from services.llm_worker.service import LLMWorkers
from shared.events import GenerationDone
from shared.service import decode, make_app, make_broker, publish_all, subscribe
from shared.settings import get_settings
from shared.topology import FANOUT_CONSUMER, find_reader

settings = get_settings()
broker = make_broker(settings)
workers = LLMWorkers(broker, settings, "evaluation", readers=(FANOUT_CONSUMER,))


async def fan_out(msg: NatsMessage) -> None:
    done = await decode(broker, msg, GenerationDone, stage="evaluation")
    await publish_all(broker, evaluation_messages(done), heartbeat=msg.in_progress)


async def startup() -> None:
    await workers.start()
    subscribe(broker, find_reader(settings, FANOUT_CONSUMER), fan_out, max_workers=8)


app = make_app(broker, on_startup=[startup], after_shutdown=[workers.stop])
