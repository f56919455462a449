"""Wire contracts evolve without breaking a running system: a newer sender's extra fields are read
past, a task says which stage it is, and each event knows its subject and message id."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from services.evaluator.fanout import evaluation_messages
from services.parser.evaluation import score_evaluation
from shared.events import (
    SCHEMA_VERSION,
    TASK_CREATED,
    EvaluationDone,
    EvaluationTask,
    GenerationTask,
    NewerSchema,
    parse_event,
)
from tests.fakes import FakeExperiment


def with_extra_fields(event_json: str) -> str:
    """The message as a newer DayDream would send it: a field at the top and one nested."""
    data = json.loads(event_json)
    data["added_in_a_later_release"] = {"anything": [1, 2]}
    data["task"]["model"]["added_later_too"] = "nested"
    return json.dumps(data)


def test_an_event_with_fields_this_code_does_not_know_is_processed_not_poisoned() -> None:
    fake = FakeExperiment()
    answered = fake.evaluations[0].model_copy(update={"task": fake.evaluations[0].task.model_copy(
        update={"parser": "in_last_line"})})
    newer = with_extra_fields(answered.model_dump_json())
    scored = score_evaluation(parse_event(EvaluationDone, newer))
    assert scored.score == score_evaluation(answered).score == 8.0
    assert scored.task.task_id == answered.task.task_id


def test_a_generation_from_a_newer_sender_still_fans_out() -> None:
    fake = FakeExperiment()
    newer = parse_event(type(fake.generations[0]), with_extra_fields(fake.generations[0].model_dump_json()))
    tasks = evaluation_messages(newer)
    assert tasks and all(isinstance(task, EvaluationTask) for task in tasks)


def test_a_message_of_an_incompatible_newer_schema_is_refused_by_name() -> None:
    fake = FakeExperiment()
    data = json.loads(fake.evaluations[0].model_dump_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(NewerSchema, match="upgrade"):
        parse_event(EvaluationDone, json.dumps(data))


def test_a_task_is_read_as_its_stage_and_an_unknown_stage_is_malformed() -> None:
    fake = FakeExperiment()
    generation, evaluation = fake.generations[0].task, fake.evaluations[0].task
    assert isinstance(TASK_CREATED.validate_json(generation.model_dump_json()), GenerationTask)
    assert isinstance(TASK_CREATED.validate_json(evaluation.model_dump_json()), EvaluationTask)
    data = json.loads(generation.model_dump_json())
    data["stage"] = "summarisation"
    with pytest.raises(ValidationError):
        TASK_CREATED.validate_python(data)


def test_an_evaluation_task_without_its_judging_fields_is_malformed() -> None:
    data = json.loads(FakeExperiment().evaluations[0].task.model_dump_json())
    del data["parser"]
    with pytest.raises(ValidationError, match="parser"):
        TASK_CREATED.validate_python(data)


def test_each_event_names_its_subject_and_a_message_id_that_dedups_only_its_own_kind() -> None:
    fake = FakeExperiment()
    generation, answered, scored = fake.generations[0], fake.evaluations[0], fake.scores[0]
    assert generation.task.subject_name() == "dd.task.created.generation.writers"
    assert answered.task.subject_name() == "dd.task.created.evaluation.judges"
    assert generation.subject_name() == "dd.generation.done"
    assert scored.subject_name() == "dd.evaluation.scored"
    ids = {generation.task.message_id(), generation.message_id(), answered.task.message_id(),
           answered.message_id(), scored.message_id(), fake.requested.message_id(), fake.planned.message_id()}
    assert len(ids) == 7
    assert scored.message_id() == f"scored:{scored.task.experiment_id}:{scored.task.task_id}"
