"""`daydream plan` refuses an experiment too big to run by counting it, not by enumerating it: in a
process whose memory is capped far below what enumerating would take, it exits 2 with the count and
the fix, writes nothing, and does not hang (the timeout is a wide margin, not a measurement)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE_RAW = REPO / "tests" / "data" / "bad_inputs" / "_base" / "1_raw"
MEMORY_CAP_BYTES = 1024**3
"""Enumerating 40 concepts at k_max 20 took 3 GB before dying with MemoryError."""


def plan_in_a_capped_process(cap_bytes: int) -> str:
    """Python code that runs `daydream plan --data <argv[1]>` with its address space capped."""
    return (
        "import resource, runpy, sys;"
        f"resource.setrlimit(resource.RLIMIT_AS, ({cap_bytes}, {cap_bytes}));"
        "sys.argv = ['daydream', 'plan', '--data', sys.argv[1]];"
        "runpy.run_module('daydream', run_name='__main__')"
    )


def concepts_at_k_max(raw: Path, concepts: int, k_max: int) -> None:
    ids = [f"c{index:02d}" for index in range(concepts)]
    (raw / "concepts_metadata.csv").write_text(
        "concept_id,name,active\n" + "".join(f"{c},Concept {c},true\n" for c in ids), encoding="utf-8"
    )
    for concept in ids:
        (raw / "descriptions-paragraph" / f"{concept}.txt").write_text(f"About {concept}.", encoding="utf-8")
    toml = raw / "experiment.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace("k_max = 2", f"k_max = {k_max}"), encoding="utf-8")


def forty_concepts_at_k_max_20(raw: Path) -> None:
    concepts_at_k_max(raw, 40, 20)


def a_billion_replicates(raw: Path) -> None:
    toml = raw / "experiment.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + "replicates = 1000000000\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("make", "count"),
    [
        (forty_concepts_at_k_max_20, "275,693,057,640 LLM calls"),
        (a_billion_replicates, "6,000,000,000 LLM calls"),
    ],
)
def test_a_plan_too_big_to_enumerate_is_refused_by_its_count(make, count: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(BASE_RAW, data / "1_raw")
    make(data / "1_raw")
    env = {**os.environ, "COLUMNS": "400"}
    env.pop("DAYDREAM_MAX_PLANNED_CALLS", None)
    done = subprocess.run(
        [sys.executable, "-c", plan_in_a_capped_process(MEMORY_CAP_BYTES), str(data)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert count in done.stderr
    assert "more than the limit of 100,000" in done.stderr
    assert "DAYDREAM_MAX_PLANNED_CALLS" in done.stderr
    assert "MemoryError" not in done.stderr
    assert sorted(path.name for path in data.iterdir()) == ["1_raw"]
