"""Results tables and the results/status commands, on the fake experiment's known scores."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from daydream.cli import app
from services.tracker.artifacts import read_csv_rows
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.summaries import agreement_class, render_results_table
from tests.unit.test_tracker_recorder import FakeExperiment, deliver


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Tracker]:
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

    final = {
        (row["group_by"], row["group"]): row for row in read_csv_rows(data_dir / "6_summary" / "final_results.csv")
    }
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


def test_agreement_classes_follow_the_range_of_scores() -> None:
    assert [agreement_class(3, spread) for spread in (0, 1, 1.5, 3, 3.5)] == [
        "high",
        "high",
        "moderate",
        "moderate",
        "low",
    ]


def test_the_results_table_ranks_generations_by_mean_score(finished) -> None:
    _, tracker = finished
    console = Console(width=200, record=True)
    console.print(render_results_table(tracker.engine, "exp1", limit=2))
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
    assert "cost $0.0010" in outcome.output


def test_results_without_any_experiment_says_what_to_do(tmp_path: Path) -> None:
    outcome = run(tmp_path / "empty", "results")
    assert outcome.exit_code == 1
    assert "No experiments recorded yet" in outcome.output
