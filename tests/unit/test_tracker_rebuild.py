"""`rebuild` recreates the database and the cross-experiment CSVs from artifacts alone, and `check`
finds what disagrees, each with its fix."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from daydream.cli import app
from services.tracker.check import check as find_problems
from services.tracker.csv_log import EARLIER_CSV_COLUMNS
from services.tracker.db import make_engine
from services.tracker.rebuild import RebuildError
from services.tracker.rebuild import rebuild as rebuild_from_artifacts
from services.tracker.recorder import Tracker
from services.tracker.tables import GenerationResult
from shared.events import EvaluationScored, GenerationDone
from tests.fakes import FakeExperiment, call, csv_keys, csv_lines, deliver, dump_tables


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[tuple[Path, Tracker, FakeExperiment]]:
    """Two experiments sharing task ids (the second with fresh texts but the same judge answers),
    two failures later resolved and one still open."""
    data_dir = tmp_path / "data"
    tracker = Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))
    first = FakeExperiment("exp1")
    second = FakeExperiment("exp2", text_suffix=" again", start=first.start + timedelta(days=1))
    for event in [*first.events(), *second.events()]:
        deliver(tracker, event)
    deliver(tracker, second.failure(second.evaluations[0].task, second.start))
    deliver(tracker, first.failure(first.generations[1].task, first.start + timedelta(days=3), reason="timeout"))
    never_done = first.evaluations[0].task.model_copy(update={"task_id": "never_done"})
    deliver(tracker, first.failure(never_done, first.start + timedelta(days=4), reason="bad_request"))
    yield data_dir, tracker, first
    tracker.engine.dispose()


def run(data_dir: Path, command: str):
    return CliRunner().invoke(app, [command, "--data", str(data_dir)], env={"COLUMNS": "300"})


def rerun_and_rescore(tracker: Tracker, fake: FakeExperiment) -> tuple[GenerationDone, EvaluationScored]:
    """A fresh call for the first generation two hours on, and its first judge's answer re-scored
    from 8.0 to 1.0 a day on: rows whose values move after their first CSV line."""
    generation = fake.generations[0]
    rerun = GenerationDone(
        task=generation.task, call=call(generation.task.task_id, "a second take", fake.start + timedelta(hours=2))
    )
    rescored = fake.scores[0].model_copy(
        update={"score": 1.0, "candidates": [1.0], "emitted_at": fake.start + timedelta(days=1, hours=1)}
    )
    deliver(tracker, rerun)
    deliver(tracker, rescored)
    return rerun, rescored


def sorted_lines(data_dir: Path, stage: str) -> list[tuple]:
    return sorted(tuple(line.values()) for line in csv_lines(data_dir, stage))


def test_rebuild_after_losing_the_database_reproduces_every_row(recorded) -> None:
    data_dir, tracker, _ = recorded
    before = dump_tables(tracker.engine)
    csv_before = {stage: csv_keys(data_dir, stage) for stage in ("generation", "evaluation")}
    tracker.engine.dispose()
    for path in data_dir.glob("daydream.db*"):
        path.unlink()
    (data_dir / "7_cross_experiment" / "evaluation_results.csv").unlink()

    outcome = run(data_dir, "rebuild")

    assert outcome.exit_code == 0, outcome.output
    assert "8 generations, 16 evaluations, 16 scores, 3 failures" in outcome.output
    engine = make_engine(f"sqlite:///{data_dir / 'daydream.db'}")
    assert dump_tables(engine) == before
    assert {stage: csv_keys(data_dir, stage) for stage in ("generation", "evaluation")} == csv_before
    rebuilt = Tracker(data_dir, engine)
    assert rebuilt.progress("exp2").finished
    assert [task.task_id for task in rebuilt.failed_tasks("exp1")] == ["never_done"]


def test_rebuild_replays_reruns_and_rescores_into_the_same_rows_and_csv_lines(recorded) -> None:
    data_dir, tracker, first = recorded
    rerun_and_rescore(tracker, first)
    before = dump_tables(tracker.engine)
    lines_before = {stage: sorted_lines(data_dir, stage) for stage in ("generation", "evaluation")}
    tracker.engine.dispose()
    for path in [*data_dir.glob("daydream.db*"), *(data_dir / "7_cross_experiment").glob("*.csv")]:
        path.unlink()

    assert run(data_dir, "rebuild").exit_code == 0
    engine = make_engine(f"sqlite:///{data_dir / 'daydream.db'}")
    assert dump_tables(engine) == before
    assert {stage: sorted_lines(data_dir, stage) for stage in ("generation", "evaluation")} == lines_before
    assert len(lines_before["generation"]) == 8 + 1 and len(lines_before["evaluation"]) == 16 + 1
    assert find_problems(data_dir, engine) == []
    engine.dispose()


def test_rebuild_stops_on_an_unreadable_artifact_and_keeps_the_database(recorded) -> None:
    data_dir, tracker, first = recorded
    broken = data_dir / "3_generation" / "generation_responses" / f"{first.generations[0].task.task_id}.json"
    broken.write_text("{ not json")
    with pytest.raises(RebuildError, match=str(broken)):
        rebuild_from_artifacts(data_dir, tracker.engine)
    assert len(dump_tables(tracker.engine)["generation_results"]) == 8
    assert run(data_dir, "rebuild").exit_code == 2


def test_check_is_clean_after_a_normal_run(recorded) -> None:
    data_dir, tracker, _ = recorded
    assert find_problems(data_dir, tracker.engine) == []
    outcome = run(data_dir, "check")
    assert outcome.exit_code == 0 and "clean" in outcome.output


def test_check_finds_a_csv_whose_current_line_the_database_has_moved_past(recorded) -> None:
    data_dir, tracker, first = recorded
    _, rescored = rerun_and_rescore(tracker, first)
    assert find_problems(data_dir, tracker.engine) == []
    csv_path = data_dir / "7_cross_experiment" / "evaluation_results.csv"
    *kept, superseding = csv_path.read_text().splitlines()
    assert rescored.task.task_id in superseding
    csv_path.write_text("\n".join(kept) + "\n")

    [problem] = find_problems(data_dir, tracker.engine)
    assert (problem.kind, problem.fix) == ("stale_csv_line", "run `daydream rebuild`")
    assert rescored.task.task_id in problem.detail
    assert "score is '8.0' in the CSV, '1.0' in the database" in problem.detail
    assert "revision is '1' in the CSV, '2' in the database" in problem.detail
    assert run(data_dir, "check").exit_code == 1

    assert run(data_dir, "rebuild").exit_code == 0
    assert run(data_dir, "check").exit_code == 0
    current = [line for line in csv_lines(data_dir, "evaluation") if line["task_id"] == rescored.task.task_id]
    assert [(line["experiment_id"], line["revision"], line["score"]) for line in current] == [
        ("exp1", "1", "8.0"),
        ("exp2", "1", "8.0"),
        ("exp1", "2", "1.0"),
    ]


def test_check_reports_a_hand_edited_revision_instead_of_crashing(recorded) -> None:
    data_dir, tracker, _ = recorded
    csv_path = data_dir / "7_cross_experiment" / "generation_results.csv"
    header, first, *rest = csv_path.read_text().splitlines()
    revision_at = header.split(",").index("revision")
    cells = first.split(",")
    cells[revision_at] = "one"
    csv_path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
    problems = [p for p in find_problems(data_dir, tracker.engine) if p.kind == "malformed_csv_line"]
    assert [(p.detail, p.fix) for p in problems] == [("line 2: revision 'one' is not a number", "run `daydream rebuild`")]


def test_a_csv_with_an_earlier_header_is_reported_and_rewritten_by_rebuild(recorded) -> None:
    data_dir, tracker, _ = recorded
    csv_path = data_dir / "7_cross_experiment" / "evaluation_results.csv"
    lines_before = sorted_lines(data_dir, "evaluation")
    csv_path.write_text(",".join(EARLIER_CSV_COLUMNS["evaluation"]) + "\n")

    [problem] = find_problems(data_dir, tracker.engine)
    assert problem.kind == "outdated_csv" and "generation_model" in problem.detail
    assert "upgrades the file in place" in problem.fix

    assert run(data_dir, "rebuild").exit_code == 0
    assert sorted_lines(data_dir, "evaluation") == lines_before
    assert run(data_dir, "check").exit_code == 0


def test_check_finds_a_deleted_artifact_and_says_how_to_fix_it(recorded) -> None:
    data_dir, tracker, first = recorded
    evaluation = first.evaluations[0].task
    (data_dir / "4_evaluation" / "evaluation_responses" / f"{evaluation.task_id}.txt").unlink()

    problems = find_problems(data_dir, tracker.engine)

    assert [(p.kind, p.fix) for p in problems] == [
        ("missing_artifact", f"`daydream rerun {experiment} --task {evaluation.generation_task_id}`")
        for experiment in ("exp1", "exp2")
    ]
    outcome = run(data_dir, "check")
    assert outcome.exit_code == 1
    assert f"{evaluation.task_id}.txt is gone" in outcome.output


def test_check_finds_orphans_unrecorded_artifacts_and_duplicate_lines(recorded) -> None:
    data_dir, tracker, first = recorded
    lost = first.generations[0].task.task_id
    with Session(tracker.engine) as session:
        session.delete(
            session.exec(
                select(GenerationResult).where(
                    GenerationResult.task_id == lost, GenerationResult.experiment_id == "exp1"
                )
            ).one()
        )
        session.commit()
    csv_path = data_dir / "7_cross_experiment" / "generation_results.csv"
    csv_path.write_text(csv_path.read_text() + csv_path.read_text().splitlines()[1] + "\n")

    problems = find_problems(data_dir, tracker.engine)

    kinds = sorted(problem.kind for problem in problems)
    assert kinds == ["duplicate", "orphan", "orphan", "unrecorded_artifact"]
    orphan = next(problem for problem in problems if problem.kind == "orphan")
    assert lost in orphan.detail and "daydream rebuild" in orphan.fix and f"--task {lost}" in orphan.fix
    assert all("daydream rebuild" in problem.fix for problem in problems if problem.kind != "orphan")

    assert run(data_dir, "rebuild").exit_code == 0
    assert run(data_dir, "check").exit_code == 0


def test_rebuild_leaves_a_foreign_cross_experiment_csv_alone(recorded) -> None:
    data_dir, tracker, _ = recorded
    foreign = data_dir / "7_cross_experiment" / "evaluation_results.csv"
    foreign.write_text("generation_task_id,score\nold_task,6\n")
    with pytest.raises(RebuildError, match="move it aside"):
        rebuild_from_artifacts(data_dir, tracker.engine)
    assert foreign.read_text() == "generation_task_id,score\nold_task,6\n"
    assert len(dump_tables(tracker.engine)["evaluation_results"]) == 16
