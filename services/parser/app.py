"""parser: turns each judge answer into `EvaluationScored` (a score or a parse error)."""

from faststream.nats import NatsMessage

from services.parser.evaluation import score_evaluation
from services.parser.scoring import reason_code
from shared import metrics
from shared.events import EvaluationDone
from shared.service import decode, jetstream, make_app, make_broker, publish, subscribe
from shared.settings import get_settings
from shared.topology import PARSER_CONSUMER, ensure_service_topology, find_reader

settings = get_settings()
broker = make_broker(settings)


async def score(msg: NatsMessage) -> None:
    done = await decode(broker, msg, EvaluationDone, stage="scoring")
    scored = score_evaluation(done)
    metrics.observe_score(scored.parser, reason_code(scored.parse_error) or "ok")
    await publish(broker, scored)


async def startup() -> None:
    await ensure_service_topology(await jetstream(broker), settings, readers=[PARSER_CONSUMER])
    subscribe(broker, find_reader(settings, PARSER_CONSUMER), score, max_workers=4)


app = make_app(broker, on_startup=[startup])
