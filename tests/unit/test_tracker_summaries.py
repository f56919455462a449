"""Results tables and the results/status commands, on the fake experiment's known scores."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from daydream.cli import app
from services.tracker.artifacts import read_csv_rows
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.summaries import agreement_class, read_results, render_results_table
from shared.events import EvaluationDone, EvaluationScored
from tests.fakes import FakeExperiment, deliver


@pytest.fixture
def finished(tmp_path: Path) -> Iterator[tuple[Path, Tracker]]:
    """The fake experiment with scores per generation: (8, 7), (5, 6), (9, 9), (2, unparsed)."""
    data_dir = tmp_path / "data"
    tracker = Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))
    for event in FakeExperiment().events():
        deliver(tracker, event)
    yield data_dir, tracker
    tracker.engine.dispose()


def run(data_dir: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--data", str(data_dir)], env={"COLUMNS": "200"})


def test_results_writes_every_table_with_hand_checked_numbers(finished) -> None:
    data_dir, _ = finished
    outcome = run(data_dir, "results")
    assert outcome.exit_code == 0, outcome.output

    parsed = read_csv_rows(data_dir / "5_parsing" / "parsed_scores.csv")
    assert len(parsed) == 8 and parsed[-1]["parse_error"] == "no number found" and parsed[-1]["score"] == ""

    final_rows = read_csv_rows(data_dir / "6_summary" / "final_results.csv")
    assert {(row["evaluation_template_id"], row["max_score"]) for row in final_rows} == {("judge", "9")}
    final = {(row["group_by"], row["group"]): row for row in final_rows}
    overall = final["overall", "all"]
    assert int(overall["count"]) == 7
    assert float(overall["mean"]) == pytest.approx((8 + 7 + 5 + 6 + 9 + 9 + 2) / 7, abs=1e-4)
    assert (float(overall["min"]), float(overall["max"]), overall["high_count"], overall["low_count"]) == (
        2.0,
        9.0,
        "4",
        "1",
    )
    writer_one = final["generation_model", "gm1"]
    assert float(writer_one["mean"]) == 8.25
    assert float(writer_one["std"]) == pytest.approx(statistics.stdev([8, 7, 9, 9]), abs=1e-4)
    assert float(final["evaluation_model", "em2"]["mean"]) == pytest.approx((7 + 6 + 9) / 3, abs=1e-4)
    assert float(final["generation_model_x_evaluation_model", "gm2 x em1"]["mean"]) == 3.5
    assert {group_by for group_by, _ in final} == {
        "generation_template", "generation_model", "evaluation_model", "combo",
        "generation_template_x_generation_model", "generation_model_x_evaluation_model", "overall",
    }  # fmt: skip

    pivot = read_csv_rows(data_dir / "6_summary" / "generation_scores_pivot.csv")
    assert list(pivot[0])[-2:] == ["judge__em1", "judge__em2"]
    assert [(row["judge__em1"], row["judge__em2"]) for row in pivot] == [
        ("8.0", "7.0"),
        ("5.0", "6.0"),
        ("9.0", "9.0"),
        ("2.0", ""),
    ]

    agreement = read_csv_rows(data_dir / "6_summary" / "evaluator_agreement.csv")
    assert [(row["evaluators"], row["range"], row["agreement"]) for row in agreement] == [
        ("2", "1.0", "high"), ("2", "1.0", "high"), ("2", "0.0", "high"), ("1", "0.0", "single"),
    ]  # fmt: skip
    assert "c1, c3" in outcome.output and "9.00" in outcome.output


def test_agreement_classes_follow_the_range_of_scores_on_the_nine_point_scale() -> None:
    assert [agreement_class(3, spread, 9) for spread in (0, 1, 1.5, 3, 3.5)] == [
        "high",
        "high",
        "moderate",
        "moderate",
        "low",
    ]
    assert [agreement_class(2, spread, 90) for spread in (10, 30, 35)] == ["high", "moderate", "low"]
    assert agreement_class(1, 0, 9) == "single"


def test_judges_on_different_scales_are_summarised_per_rubric_never_averaged_together(tmp_path: Path) -> None:
    """The fake experiment's first judge answers a 0-100 rubric instead: 80, 50, 90, 20."""
    data_dir = tmp_path / "data"
    tracker = Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))
    fake = FakeExperiment()
    for event in fake.events():
        if isinstance(event, (EvaluationDone, EvaluationScored)) and event.task.evaluation_model_id == "em1":
            task = event.task.model_copy(update={"evaluation_template_id": "novelty", "max_score": 100})
            update: dict[str, object] = {"task": task}
            if isinstance(event, EvaluationScored) and event.score is not None:
                update |= {"score": event.score * 10}
            event = event.model_copy(update=update)
        deliver(tracker, event)
    assert run(data_dir, "results").exit_code == 0

    final = {
        (row["evaluation_template_id"], row["max_score"], row["group_by"], row["group"]): row
        for row in read_csv_rows(data_dir / "6_summary" / "final_results.csv")
    }
    novelty, judge = final["novelty", "100", "overall", "all"], final["judge", "9", "overall", "all"]
    assert (novelty["count"], float(novelty["mean"]), novelty["high_count"], novelty["low_count"]) == (
        "4", 60.0, "2", "1",
    )  # fmt: skip
    assert (judge["count"], float(judge["mean"])) == ("3", pytest.approx((7 + 6 + 9) / 3, abs=1e-4))
    assert float(final["novelty", "100", "generation_model", "gm1"]["mean"]) == 85.0

    agreement = read_csv_rows(data_dir / "6_summary" / "evaluator_agreement.csv")
    assert [(row["evaluation_template_id"], row["evaluators"], row["mean"]) for row in agreement[:2]] == [
        ("judge", "1", "7.0"),
        ("novelty", "1", "80.0"),
    ]

    console = Console(width=200, record=True)
    console.print(render_results_table(tracker.engine, read_results(tracker.engine, "exp1"), limit=2))
    text = console.export_text()
    assert "90.00 / 100" in text and "9.00 / 9" in text
    tracker.engine.dispose()


