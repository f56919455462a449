"""The evaluator's fan-out: one finished generation becomes its evaluation tasks, with message ids
that make a redelivery harmless — or, when there is nothing to judge, one recorded reason per
planned evaluation, so the experiment still finishes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.evaluator.fanout import evaluation_messages
from shared.events import TASK_FAILED, CallRecord, EvaluationTask, GenerationDone, GenerationTask, TaskFailed
from shared.inputs import load_experiment
from shared.tasks import generation_tasks


def finished(generation: GenerationTask, text: str, truncated: bool = False) -> GenerationDone:
    now = datetime.now(UTC)
    call = CallRecord(text=text, truncated=truncated, request_hash="h", started_at=now, finished_at=now)
    return GenerationDone(task=generation, call=call)


@pytest.fixture
def generation(example_raw: Path) -> GenerationTask:
    return generation_tasks(load_experiment(example_raw, experiment_id="exp-1").spec)[0]


def test_each_planned_evaluation_becomes_one_task_with_a_deterministic_id(generation: GenerationTask) -> None:
    messages = evaluation_messages(finished(generation, "An essay on daydreaming."))
    assert len(messages) == 2
    assert {event.subject_name() for event in messages} == {"dd.task.created.evaluation.paid"}
    assert [event.message_id() for event in messages] == [f"eval-task:exp-1:{task.task_id}" for task in messages]
    assert all(isinstance(task, EvaluationTask) and "An essay on daydreaming." in task.prompt for task in messages)
    again = evaluation_messages(finished(generation, "An essay on daydreaming."))
    assert [event.message_id() for event in again] == [event.message_id() for event in messages]


def test_a_truncated_generation_the_experiment_does_not_judge_is_recorded_as_skipped(generation: GenerationTask) -> None:
    plan = generation.evaluation_plan.model_copy(update={"evaluate_truncated": False})
    skipped = generation.model_copy(update={"evaluation_plan": plan})
    messages = evaluation_messages(finished(skipped, "cut off mid", truncated=True))
    assert [event.subject_name() for event in messages] == [TASK_FAILED, TASK_FAILED]
    assert {failure.reason for failure in messages if isinstance(failure, TaskFailed)} == {"skipped_truncated_generation"}


def test_a_template_that_breaks_on_this_text_fails_its_evaluations_instead_of_looping(generation: GenerationTask) -> None:
    """Redelivering the generation would break the same way forever; say why once per evaluation."""
    plan = generation.evaluation_plan
    brittle = plan.templates[0].model_copy(update={"text": "The sixth word: {{ response.split()[5] }}"})
    broken = generation.model_copy(update={"evaluation_plan": plan.model_copy(update={"templates": [brittle]})})
    messages = evaluation_messages(finished(broken, "not a number"))
    assert [event.subject_name() for event in messages] == [TASK_FAILED]
    failure = messages[0]
    assert isinstance(failure, TaskFailed)
    assert failure.reason == "template_error"
    assert generation.task_id in failure.message
    assert failure.message_id() == f"failed:exp-1:{failure.task_id}"
