"""Running one LLM task: stored response first, then a call in one of its tier's slots, then a verdict.

Shared by the generator and the evaluator, the only two services that call LLMs. The verdict is
a plain value; the service's handler turns it into publish + ack, a delayed nak, or a failure.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.llm_worker.budget import BudgetGate
from services.llm_worker.response_store import ResponseStore
from services.llm_worker.retry_policy import decide
from services.llm_worker.tier_control import TierStopped
from shared import metrics
from shared.events import CallRecord, Stage, TaskCreated, TaskFailed, utcnow
from shared.lifecycle import Renewals
from shared.llm import LLMClient, LLMError, chat_messages, endpoint_identity, quota_exhausted, request_hash
from shared.settings import Settings


@dataclass(frozen=True)
class Completed:
    record: CallRecord


@dataclass(frozen=True)
class RetryLater:
    delay_s: float
    reason: str


@dataclass(frozen=True)
class GaveUp:
    failure: TaskFailed


Verdict = Completed | RetryLater | GaveUp


def task_request_hash(task: TaskCreated, endpoint: str) -> str:
    return request_hash(endpoint, task.model.model, chat_messages(task.prompt), task.parameters, task.replicate,
                        task.model.routing)


STORE_RECHECK_AFTER_S = 1.0
"""A task that waited this long for its slot looks its answer up again before paying: if JetStream
handed it to another worker meanwhile (heartbeats lost while a NATS node failed over), that worker
may have answered and stored it already."""

OTHER_ENDPOINT = "other_endpoint"
"""The `TaskFailed.reason` of a task bound to an endpoint this worker does not serve."""


class TierGate(Protocol):
    """The tier's shared limits as a worker sees them (`tier_control.TierControl` on JetStream)."""

    def stopped(self, tier: str) -> TierStopped | None: ...

    def slot(self, tier: str, stage: Stage) -> AbstractAsyncContextManager[Any]: ...

    async def succeeded(self, tier: str) -> None: ...

    async def failed(self, tier: str, error: LLMError) -> None: ...


@dataclass
class LLMWorker:
    client: LLMClient
    store: ResponseStore
    settings: Settings
    tiers: TierGate
    budget: BudgetGate = field(default_factory=BudgetGate)
    renewals: Renewals = field(init=False)
    """Tells JetStream a task is still being worked on, so a long call is not redelivered."""

    def __post_init__(self) -> None:
        self.renewals = Renewals(self.settings.heartbeat_s)

    def _failure(self, task: TaskCreated, reason: str, message: str, attempt: int) -> GaveUp:
        return GaveUp(TaskFailed(
            stage=task.stage, experiment_id=task.experiment_id, task_id=task.task_id, reason=reason, message=message,
            attempts=attempt, tier=task.tier.tier, model_id=task.model.id, task=task))

    async def stored_response(self, task: TaskCreated, key: str) -> CallRecord | None:
        """A stored response is reused unless the task asks for a fresh call; even then, a
        response made after the task was created is its own (a redelivery) and is reused."""
        record = await self.store.get(key)
        if record is None:
            return None
        if task.fresh and record.started_at < task.emitted_at:
            return None
        return record

    async def run(self, task: TaskCreated, attempt: int, heartbeat: Callable[[], Awaitable[None]]) -> Verdict:
        endpoint = endpoint_identity(self.settings.llm_base_url, self.settings.llm_simulated)
        if task.endpoint is not None and task.endpoint != endpoint:
            return self._failure(task, OTHER_ENDPOINT,
                                 f"bound to endpoint {task.endpoint}, this worker serves {endpoint}: rerun it where "
                                 f"{task.endpoint} is configured (`daydream rerun {task.experiment_id} --failed`)",
                                 attempt)
        key = task_request_hash(task, endpoint)
        stored = await self.stored_response(task, key)
        if stored is not None:
            metrics.observe_cache_hit(task.stage, task.model.id)
            return Completed(stored)
        with self.renewals.keeping(heartbeat):
            return await self._call(task, key, attempt)

    async def _call(self, task: TaskCreated, key: str, attempt: int) -> Verdict:
        tier = task.tier.tier
        looked_up = time.monotonic()
        try:
            async with self.tiers.slot(tier, task.stage):
                if time.monotonic() - looked_up > STORE_RECHECK_AFTER_S and (
                        stored := await self.stored_response(task, key)):
                    metrics.observe_cache_hit(task.stage, task.model.id)
                    return Completed(stored)
                try:
                    async with self.budget.spending(task):
                        record = await self.client.complete(
                            task.model, task.prompt, task.parameters,
                            attempt=attempt, request_hash=key, replicate=task.replicate,
                        )
                except LLMError as raised:
                    error = quota_exhausted(raised, utcnow(), self.settings.quota_horizon_s) or raised
                    await self.tiers.failed(tier, error)
                    return self._after_error(task, error, attempt)
        except TierStopped as stopped:
            return self._failure(task, stopped.kind, f"tier {tier} is stopped: {stopped.message}", attempt)
        await self.tiers.succeeded(tier)
        await self.store.put(record)
        metrics.observe_llm_call(task.stage, task.model.id, task.tier.tier, record)
        return Completed(record)

    def _after_error(self, task: TaskCreated, error: LLMError, attempt: int) -> Verdict:
        decision = decide(error, attempt, self.settings.max_attempts,
                          base_delay_s=self.settings.retry_base_delay_s, max_delay_s=self.settings.retry_max_delay_s)
        metrics.observe_llm_error(task.stage, task.model.id, task.tier.tier, error.kind.value, decision.retry)
        if decision.retry:
            return RetryLater(decision.delay_s, decision.reason)
        return self._failure(task, error.kind.value, decision.reason, attempt)
