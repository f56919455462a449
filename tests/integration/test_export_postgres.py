"""`export`, `rescore` and `results --all` on a real PostgreSQL agree with their SQLite runs: the
export's outer joins and boolean filters, and the rescore's revisions, read the same on both."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daydream.cli import app
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from tests.fakes import FakeExperiment, deliver
from tests.unit.test_tracker_rebuild import rerun_and_rescore

pytestmark = pytest.mark.integration


def test_export_rescore_and_results_all_on_postgres_match_sqlite(postgres_url: str, tmp_path: Path) -> None:
    fake = FakeExperiment(f"pg-{uuid.uuid4().hex[:8]}")
    runs = {"sqlite": None, "pg": postgres_url}
    engines = []
    for name, url in runs.items():
        engine = make_engine(url or f"sqlite:///{tmp_path / name / 'daydream.db'}")
        engines.append(engine)
        tracker = Tracker(tmp_path / name, engine)
        for event in fake.events():
            deliver(tracker, event)
        rerun_and_rescore(tracker, fake)

    def daydream(name: str, *args: str):
        env = {"COLUMNS": "200", "DAYDREAM_DATABASE_URL": runs[name]}
        outcome = CliRunner().invoke(app, [*args, "--data", str(tmp_path / name)], env=env)
        assert outcome.exit_code == 0, outcome.output
        return outcome

    exports = {name: daydream(name, "export", fake.experiment_id).stdout for name in runs}
    assert exports["pg"] == exports["sqlite"]
    assert len(exports["pg"].splitlines()) == 9 and "a second take" in exports["pg"]
    rescored = {name: daydream(name, "rescore", fake.experiment_id, "--parser", "in_last_line", "--json").stdout
                for name in runs}
    assert rescored["pg"] == rescored["sqlite"] and '"changed": []' not in rescored["pg"]
    assert "clean" in daydream("pg", "check").output
    for name in runs:
        daydream(name, "results", "--all")
    summary = Path("6_summary") / "all_experiments" / "final_results.csv"
    assert (tmp_path / "pg" / summary).read_text() == (tmp_path / "sqlite" / summary).read_text()
    for engine in engines:
        engine.dispose()
