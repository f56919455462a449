"""A file the tracker cannot write becomes the task's recorded failure, with the reason, and the
tracker goes on: the event is consumed instead of failing on every redelivery."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from services.tracker.db import make_engine
from services.tracker.rebuild import rebuild
from services.tracker.recorder import UNWRITABLE_ARTIFACT, Tracker
from services.tracker.stages import UnknownStage
from services.tracker.tables import Failure, GenerationResult
from tests.fakes import FakeExperiment, deliver


def _engine(data_dir: Path) -> Engine:
    return make_engine(f"sqlite:///{data_dir / 'daydream.db'}")


def _with_task_id(event, task_id: str):
    return event.model_copy(update={"task": event.task.model_copy(update={"task_id": task_id})})


def test_a_name_too_long_for_the_file_system_is_a_recorded_failure_and_the_rest_is_recorded(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    tracker = Tracker(data_dir, _engine(data_dir))
    fake = FakeExperiment()
    long_id = "g" * 300
    deliver(tracker, fake.requested)
    deliver(tracker, fake.planned)
    deliver(tracker, _with_task_id(fake.generations[0], long_id))
    for generation in fake.generations[1:]:
        deliver(tracker, generation)

    with Session(tracker.engine) as session:
        failure = session.exec(select(Failure).where(Failure.task_id == long_id)).one()
        recorded = session.exec(select(GenerationResult.task_id)).all()
    assert failure.reason == UNWRITABLE_ARTIFACT
    assert failure.stage == "generation"
    assert "File name too long" in failure.message
    assert (data_dir / failure.failure_path).is_file()
    assert sorted(recorded) == sorted(g.task.task_id for g in fake.generations[1:])
    progress = tracker.progress(fake.experiment_id)
    assert progress.stages["generation"].failed == 1
    assert progress.failures_by_reason == {UNWRITABLE_ARTIFACT: 1}

    other = tmp_path / "rebuilt"
    data_dir.rename(other)
    rebuild(other, _engine(other))
    with Session(_engine(other)) as session:
        assert session.exec(select(Failure.reason).where(Failure.task_id == long_id)).one() == UNWRITABLE_ARTIFACT


def test_a_folder_that_cannot_be_written_is_a_recorded_failure_for_each_task(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    tracker = Tracker(data_dir, _engine(data_dir))
    fake = FakeExperiment()
    blocked = tracker.layout.prompts_dir("evaluation")
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the folder should be")
    for event in [fake.requested, fake.planned, *fake.generations, *fake.evaluations]:
        deliver(tracker, event)

    progress = tracker.progress(fake.experiment_id)
    assert progress.stages["generation"].done == len(fake.generations)
    assert progress.stages["evaluation"].failed == len(fake.evaluations)
    assert progress.failures_by_reason == {UNWRITABLE_ARTIFACT: len(fake.evaluations)}
    assert progress.finished


def test_a_stage_the_tracker_does_not_know_fails_loudly_instead_of_landing_in_another_stages_folders(
    tmp_path: Path,
) -> None:
    tracker = Tracker(tmp_path, _engine(tmp_path))
    with pytest.raises(UnknownStage, match="'review'"):
        tracker.layout.responses_dir("review")
