"""`daydream export` and `daydream.load` on data dirs the tracker's own recording functions produced."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import daydream
from daydream.cli import app
from daydream.export import COLUMNS, TEXT_COLUMNS
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from tests.fakes import SCORES, FakeExperiment, deliver


def record(data_dir: Path, *experiments: FakeExperiment) -> Tracker:
    tracker = Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))
    for experiment in experiments:
        for event in experiment.events():
            deliver(tracker, event)
    return tracker


@pytest.fixture
def two_experiments(tmp_path: Path):
    """exp1 and exp2 (texts differ); in exp1 one evaluation was re-scored after it was recorded."""
    data_dir = tmp_path / "data"
    first, second = FakeExperiment("exp1"), FakeExperiment("exp2", text_suffix=" v2")
    tracker = record(data_dir, first, second)
    rescored = first.scores[1]
    deliver(tracker, rescored.model_copy(update={"score": 3.0, "candidates": [3.0],
                                                 "emitted_at": rescored.emitted_at.replace(year=2026)}))
    yield data_dir, first
    tracker.engine.dispose()


def export(data_dir: Path, *args: str):
    return CliRunner().invoke(app, ["export", *args, "--data", str(data_dir)])


def test_csv_has_one_current_row_per_evaluation_with_its_generation(two_experiments) -> None:
    data_dir, first = two_experiments
    outcome = export(data_dir, "exp1")
    assert outcome.exit_code == 0, outcome.output
    rows = list(csv.DictReader(io.StringIO(outcome.stdout)))
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == 8 and {row["experiment_id"] for row in rows} == {"exp1"}
    by_task = {row["evaluation_task_id"]: row for row in rows}
    judged = first.evaluations[1]
    row = by_task[judged.task.task_id]
    assert (row["score"], row["revision"]) == ("3.0", "2")  # the re-score, not the first verdict
    assert row["concept_ids"] == "c1; c2" and row["concepts"] == "C1; C2"
    assert row["evaluation_text"] == judged.call.text
    generation = next(g for g in first.generations if g.task.task_id == judged.task.generation_task_id)
    assert row["generation_text"] == generation.call.text
    assert row["generation_prompt"] == generation.task.prompt
    assert (row["generation_model"], row["evaluation_model"]) == ("vendor/writer-one", "vendor/judge-two")
    assert (row["evaluation_latency_s"], row["evaluation_provider"], row["evaluation_cost_usd"]) == (
        "1.5", "SomeHost", "0.001")
    assert row["evaluation_prompt_tokens"] == "100" and row["generation_completion_tokens"] == "50"
    unparsed = by_task[first.evaluations[-1].task.task_id]
    assert (unparsed["score"], unparsed["parse_error"], unparsed["status"]) == ("", "no number found", "parse_error")


def test_all_exports_every_experiment_and_no_texts_leaves_them_out(two_experiments, tmp_path: Path) -> None:
    data_dir, _ = two_experiments
    out = tmp_path / "all.jsonl"
    outcome = export(data_dir, "--all", "--format", "jsonl", "--no-texts", "--out", str(out))
    assert outcome.exit_code == 0, outcome.output
    assert "exported 16 evaluations" in outcome.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["experiment_id"] for row in rows] == ["exp1"] * 8 + ["exp2"] * 8
    assert set(rows[0]) == set(COLUMNS) - set(TEXT_COLUMNS)
    assert rows[8]["concepts"] == ["C1", "C2"]
    assert [row["score"] for row in rows[8:]] == SCORES


def test_naming_experiments_picks_them_and_an_unknown_one_is_refused(two_experiments) -> None:
    data_dir, _ = two_experiments
    both = export(data_dir, "exp2", "exp1", "--no-texts")
    assert len(list(csv.DictReader(io.StringIO(both.stdout)))) == 16
    latest = export(data_dir, "--no-texts")
    assert {row["experiment_id"] for row in csv.DictReader(io.StringIO(latest.stdout))} == {"exp2"}
    unknown = export(data_dir, "exp1", "nope")
    assert unknown.exit_code == 2 and "Unknown experiment 'nope'" in unknown.output
    assert export(data_dir, "exp1", "--all").exit_code == 2


def test_parquet_holds_the_same_rows_as_the_loader(two_experiments, tmp_path: Path) -> None:
    import pyarrow.parquet

    data_dir, _ = two_experiments
    out = tmp_path / "exp1.parquet"
    outcome = export(data_dir, "exp1", "--format", "parquet", "--out", str(out))
    assert outcome.exit_code == 0, outcome.output
    table = pyarrow.parquet.read_table(out)
    frame = daydream.load("exp1", data=data_dir)
    assert table.column_names == list(frame.columns) == list(COLUMNS)
    rescored = [SCORES[0], 3.0, *SCORES[2:]]
    assert table.column("score").to_pylist() == rescored
    assert frame["score"].tolist()[:7] == rescored[:7] and frame["score"].isna().tolist()[7]
    assert table.column("concepts").to_pylist()[0] == ["C1", "C2"]


def test_parquet_needs_a_file_and_says_how_to_install_pyarrow(two_experiments, monkeypatch) -> None:
    data_dir, _ = two_experiments
    assert export(data_dir, "--format", "parquet").exit_code == 2
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    missing = export(data_dir, "--format", "parquet", "--out", str(data_dir / "x.parquet"))
    assert missing.exit_code == 2
    assert "uv sync --extra parquet" in missing.output and "daydream[parquet]" in missing.output
    assert not (data_dir / "x.parquet").exists()


def test_load_returns_pandas_or_polars_frames_of_every_experiment(two_experiments) -> None:
    data_dir, first = two_experiments
    frame = daydream.load(data=data_dir)
    assert len(frame) == 16
    scored = frame[frame["experiment_id"] == "exp1"].set_index("evaluation_task_id")["score"]
    assert scored[first.evaluations[1].task.task_id] == 3.0
    polars = daydream.load("exp2", data=data_dir, frame="polars", texts=False)
    assert polars.height == 8 and "generation_text" not in polars.columns
    assert polars["score"].to_list() == SCORES


def test_load_refuses_unknown_experiments_and_directories_without_records(two_experiments, tmp_path: Path) -> None:
    data_dir, _ = two_experiments
    with pytest.raises(ValueError, match="unknown experiment.*nope.*known: exp1, exp2"):
        daydream.load("nope", data=data_dir)
    with pytest.raises(FileNotFoundError):
        daydream.load(data=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
