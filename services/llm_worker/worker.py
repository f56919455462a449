"""Running one LLM task: stored response first, then a rate-limited call, then a verdict.

Shared by the generator and the evaluator, the only two services that call LLMs. The verdict is
a plain value; the service's handler turns it into publish + ack, a delayed nak, or a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter

from services.llm_worker.budget import BudgetGate
from services.llm_worker.response_store import ResponseStore
from services.llm_worker.retry_policy import decide
from shared import metrics
from shared.events import CallRecord, TaskCreated, TaskFailed
from shared.llm import LLMClient, LLMError, chat_messages, endpoint_identity, request_hash
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


OTHER_ENDPOINT = "other_endpoint"
"""The `TaskFailed.reason` of a task bound to an endpoint this worker does not serve."""


@dataclass
class LLMWorker:
    client: LLMClient
    store: ResponseStore
    settings: Settings
    budget: BudgetGate = field(default_factory=BudgetGate)
    _limiters: dict[tuple[str, float], AsyncLimiter] = field(default_factory=dict)

    def _limiter(self, task: TaskCreated) -> AsyncLimiter | None:
        """One `requests_per_minute` limiter per tier and process, on top of the server-side cap;
        the rate travels with each task, so an experiment that changes it gets a limiter of its own.
        Calls are spaced 60/rpm seconds apart, with no burst: a bucket as deep as the rate would let
        a whole minute's calls out at once and then a second minute's worth inside the provider's
        first window. Unlike the cap (`max_ack_pending`, global), the rate is per process: N
        replicas of a worker allow up to N x requests_per_minute, so divide the provider's limit by
        the number of replicas you run."""
        rpm = task.tier.requests_per_minute
        if not rpm:
            return None
        key = (task.tier.tier, rpm)
        if key not in self._limiters:
            self._limiters[key] = AsyncLimiter(1, 60.0 / rpm)
        return self._limiters[key]

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
            return GaveUp(TaskFailed(
                stage=task.stage, experiment_id=task.experiment_id, task_id=task.task_id, reason=OTHER_ENDPOINT,
                message=f"bound to endpoint {task.endpoint}, this worker serves {endpoint}: rerun it where "
                        f"{task.endpoint} is configured (`daydream rerun {task.experiment_id} --failed`)",
                attempts=attempt, tier=task.tier.tier, model_id=task.model.id, task=task))
        key = task_request_hash(task, endpoint)
        stored = await self.stored_response(task, key)
        if stored is not None:
            metrics.observe_cache_hit(task.stage, task.model.id)
            return Completed(stored)
        limiter = self._limiter(task)
        try:
            async with _heartbeats(heartbeat, self.settings.heartbeat_s), self.budget.spending(task):
                if limiter:
                    await limiter.acquire()
                record = await self.client.complete(
                    task.model, task.prompt, task.parameters,
                    attempt=attempt, request_hash=key, replicate=task.replicate,
                )
        except LLMError as error:
            decision = decide(
                error,
                attempt,
                self.settings.max_attempts,
                base_delay_s=self.settings.retry_base_delay_s,
                max_delay_s=self.settings.retry_max_delay_s,
            )
            metrics.observe_llm_error(task.stage, task.model.id, task.tier.tier, error.kind.value, decision.retry)
            if decision.retry:
                return RetryLater(decision.delay_s, decision.reason)
            return GaveUp(
                TaskFailed(
                    stage=task.stage,
                    experiment_id=task.experiment_id,
                    task_id=task.task_id,
                    reason=error.kind.value,
                    message=decision.reason,
                    attempts=attempt,
                    tier=task.tier.tier,
                    model_id=task.model.id,
                    task=task,
                )
            )
        async with _heartbeats(heartbeat, self.settings.heartbeat_s):
            await self.store.put(record)
        metrics.observe_llm_call(task.stage, task.model.id, task.tier.tier, record)
        return Completed(record)


@contextlib.asynccontextmanager
async def _heartbeats(beat: Callable[[], Awaitable[None]], every_s: float):
    """Tell JetStream the task is still being worked on, so a long call is not redelivered."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(Exception):
                await beat()

    pulse = asyncio.create_task(loop())
    try:
        yield
    finally:
        pulse.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pulse
