"""combiner: expands a requested experiment into its plan and one task per generation."""

from faststream.nats import NatsMessage

from services.combiner.planning import PLANNING_PROBLEMS, plan_experiment
from shared.events import ExperimentRequested, TaskFailed
from shared.service import decode, give_up, jetstream, make_app, make_broker, publish, publish_all, subscribe
from shared.settings import get_settings
from shared.topology import COMBINER_CONSUMER, ensure_service_topology, find_reader

settings = get_settings()
broker = make_broker(settings)


async def plan(msg: NatsMessage) -> None:
    requested = await decode(broker, msg, ExperimentRequested, stage="planning")
    spec = requested.spec
    try:
        planned, tasks = plan_experiment(spec)
    except PLANNING_PROBLEMS as error:
        failure = TaskFailed(stage="planning", experiment_id=spec.experiment_id, task_id="plan",
                             reason="invalid_experiment", message=str(error), attempts=1)
        await give_up(broker, failure)
    await publish(broker, planned)
    await publish_all(broker, tasks, heartbeat=msg.in_progress)


async def startup() -> None:
    await ensure_service_topology(await jetstream(broker), settings, readers=[COMBINER_CONSUMER])
    subscribe(broker, find_reader(settings, COMBINER_CONSUMER), plan)


app = make_app(broker, on_startup=[startup])
