"""tracker: the single writer — every event becomes rows, artifact files and CSV lines."""

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any

from faststream.nats import NatsMessage
from nats.js.errors import NotFoundError

from services.tracker.db import make_engine
from services.tracker.dead_letters import DEAD_LETTER_STAGE, MaxDeliveriesAdvisory, record_dead_letter
from services.tracker.lease import Lease
from services.tracker.recorder import Tracker
from shared import metrics
from shared.events import (
    EvaluationDone,
    EvaluationScored,
    Event,
    ExperimentPlanned,
    ExperimentRequested,
    GenerationDone,
    TaskFailed,
)
from shared.lifecycle import BackgroundTasks
from shared.service import decode, jetstream, make_app, make_broker, subscribe
from shared.settings import get_settings
from shared.spend import open_spend_bucket, put_spend
from shared.topology import (
    DEAD_LETTER_CONSUMER,
    TRACKER_SUBJECTS,
    ensure_service_topology,
    find_reader,
)

settings = get_settings()
broker = make_broker(settings)
background = BackgroundTasks()


@cache
def tracker() -> Tracker:
    """Made at startup, not at import: importing the app opens no database."""
    return Tracker(settings.data, make_engine(settings.sqlalchemy_url()))


lease: list[Lease] = []
spend_bucket: list = []

RECORDERS_BY_EVENT: dict[type[Event], Callable[[Tracker, Any], None]] = {
    ExperimentRequested: Tracker.record_requested,
    ExperimentPlanned: Tracker.record_planned,
    GenerationDone: Tracker.record_generation,
    EvaluationDone: Tracker.record_evaluation,
    EvaluationScored: Tracker.record_score,
    TaskFailed: Tracker.record_failure,
}
RECORDERS_BY_SUBJECT = {event_type.subject: (event_type, record) for event_type, record in RECORDERS_BY_EVENT.items()}
RECORDERS = {durable: RECORDERS_BY_SUBJECT[subject] for durable, subject in TRACKER_SUBJECTS.items()}
"""Keyed by the durable names `shared.topology` declares, so they are spelled in one place; a
subject there without a recorder here fails at import."""


def recorder_for(event_type, record):
    async def handle(msg: NatsMessage) -> None:
        event = await decode(broker, msg, event_type, stage="tracking")
        record(tracker(), event)
        await publish_spend(event)

    return handle


async def publish_spend(event) -> None:
    """After a result of an experiment with a budget, its spend for the workers' budget gate
    (services/llm_worker/budget.py); written after the row, so it never runs ahead of the table."""
    if isinstance(event, GenerationDone | EvaluationDone) and event.task.max_cost is not None:
        experiment_id = event.task.experiment_id
        await put_spend(spend_bucket[0], experiment_id, tracker().spend(experiment_id))


class StoredTasks:
    """The streams that still hold a dead-lettered message."""

    def __init__(self, js) -> None:
        self.js = js

    async def payload(self, stream: str, sequence: int) -> bytes | None:
        try:
            return (await self.js.get_msg(stream, sequence)).data
        except NotFoundError:
            return None

    async def delete(self, stream: str, sequence: int) -> None:
        await self.js.delete_msg(stream, sequence)


async def handle_dead_letter(msg: NatsMessage) -> None:
    advisory = await decode(broker, msg, MaxDeliveriesAdvisory, stage=DEAD_LETTER_STAGE)
    await record_dead_letter(advisory, StoredTasks(broker.config.connection_state.stream), tracker().record_failure)


async def publish_progress() -> None:
    """Experiment progress gauges for dashboards, refreshed from the tables. Later activity moves a
    finished experiment's `finished_at` and reopening clears it, so after a first pass over every
    experiment only the unfinished ones and those whose `finished_at` changed are recomputed:
    recomputing the whole history every 2 s blocked the event loop. Experiments finished longer
    ago than `experiment_gauges_keep_s` lose their series and are not recomputed at all."""
    published: dict[str, datetime | None] = {}
    gauges = metrics.ExperimentGauges(settings.experiment_gauges_keep_s)
    while True:
        now = datetime.now(UTC)
        for experiment_id, finished_at in tracker().finished_at_by_experiment().items():
            if not gauges.shown(experiment_id, finished_at, now):
                continue
            if finished_at is not None and published.get(experiment_id) == finished_at:
                continue
            progress = tracker().progress(experiment_id)
            for stage, state in progress.stages.items():
                metrics.set_experiment_progress(experiment_id, stage, state.planned or 0, state.done,
                                                state.failed + state.skipped)
            metrics.set_experiment_cost(experiment_id, progress.cost_usd)
            published[experiment_id] = finished_at
        await asyncio.sleep(2.0)


async def startup() -> None:
    js = await jetstream(broker)
    await ensure_service_topology(js, settings, readers=[*TRACKER_SUBJECTS, DEAD_LETTER_CONSUMER])
    lease.append(await Lease.open(js, settings))
    spend_bucket.append(await open_spend_bucket(js, settings))
    await lease[0].acquire()  # a standby waits here, reading nothing, until the active tracker is gone
    background.start(lease[0].keep())
    tracker().reconcile_csvs()
    for durable, (event_type, record) in RECORDERS.items():
        subscribe(broker, find_reader(settings, durable), recorder_for(event_type, record))
    subscribe(broker, find_reader(settings, DEAD_LETTER_CONSUMER), handle_dead_letter)
    background.start(publish_progress())


async def release_lease() -> None:
    for held in lease:
        await held.release()


app = make_app(broker, on_startup=[startup], on_shutdown=[background.stop], after_shutdown=[release_lease])
