"""After a real `daydream run` of the example: `export` holds every evaluation with the texts on
disk and the concepts by name, and `rescore` with the parser the tasks name reproduces every
verdict the parser service recorded (nothing changes, `check` stays clean)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.e2e.test_run_cli import daydream

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def finished(*args: str, timeout: float = 60) -> str:
    process = daydream(*args)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def test_export_and_rescore_agree_with_what_the_run_recorded(data: Path) -> None:
    finished("run", "--data", str(data), "--experiment-id", "demo", timeout=180)
    out = data / "demo.jsonl"
    finished("export", "demo", "--format", "jsonl", "--out", str(out), "--data", str(data))
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 32 and {row["status"] for row in rows} <= {"scored", "parse_error"}
    with (data / "1_raw" / "concepts_metadata.csv").open(encoding="utf-8") as stream:
        names = {row["concept_id"]: row["name"] for row in csv.DictReader(stream)}
    for row in rows:
        assert row["concepts"] == [names[concept] for concept in row["concept_ids"]]
        assert row["generation_text"] and row["evaluation_text"] and row["evaluation_latency_s"] is not None
    lines = (data / "7_cross_experiment" / "evaluation_results.csv").read_text().count("\n")

    report = json.loads(finished("rescore", "demo", "--json", "--data", str(data)))
    assert (report["examined"], report["changed"]) == (32, [])
    assert (data / "7_cross_experiment" / "evaluation_results.csv").read_text().count("\n") == lines
    assert "clean" in finished("check", "--data", str(data))
