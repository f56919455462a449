"""A task that JetStream gave up on (max deliveries) becomes a recorded failure, not a silence.

JetStream publishes an advisory naming the task message's stream sequence; the message itself stays
in the work-queue stream until someone deletes it. The tracker records the failure (with the task,
so `daydream rerun --failed` can republish it), counts it in `daydream_tasks_failed_total` (no
worker did: none settled the task), then deletes the message. A malformed advisory is handled like
any malformed message (`shared.service.decode`): recorded as a `poison_message` and terminated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pydantic import BaseModel, ValidationError

from shared import metrics
from shared.events import TASK_CREATED, TaskCreated, TaskFailed
from shared.topology import TASKS_STREAM

DEAD_LETTER_STAGE = "dead_letter"
"""The stage of a failure about the advisory itself, not about a task."""


class MaxDeliveriesAdvisory(BaseModel):
    """The fields DayDream reads of `io.nats.jetstream.advisory.v1.max_deliver`."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


class DeadTasks(Protocol):
    """The streams holding given-up messages, as far as dead letters need them."""

    async def payload(self, stream: str, sequence: int) -> bytes | None:
        """The message's body, or None when it is already gone."""

    async def delete(self, stream: str, sequence: int) -> None: ...


async def record_dead_letter(
    advisory: MaxDeliveriesAdvisory, tasks: DeadTasks, record_failure: Callable[[TaskFailed], None]
) -> TaskFailed:
    """Record and count the failure before deleting the message: a crash in between leaves the
    message to be found again, and the same failure recorded twice is still one row. Only a task
    leaves its (work-queue) stream: an event given up by one reader is still another reader's."""
    payload = await tasks.payload(advisory.stream, advisory.stream_seq)
    failure = failure_from_dead_letter(advisory, payload)
    record_failure(failure)
    metrics.observe_task_failed(failure.stage, failure.reason)
    if payload is not None and advisory.stream == TASKS_STREAM:
        await tasks.delete(advisory.stream, advisory.stream_seq)
    return failure


def failure_from_dead_letter(advisory: MaxDeliveriesAdvisory, task_payload: bytes | None) -> TaskFailed:
    where = f"{advisory.stream}/{advisory.consumer} seq {advisory.stream_seq}"
    task = _task_of(task_payload)
    if task is None:
        return TaskFailed(
            stage="unknown",
            experiment_id="unknown",
            task_id=f"dead-letter-{advisory.stream_seq}",
            reason="max_deliveries",
            message=f"undecodable message redelivered {advisory.deliveries} times ({where})",
            attempts=advisory.deliveries,
        )
    return TaskFailed(
        stage=task.stage,
        experiment_id=task.experiment_id,
        task_id=task.task_id,
        reason="max_deliveries",
        message=f"delivered {advisory.deliveries} times without being settled ({where})",
        attempts=advisory.deliveries,
        tier=task.tier.tier,
        model_id=task.model.id,
        task=task,
    )


class _CarriesTask(BaseModel):
    task: TaskCreated


def _task_of(payload: bytes | None) -> TaskCreated | None:
    """The task a given-up message is about: the message itself on the tasks stream, the event's
    `task` on the events stream (the generation or evaluation whose result was never read)."""
    if not payload:
        return None
    for read in (TASK_CREATED.validate_json, lambda body: _CarriesTask.model_validate_json(body).task):
        try:
            return read(payload)
        except ValidationError:
            continue
    return None