def test_the_results_table_ranks_generations_by_mean_score(finished) -> None:
    _, tracker = finished
    console = Console(width=200, record=True)
    console.print(render_results_table(tracker.engine, read_results(tracker.engine, "exp1"), limit=2))
    text = console.export_text()
    assert text.index("c1, c3") < text.index("c1, c2")
    assert "9.00" in text and "7.50" in text and "5.50" not in text
    assert "vendor/writer-one" in text


def test_results_for_an_unknown_experiment_names_the_known_ones(finished) -> None:
    outcome = run(finished[0], "results", "nope")
    assert outcome.exit_code == 2
    assert "nope" in outcome.output and "exp1" in outcome.output


def test_status_shows_progress_failures_and_spend(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    tracker = Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))
    fake = FakeExperiment()
    tracker.record_requested(fake.requested)
    tracker.record_planned(fake.planned)
    tracker.record_generation(fake.generations[0])
    tracker.record_failure(fake.failure(fake.generations[1].task, fake.start, reason="rate_limited"))

    outcome = run(data_dir, "status", "exp1")
    assert outcome.exit_code == 0, outcome.output
    assert "running" in outcome.output
    assert "rate_limited" in outcome.output and "daydream rerun exp1 --failed" in outcome.output
    cells = [line.replace("│", " ").split() for line in outcome.output.splitlines()]
    assert ["generation", "all", "4", "1", "1", "0"] in cells
    assert ["generation", "writers", "4", "1", "1"] in cells
    assert "cost $0.0010" in outcome.output and "saved" not in outcome.output

    reused = fake.generations[2]
    tracker.record_generation(reused.model_copy(update={"call": reused.call.model_copy(update={"cached": True})}))
    outcome = run(data_dir, "status", "exp1")
    assert "cost $0.0010 (reused responses saved $0.0010)" in " ".join(outcome.output.split())


def test_results_without_any_experiment_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "empty" / "1_raw").mkdir(parents=True)
    outcome = run(tmp_path / "empty", "results")
    assert outcome.exit_code == 1
    assert "No experiments recorded yet" in outcome.output


def test_results_in_a_directory_that_is_no_data_dir_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    outcome = run(tmp_path, "results")
    assert outcome.exit_code == 2
    assert "holds neither 1_raw/ nor daydream.db" in outcome.output
    assert not (tmp_path / "daydream.db").exists()
