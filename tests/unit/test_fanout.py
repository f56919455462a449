"""The evaluator's fan-out: one finished generation becomes its evaluation tasks, with message ids
that make a redelivery harmless — or, when there is nothing to judge, one recorded reason per
planned evaluation, so the experiment still finishes."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from services.evaluator.fanout import evaluation_messages
from shared.events import TASK_FAILED, CallRecord, GenerationDone, TaskCreated, TaskFailed
from shared.inputs import load_experiment
from shared.tasks import generation_tasks


def finished(generation: TaskCreated, text: str, truncated: bool = False) -> GenerationDone:
    now = datetime.now(timezone.utc)
    call = CallRecord(text=text, truncated=truncated, request_hash="h", started_at=now, finished_at=now)
    return GenerationDone(task=generation, call=call)


@pytest.fixture
def generation(example_raw: Path) -> TaskCreated:
    return generation_tasks(load_experiment(example_raw, experiment_id="exp-1").spec)[0]


def test_each_planned_evaluation_becomes_one_task_with_a_deterministic_id(generation: TaskCreated) -> None:
    messages = evaluation_messages(finished(generation, "An essay on daydreaming."))
    assert len(messages) == 2
    assert {subject for subject, _, _ in messages} == {"dd.task.created.evaluation.paid"}
    assert [msg_id for _, _, msg_id in messages] == [f"eval-task:exp-1:{task.task_id}" for _, task, _ in messages]
    assert all("An essay on daydreaming." in task.prompt for _, task, _ in messages)
    again = evaluation_messages(finished(generation, "An essay on daydreaming."))
    assert [msg_id for _, _, msg_id in again] == [msg_id for _, _, msg_id in messages]


def test_a_truncated_generation_the_experiment_does_not_judge_is_recorded_as_skipped(generation: TaskCreated) -> None:
    plan = generation.evaluation_plan.model_copy(update={"evaluate_truncated": False})
    skipped = generation.model_copy(update={"evaluation_plan": plan})
    messages = evaluation_messages(finished(skipped, "cut off mid", truncated=True))
    assert [subject for subject, _, _ in messages] == [TASK_FAILED, TASK_FAILED]
    assert {failure.reason for _, failure, _ in messages} == {"skipped_truncated_generation"}


def test_a_template_that_breaks_on_this_text_fails_its_evaluations_instead_of_looping(generation: TaskCreated) -> None:
    """Redelivering the generation would break the same way forever; say why once per evaluation."""
    plan = generation.evaluation_plan
    brittle = plan.templates[0].model_copy(update={"text": "The sixth word: {{ response.split()[5] }}"})
    broken = generation.model_copy(update={"evaluation_plan": plan.model_copy(update={"templates": [brittle]})})
    messages = evaluation_messages(finished(broken, "not a number"))
    assert [subject for subject, _, _ in messages] == [TASK_FAILED]
    failure = messages[0][1]
    assert isinstance(failure, TaskFailed)
    assert failure.reason == "template_error"
    assert generation.task_id in failure.message
    assert messages[0][2] == f"failed:exp-1:{failure.task_id}"
