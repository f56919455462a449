"""From one finished generation to its evaluation tasks (or the record of why there are none)."""

from __future__ import annotations

from shared.events import SKIPPED_TRUNCATED_GENERATION, EvaluationTask, GenerationDone, TaskFailed
from shared.prompts import TemplateProblem
from shared.tasks import evaluation_tasks, planned_evaluations

Outgoing = EvaluationTask | TaskFailed


def evaluation_messages(done: GenerationDone) -> list[Outgoing]:
    """Deterministic message ids: a redelivered `GenerationDone` creates no duplicate task. When
    there are no evaluations to run, each planned one is recorded as failed or skipped with its
    reason, so the planned count still adds up and nothing waits forever."""
    try:
        tasks = evaluation_tasks(done.task, done.call.text, done.call.truncated)
    except TemplateProblem as problem:
        # Plan time rendered every template with a stand-in; this generation's text broke one.
        return _unevaluated(done, "template_error", f"an evaluation template failed on the text of generation "
                            f"{done.task.task_id}: {problem.message} ({problem.fix})")
    if tasks or not done.call.truncated:
        return list(tasks)
    return _unevaluated(
        done,
        SKIPPED_TRUNCATED_GENERATION,
        f"generation {done.task.task_id} was truncated (finish_reason=length) and the experiment does not "
        "evaluate truncated generations (DAYDREAM_EVALUATE_TRUNCATED=false)",
    )


def _unevaluated(done: GenerationDone, reason: str, message: str) -> list[Outgoing]:
    return [
        TaskFailed(
            stage="evaluation",
            experiment_id=done.task.experiment_id,
            task_id=planned.task_id,
            reason=reason,
            message=message,
            attempts=0,
            tier=planned.tier.tier,
            model_id=planned.model.id,
        )
        for planned in planned_evaluations(done.task)
    ]
