"""The tracker turns events into rows, files and CSV lines, whatever the order and however often
they arrive. The fake experiment lives in `tests.fakes`."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from services.tracker.artifacts import CsvHeaderMismatch, read_csv_rows
from services.tracker.csv_log import EVALUATION_CSV_COLUMNS, GENERATION_CSV_COLUMNS
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.tables import (
    ComboMapping,
    EvaluationResult,
    Experiment,
    Failure,
    GenerationResult,
    LlmCall,
)
from shared.events import (
    GenerationDone,
    TaskFailed,
)
from tests.fakes import (
    SCORES,
    T0,
    FakeExperiment,
    call,
    csv_keys,
    csv_lines,
    deliver,
    dump_tables,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def engine(data_dir: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{data_dir / 'daydream.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def tracker(data_dir: Path, engine: Engine) -> Tracker:
    return Tracker(data_dir, engine)


def test_a_whole_experiment_lands_in_every_table_file_and_csv(tracker: Tracker, data_dir: Path, engine: Engine) -> None:
    fake = FakeExperiment()
    for event in fake.events():
        deliver(tracker, event)

    with Session(engine) as session:
        experiment = session.exec(select(Experiment).where(Experiment.experiment_id == "exp1")).one()
        assert (
            experiment.name,
            experiment.k_max,
            experiment.generation_tasks_planned,
            experiment.evaluation_tasks_planned,
        ) == ("fake", 2, 4, 8)
        assert experiment.tasks_by_tier == {"generation": {"writers": 4}, "evaluation": {"judges": 8}}
        assert experiment.snapshot_path == "experiments/exp1"
        assert experiment.started_at == datetime(2025, 3, 1, 12, 0, 10, tzinfo=UTC)
        assert experiment.finished_at == datetime(2025, 3, 1, 12, 1, 7, tzinfo=UTC)
        assert len(session.exec(select(ComboMapping)).all()) == 4
        assert len(session.exec(select(GenerationResult)).all()) == 4
        assert len(session.exec(select(LlmCall)).all()) == 12
        evaluations = session.exec(select(EvaluationResult).order_by(col(EvaluationResult.finished_at))).all()
        assert [row.score for row in evaluations] == SCORES
        assert [row.status for row in evaluations] == ["scored"] * 7 + ["parse_error"]
        assert evaluations[-1].parse_error == "no number found"

    generation = fake.generations[0]
    task_id = generation.task.task_id
    responses = data_dir / "3_generation" / "generation_responses"
    assert (data_dir / "3_generation" / "generation_prompts" / f"{task_id}.txt").read_text() == generation.task.prompt
    assert (responses / f"{task_id}.txt").read_text() == generation.call.text
    record = json.loads((responses / f"{task_id}.json").read_text())
    assert record["experiment_id"] == "exp1" and record["call"]["request_hash"] == generation.call.request_hash
    assert (
        record["task"]["combo_id"] == generation.task.combo_id
        and record["response_path"] == f"3_generation/generation_responses/{task_id}.txt"
    )
    evaluation_id = fake.evaluations[0].task.task_id
    score_record = json.loads(
        (data_dir / "4_evaluation" / "evaluation_responses" / f"{evaluation_id}.score.json").read_text()
    )
    assert score_record["score"] == 8.0

    generation_lines = read_csv_rows(data_dir / "7_cross_experiment" / "generation_results.csv")
    evaluation_lines = read_csv_rows(data_dir / "7_cross_experiment" / "evaluation_results.csv")
    assert list(generation_lines[0]) == list(GENERATION_CSV_COLUMNS)
    assert list(evaluation_lines[0]) == list(EVALUATION_CSV_COLUMNS)
    assert len(generation_lines) == 4 and len(evaluation_lines) == 8
    first = evaluation_lines[0]
    assert (first["experiment_id"], first["task_id"], first["score"], first["evaluation_model"]) == (
        "exp1",
        evaluation_id,
        "8.0",
        "vendor/judge-one",
    )
    assert generation_lines[0]["generation_model"] == "vendor/writer-one"
    assert [line["generation_model"] for line in evaluation_lines[:4]] == ["vendor/writer-one"] * 2 + [
        "vendor/writer-two"
    ] * 2
    assert {line["revision"] for line in [*generation_lines, *evaluation_lines]} == {"1"}

    progress = tracker.progress("exp1")
    assert progress.finished
    assert {name: (s.planned, s.done, s.failed) for name, s in progress.stages.items()} == {
        "generation": (4, 4, 0),
        "evaluation": (8, 8, 0),
        "scoring": (8, 8, 0),
    }
    assert progress.parse_errors == 1
    assert (progress.prompt_tokens, progress.completion_tokens) == (1200, 600)
    assert progress.cost_usd == pytest.approx(0.012)
    assert progress.cost_saved_usd == 0
    assert [(t.stage, t.tier, t.planned, t.done) for t in progress.tiers] == [
        ("evaluation", "judges", 8, 8),
        ("generation", "writers", 4, 4),
    ]


@pytest.mark.parametrize("seed", [1, 2])
def test_duplicated_shuffled_delivery_gives_the_same_state(tmp_path: Path, seed: int) -> None:
    in_order_dir, shuffled_dir = tmp_path / "in_order", tmp_path / "shuffled"
    in_order = Tracker(in_order_dir, make_engine(f"sqlite:///{in_order_dir / 'daydream.db'}"))
    shuffled = Tracker(shuffled_dir, make_engine(f"sqlite:///{shuffled_dir / 'daydream.db'}"))
    events = FakeExperiment().events()
    for event in events:
        deliver(in_order, event)
    twice = events * 2
    random.Random(seed).shuffle(twice)
    for event in twice:
        deliver(shuffled, event)

    assert dump_tables(shuffled.engine) == dump_tables(in_order.engine)
    for stage, count in (("generation", 4), ("evaluation", 8)):
        keys = csv_keys(shuffled_dir, stage)
        assert len(keys) == len(set(keys)) == count
    assert shuffled.progress("exp1").finished


def test_an_evaluation_line_waits_for_its_answer_its_score_and_its_generation(
    tracker: Tracker, data_dir: Path
) -> None:
    """The tracker may read the judge's events before the generation's: the line, which names the
    generation model, is appended once all three are in, whatever their order."""
    fake = FakeExperiment()
    tracker.record_score(fake.scores[0])
    assert csv_keys(data_dir, "evaluation") == []
    tracker.record_evaluation(fake.evaluations[0])
    tracker.record_evaluation(fake.evaluations[0])
    assert csv_keys(data_dir, "evaluation") == []
    tracker.record_generation(fake.generations[0])
    tracker.record_generation(fake.generations[0])
    [line] = csv_lines(data_dir, "evaluation")
    assert (line["task_id"], line["revision"], line["generation_model"], line["score"]) == (
        fake.evaluations[0].task.task_id,
        "1",
        "vendor/writer-one",
        "8.0",
    )


def test_a_failure_followed_by_success_counts_as_done(tracker: Tracker) -> None:
    fake = FakeExperiment()
    tracker.record_planned(fake.planned)
    generation = fake.generations[0]
    tracker.record_failure(fake.failure(generation.task, T0 + timedelta(seconds=5)))

    progress = tracker.progress("exp1")
    assert (progress.stages["generation"].failed, progress.failures_by_reason) == (1, {"server_error": 1})
    assert progress.stages["evaluation"].skipped == 2
    assert [task.task_id for task in tracker.failed_tasks("exp1")] == [generation.task.task_id]
    assert tracker.failed_tasks("exp1")[0] == generation.task

    tracker.record_generation(generation)
    progress = tracker.progress("exp1")
    assert (progress.stages["generation"].done, progress.stages["generation"].failed) == (1, 0)
    assert progress.stages["evaluation"].skipped == 0
    assert tracker.failed_tasks("exp1") == []
    with Session(tracker.engine) as session:
        assert session.exec(select(Failure)).one().resolved


def test_a_stale_failure_arriving_after_the_success_stays_resolved(tracker: Tracker) -> None:
    generation = FakeExperiment().generations[0]
    tracker.record_generation(generation)
    tracker.record_failure(FakeExperiment().failure(generation.task, T0))
    assert tracker.failed_tasks("exp1") == []
    assert tracker.progress("exp1").stages["generation"].failed == 0


def test_an_experiment_with_failed_generations_finishes_without_their_evaluations(tracker: Tracker) -> None:
    fake = FakeExperiment()
    lost = fake.generations[0].task.task_id
    for event in fake.events():
        if getattr(getattr(event, "task", None), "generation_task_id", None) != lost:
            deliver(tracker, event)
    assert not tracker.progress("exp1").finished
    tracker.record_failure(fake.failure(fake.generations[0].task, T0 + timedelta(hours=1), reason="timeout"))
    progress = tracker.progress("exp1")
    assert progress.finished and progress.finished_at == datetime(2025, 3, 1, 13, 0, tzinfo=UTC)
    assert progress.stages["evaluation"].skipped == 2


def test_a_task_id_reused_by_another_experiment_keeps_both_files(data_dir: Path, engine: Engine) -> None:
    tracker = Tracker(data_dir, engine)
    first = FakeExperiment("exp1").generations[0]
    same_text = FakeExperiment("exp2").generations[0]
    new_text = FakeExperiment("exp3", text_suffix=" (fresh sample)").generations[0]
    for event in (first, same_text, new_text, new_text):
        tracker.record_generation(event)

    task_id = first.task.task_id
    responses = data_dir / "3_generation" / "generation_responses"
    assert (responses / f"{task_id}.txt").read_text() == first.call.text
    assert (responses / f"{task_id}.exp3.txt").read_text() == new_text.call.text
    with Session(engine) as session:
        paths = {row.experiment_id: row.response_path for row in session.exec(select(GenerationResult)).all()}
    assert paths == {
        "exp1": f"3_generation/generation_responses/{task_id}.txt",
        "exp2": f"3_generation/generation_responses/{task_id}.txt",
        "exp3": f"3_generation/generation_responses/{task_id}.exp3.txt",
    }
    assert sorted(path.name for path in responses.glob("*.json")) == sorted(
        [f"{task_id}.json", f"{task_id}.exp2.json", f"{task_id}.exp3.json"]
    )


def test_a_rerun_inside_one_experiment_replaces_the_row_and_keeps_the_old_file(
    tracker: Tracker, data_dir: Path
) -> None:
    original = FakeExperiment().generations[0]
    rerun = GenerationDone(
        task=original.task, call=call(original.task.task_id, "a second take", T0 + timedelta(hours=2))
    )
    tracker.record_generation(original)
    tracker.record_generation(rerun)
    tracker.record_generation(original)

    with Session(tracker.engine) as session:
        row = session.exec(select(GenerationResult)).one()
    assert (data_dir / row.response_path).read_text() == "a second take"
    assert (
        data_dir / "3_generation" / "generation_responses" / f"{original.task.task_id}.txt"
    ).read_text() == original.call.text
    lines = csv_lines(data_dir, "generation")
    assert [(line["task_id"], line["revision"]) for line in lines] == [
        (original.task.task_id, "1"),
        (original.task.task_id, "2"),
    ]
    assert lines[-1]["response_path"] == row.response_path != lines[0]["response_path"]
    assert row.revision == 2 and row.csv_appended


def test_a_rescore_supersedes_the_evaluation_line_and_a_repeated_verdict_changes_nothing(
    tracker: Tracker, data_dir: Path
) -> None:
    fake = FakeExperiment()
    for event in fake.events():
        deliver(tracker, event)
    first = fake.scores[0]
    rescored = first.model_copy(update={"score": 1.0, "candidates": [1.0], "emitted_at": T0 + timedelta(days=1)})
    same_again = rescored.model_copy(update={"emitted_at": T0 + timedelta(days=2)})
    responses = data_dir / "4_evaluation" / "evaluation_responses"
    deliver(tracker, rescored)
    score_files = sorted(responses.glob("*.score.json"))
    deliver(tracker, same_again)
    deliver(tracker, first)

    mine = [line for line in csv_lines(data_dir, "evaluation") if line["task_id"] == first.task.task_id]
    assert [(line["revision"], line["score"]) for line in mine] == [("1", "8.0"), ("2", "1.0")]
    with Session(tracker.engine) as session:
        row = session.exec(select(EvaluationResult).where(EvaluationResult.task_id == first.task.task_id)).one()
    assert (row.score, row.revision, row.scored_at) == (1.0, 2, rescored.emitted_at)
    assert sorted(responses.glob("*.score.json")) == score_files
    assert len(score_files) == len(fake.scores) + 1


def test_progress_counts_a_reused_response_as_saved_not_spent(tracker: Tracker) -> None:
    fake = FakeExperiment()
    paid, reused = fake.generations[:2]
    tracker.record_generation(paid)
    tracker.record_generation(reused.model_copy(update={"call": reused.call.model_copy(update={"cached": True})}))
    progress = tracker.progress("exp1")
    assert (progress.cost_usd, progress.cost_saved_usd) == (pytest.approx(0.001), pytest.approx(0.001))


def test_reconcile_finishes_an_append_interrupted_by_a_crash(tracker: Tracker, data_dir: Path) -> None:
    fake = FakeExperiment()
    for generation in fake.generations[:2]:
        tracker.record_generation(generation)
    with Session(tracker.engine) as session:
        for row in session.exec(select(GenerationResult)).all():
            row.csv_appended = False
            session.add(row)
        session.commit()
    lines = (data_dir / "7_cross_experiment" / "generation_results.csv").read_text().splitlines()
    (data_dir / "7_cross_experiment" / "generation_results.csv").write_text("\n".join(lines[:2]) + "\n")

    tracker.reconcile_csvs()
    tracker.reconcile_csvs()

    assert csv_keys(data_dir, "generation") == sorted(("exp1", g.task.task_id) for g in fake.generations[:2])
    with Session(tracker.engine) as session:
        assert all(row.csv_appended for row in session.exec(select(GenerationResult)).all())


def test_failures_outside_the_planned_stages_are_reported_but_not_counted_as_tasks(tracker: Tracker) -> None:
    fake = FakeExperiment()
    tracker.record_planned(fake.planned)
    planning = TaskFailed(
        stage="planning", experiment_id="exp1", task_id="plan", reason="bad_request", message="no concepts", attempts=1
    )
    tracker.record_failure(planning)
    unparseable = fake.failure(fake.evaluations[0].task, T0, reason="poison_message").model_copy(
        update={"stage": "scoring"}
    )
    tracker.record_failure(unparseable)

    progress = tracker.progress("exp1")
    assert progress.failures_by_reason == {"bad_request": 1, "poison_message": 1}
    assert [stage.failed for stage in progress.stages.values()] == [0, 0, 1]


def test_the_tracker_upgrades_an_empty_csv_with_an_earlier_header_to_todays(tracker: Tracker, data_dir: Path) -> None:
    csv_path = data_dir / "7_cross_experiment" / "evaluation_results.csv"
    csv_path.parent.mkdir(parents=True)
    earlier = ",".join(column for column in EVALUATION_CSV_COLUMNS if column not in ("revision", "generation_model"))
    csv_path.write_text(earlier + "\n")
    tracker.reconcile_csvs()
    assert csv_path.read_text().splitlines() == [",".join(EVALUATION_CSV_COLUMNS)]


def test_a_cross_experiment_csv_with_foreign_columns_is_refused_not_mixed(tracker: Tracker, data_dir: Path) -> None:
    csv_path = data_dir / "7_cross_experiment" / "generation_results.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("task_id,score\nold,5\n")
    with pytest.raises(CsvHeaderMismatch, match="generation_results.csv.*daydream rebuild"):
        tracker.record_generation(FakeExperiment().generations[0])
    assert csv_path.read_text() == "task_id,score\nold,5\n"


def test_a_truncated_generation_left_unjudged_counts_its_evaluations_once_as_skipped(tracker: Tracker) -> None:
    """The fan-out records why each evaluation will not run; progress must not count them twice."""
    from services.evaluator.fanout import evaluation_messages

    fake = FakeExperiment()
    spec = fake.requested.spec.model_copy(update={"evaluate_truncated": False})
    deliver(tracker, fake.requested.model_copy(update={"spec": spec}))
    deliver(tracker, fake.planned)
    first = fake.generations[0]
    assert first.task.evaluation_plan is not None
    plan = first.task.evaluation_plan.model_copy(update={"evaluate_truncated": False})
    cut = first.model_copy(update={"task": first.task.model_copy(update={"evaluation_plan": plan}),
                                   "call": first.call.model_copy(update={"truncated": True})})
    deliver(tracker, cut)
    for failure in evaluation_messages(cut):
        deliver(tracker, failure)
    evaluation = tracker.progress("exp1").stages["evaluation"]
    assert (evaluation.failed, evaluation.skipped) == (0, 2)


def test_a_refused_plan_is_reported_as_the_planning_error(tracker: Tracker) -> None:
    """`daydream run` stops following an experiment the combiner could not plan."""
    fake = FakeExperiment()
    deliver(tracker, fake.requested)
    assert tracker.progress("exp1").planning_error is None
    deliver(tracker, TaskFailed(stage="planning", experiment_id="exp1", task_id="plan", reason="invalid_experiment",
                                message="template essay: uses an undefined variable", attempts=1))
    assert tracker.progress("exp1").planning_error == "template essay: uses an undefined variable"
