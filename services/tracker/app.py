"""tracker: the single writer — every event becomes rows, artifact files and CSV lines."""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache

from faststream.nats import NatsMessage
from nats.js.errors import NotFoundError

from services.tracker.batches import BatchConsumer
from services.tracker.db import make_engine
from services.tracker.dead_letters import DEAD_LETTER_STAGE, MaxDeliveriesAdvisory, record_dead_letter
from services.tracker.lease import Lease
from services.tracker.recorder import RECORDERS, Recorded, Tracker
from shared import metrics
from shared.events import EvaluationDone, GenerationDone
from shared.lifecycle import BackgroundTasks
from shared.service import CONSUMER_POLL_INTERVAL_S, decode, jetstream, make_app, make_broker, subscribe
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
writing = asyncio.Lock()
"""Held while the database is written: the batch writer and the dead-letter handler take turns."""

EVENTS_BY_SUBJECT = {event_type.subject: event_type for event_type in RECORDERS}
EVENTS_BY_READER = {durable: EVENTS_BY_SUBJECT[subject] for durable, subject in TRACKER_SUBJECTS.items()}
"""Keyed by the durable names `shared.topology` declares, so they are spelled in one place; a
subject there without a recorder fails at import."""


async def publish_spend(events: Sequence[Recorded]) -> None:
    """After a batch with results of experiments that have a budget, their spend for the workers'
    budget gate (services/llm_worker/budget.py); written after the rows, so it never runs ahead of
    the table."""
    budgeted = {event.task.experiment_id for event in events
                if isinstance(event, GenerationDone | EvaluationDone) and event.task.max_cost is not None}
    for experiment_id in sorted(budgeted):
        await put_spend(spend_bucket[0], experiment_id, await asyncio.to_thread(tracker().spend, experiment_id))


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
    async with writing:  # one failure, rare: recorded on the loop, never beside a batch
        await record_dead_letter(advisory, StoredTasks(broker.config.connection_state.stream), tracker().record_failure)


async def publish_progress() -> None:
    """Experiment progress gauges for dashboards, refreshed from the tables. Later activity moves a
    finished experiment's `finished_at` and reopening clears it, so after a first pass over every
    experiment only the unfinished ones and those whose `finished_at` changed are recomputed:
    recomputing the whole history every 2 s blocked the event loop; the queries run in a thread.
    Experiments finished longer ago than `experiment_gauges_keep_s` lose their series and are not
    recomputed at all."""
    published: dict[str, datetime | None] = {}
    gauges = metrics.ExperimentGauges(settings.experiment_gauges_keep_s)
    while True:
        now = datetime.now(UTC)
        for experiment_id, finished_at in (await asyncio.to_thread(tracker().finished_at_by_experiment)).items():
            if not gauges.shown(experiment_id, finished_at, now):
                continue
            if finished_at is not None and published.get(experiment_id) == finished_at:
                continue
            progress = await asyncio.to_thread(tracker().progress, experiment_id)
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
    consumer = BatchConsumer(broker, js, tracker().record_batch, writing, after_record=publish_spend)
    readers = [find_reader(settings, durable) for durable in EVENTS_BY_READER]
    for reader in readers:
        background.start(consumer.read(reader, EVENTS_BY_READER[reader.durable]))
    background.start(consumer.write())
    background.start(metrics.poll_consumers(js, readers, CONSUMER_POLL_INTERVAL_S))
    subscribe(broker, find_reader(settings, DEAD_LETTER_CONSUMER), handle_dead_letter)
    background.start(publish_progress())


async def release_lease() -> None:
    for held in lease:
        await held.release()


app = make_app(broker, on_startup=[startup], on_shutdown=[background.stop], after_shutdown=[release_lease])
