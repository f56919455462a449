"""The generator and the evaluator run tasks the same way; only the event they emit differs."""

from __future__ import annotations

from faststream.exceptions import NackMessage
from faststream.nats import NatsBroker, NatsMessage

from services.llm_worker.budget import BudgetGate
from services.llm_worker.response_store import ResponseStore
from services.llm_worker.tier_control import TierControl
from services.llm_worker.worker import Completed, GaveUp, LLMWorker, RetryLater
from shared.events import (
    TASK_CREATED,
    CallRecord,
    EvaluationDone,
    EvaluationTask,
    GenerationDone,
    GenerationTask,
    Stage,
)
from shared.llm import LLMClient
from shared.service import (
    decode,
    delivery_attempt,
    give_up,
    jetstream,
    log,
    publish,
    subscribe,
)
from shared.settings import Settings
from shared.topology import ensure_service_topology


async def run_task(broker: NatsBroker, worker: LLMWorker, msg: NatsMessage, stage: str) -> None:
    """Publish the result then ack; nak with a delay to retry; after the last attempt publish
    `TaskFailed` and terminate. The response is stored before any of this, so a redelivery
    never pays twice."""
    task = await decode(broker, msg, TASK_CREATED, stage=stage)
    verdict = await worker.run(task, delivery_attempt(msg), heartbeat=msg.in_progress)
    if isinstance(verdict, Completed):
        await publish(broker, done_event(task, verdict.record))
        return
    if isinstance(verdict, RetryLater):
        log.warning("%s task %s of %s: %s", stage, task.task_id, task.experiment_id, verdict.reason)
        raise NackMessage(delay=verdict.delay_s)
    assert isinstance(verdict, GaveUp)
    await give_up(broker, verdict.failure)


def done_event(task: GenerationTask | EvaluationTask, record: CallRecord) -> GenerationDone | EvaluationDone:
    if isinstance(task, GenerationTask):
        return GenerationDone(task=task, call=record)
    if isinstance(task, EvaluationTask):
        return EvaluationDone(task=task, call=record)
    raise TypeError(f"no done event for a {type(task).__name__}: add it here with its stage")


class LLMWorkers:
    """The per-tier workers of one stage, sized by each live consumer's cap (`max_ack_pending`)."""

    def __init__(self, broker: NatsBroker, settings: Settings, stage: Stage, readers: tuple[str, ...] = ()) -> None:
        self.broker, self.settings, self.stage, self.readers = broker, settings, stage, readers
        self.worker: LLMWorker | None = None
        self.tiers: TierControl | None = None

    async def start(self) -> None:
        js = await jetstream(self.broker)
        specs = await ensure_service_topology(js, self.settings, readers=self.readers, stage=self.stage)
        self.tiers = await TierControl.open(self.broker.config.connection_state.connection, js, self.settings)
        worker = self.worker = LLMWorker(
            LLMClient(self.settings.llm_base_url, self.settings.llm_api_key, self.settings.llm_timeout_s,
                      app_url=self.settings.openrouter_app_url),
            await ResponseStore.open(js, self.settings.response_store_bucket, self.settings),
            self.settings,
            self.tiers,
            await BudgetGate.open(js, self.settings),
        )

        async def handle(msg: NatsMessage) -> None:
            await run_task(self.broker, worker, msg, self.stage)

        for spec in specs:
            subscribe(self.broker, spec, handle, max_workers=spec.max_ack_pending)

    async def stop(self) -> None:
        """An after-shutdown hook: the broker has let in-flight calls finish by then."""
        if self.worker:
            await self.worker.renewals.stop()
            await self.worker.client.aclose()
        if self.tiers:
            await self.tiers.close()
