"""`results --all` beside per-experiment summaries, and the --json of `results` and `status`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daydream.cli import app
from services.tracker.artifacts import read_csv_rows
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from tests.fakes import FakeExperiment, deliver


@pytest.fixture
def two_experiments(tmp_path: Path):
    """exp1 finished; exp2 has its generations but only the first judge's answers and scores."""
    data_dir = tmp_path / "data"
    tracker = Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))
    second = FakeExperiment("exp2")
    for event in [*FakeExperiment("exp1").events(), second.requested, second.planned, *second.generations,
                  *second.evaluations[:1], *second.scores[:1]]:
        deliver(tracker, event)
    yield data_dir
    tracker.engine.dispose()


def daydream(data_dir: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--data", str(data_dir)], env={"COLUMNS": "200"})


def test_results_all_writes_its_own_files_per_experiment_and_keeps_each_experiments(two_experiments) -> None:
    data_dir = two_experiments
    assert daydream(data_dir, "results", "exp1").exit_code == 0
    own = (data_dir / "6_summary" / "final_results.csv").read_text()
    outcome = daydream(data_dir, "results", "--all")
    assert outcome.exit_code == 0, outcome.output
    assert (data_dir / "6_summary" / "final_results.csv").read_text() == own

    pooled = data_dir / "6_summary" / "all_experiments"
    overall = {row["experiment_id"]: row for row in read_csv_rows(pooled / "final_results.csv")
               if row["group_by"] == "overall"}
    assert {name: row["count"] for name, row in overall.items()} == {"exp1": "7", "exp2": "1"}
    assert float(overall["exp2"]["mean"]) == 8.0  # exp2's one score, not pooled with exp1's
    parsed = read_csv_rows(data_dir / "5_parsing" / "all_experiments" / "parsed_scores.csv")
    assert sorted({row["experiment_id"] for row in parsed}) == ["exp1", "exp2"]
    for name in ("generation_scores_pivot.csv", "evaluator_agreement.csv"):
        assert {row["experiment_id"] for row in read_csv_rows(pooled / name)} == {"exp1", "exp2"}
    assert all(row["experiment_id"] == "exp1" for row in read_csv_rows(data_dir / "6_summary" / "final_results.csv"))


def test_results_json_lists_the_files_and_the_best_generations(two_experiments) -> None:
    data_dir = two_experiments
    outcome = daydream(data_dir, "results", "exp1", "--json", "--top", "2")
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert report["experiment_id"] == "exp1"
    assert all(Path(path).is_file() for path in report["files"])
    assert [(entry["rank"], entry["scores"], entry["mean"], entry["max_score"]) for entry in report["top"]] == [
        (1, [9.0, 9.0], 9.0, 9), (2, [8.0, 7.0], 7.5, 9)]
    assert report["top"][0]["concepts"] == ["c1", "c3"]
    assert report["top"][0]["generation_model"] == "vendor/writer-one"


def test_status_json_is_the_progress_with_its_state(two_experiments) -> None:
    data_dir = two_experiments
    finished = json.loads(daydream(data_dir, "status", "exp1", "--json").stdout)
    assert finished["state"] == "finished" and finished["finished_at"]
    assert finished["stages"]["scoring"]["done"] == 8 and finished["parse_errors"] == 1
    assert finished["cost_usd"] == pytest.approx(12 * 0.001)
    unfinished = json.loads(daydream(data_dir, "status", "exp2", "--json").stdout)
    assert unfinished["state"] == "interrupted"  # no stack runs for this data dir
    assert (unfinished["stages"]["evaluation"]["planned"], unfinished["stages"]["evaluation"]["done"]) == (8, 1)
