"""From one finished generation to its evaluation tasks (or the record of why there are none)."""

from __future__ import annotations

from pydantic import BaseModel

from shared.events import TASK_FAILED, GenerationDone, TaskFailed, message_id, task_subject
from shared.tasks import evaluation_tasks, planned_evaluations

Outgoing = tuple[str, BaseModel, str]


def evaluation_messages(done: GenerationDone) -> list[Outgoing]:
    """Deterministic message ids: a redelivered `GenerationDone` creates no duplicate task. A
    truncated generation that the experiment chose not to judge is recorded as skipped, so the
    planned count still adds up."""
    tasks = evaluation_tasks(done.task, done.call.text, done.call.truncated)
    if tasks or not done.call.truncated:
        return [
            (task_subject("evaluation", task.tier.tier), task, message_id("eval-task", task.experiment_id, task.task_id))
            for task in tasks
        ]
    return [
        (
            TASK_FAILED,
            TaskFailed(
                stage="evaluation",
                experiment_id=done.task.experiment_id,
                task_id=planned.task_id,
                reason="skipped_truncated_generation",
                message=f"generation {done.task.task_id} was truncated (finish_reason=length) and the "
                "experiment does not evaluate truncated generations (DAYDREAM_EVALUATE_TRUNCATED=false)",
                attempts=0,
                tier=planned.tier.tier,
                model_id=planned.model.id,
            ),
            message_id("failed", done.task.experiment_id, planned.task_id),
        )
        for planned in planned_evaluations(done.task)
    ]
