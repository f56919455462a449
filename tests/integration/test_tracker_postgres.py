"""The tracker on a real PostgreSQL: duplicated, shuffled delivery lands exactly as in-order
delivery does on SQLite (rows, timestamps, JSON columns, CSV lines); and `rebuild`, `check` and
`results`, run as a user runs them (DAYDREAM_DATABASE_URL), agree with their SQLite runs."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from daydream.cli import app
from services.tracker.db import drop_db, make_engine
from services.tracker.recorder import Tracker
from services.tracker.tables import ComboMapping
from tests.fakes import FakeExperiment, csv_keys, deliver, dump_tables
from tests.unit.test_tracker_migration import assert_upgraded_in_place, record_with_earlier_daydream
from tests.unit.test_tracker_rebuild import rerun_and_rescore, sorted_lines

pytestmark = pytest.mark.integration


def test_redelivered_shuffled_events_on_postgres_match_in_order_delivery(postgres_url: str, tmp_path: Path) -> None:
    experiment_id = f"pg-{uuid.uuid4().hex[:8]}"
    fake = FakeExperiment(experiment_id)
    reference = Tracker(tmp_path / "sqlite", make_engine(f"sqlite:///{tmp_path / 'sqlite' / 'daydream.db'}"))
    for event in fake.events():
        deliver(reference, event)

    engine = make_engine(postgres_url)
    tracker = Tracker(tmp_path / "pg", engine)
    events = fake.events() * 2
    random.Random(7).shuffle(events)
    failed_then_done = fake.generations[0]
    deliver(tracker, fake.failure(failed_then_done.task, fake.start))
    for event in events:
        deliver(tracker, event)

    ours = {experiment_id}
    expected = dump_tables(reference.engine, ours)
    actual = dump_tables(engine, ours)
    failures = actual.pop("failures")
    assert [(row["task_id"], row["resolved"]) for row in failures] == [(failed_then_done.task.task_id, True)]
    expected.pop("failures")
    expected.pop("combo_mappings")
    actual.pop("combo_mappings")
    assert actual == expected

    combo_ids = [combo.combo_id for combo in fake.planned.combos]
    with Session(engine) as session:
        mappings = session.exec(select(ComboMapping).where(col(ComboMapping.combo_id).in_(combo_ids))).all()
    assert sorted((m.combo_id, m.concept_id) for m in mappings) == sorted(
        (combo.combo_id, concept) for combo in fake.planned.combos for concept in combo.concept_ids
    )
    for stage, count in (("generation", 4), ("evaluation", 8)):
        keys = csv_keys(tmp_path / "pg", stage)
        assert len(keys) == len(set(keys)) == count
    progress = tracker.progress(experiment_id)
    assert progress.finished and progress.stages["generation"].failed == 0
    assert progress.finished_at == reference.progress(experiment_id).finished_at
    engine.dispose()


RESULT_FILES = (
    "5_parsing/parsed_scores.csv",
    "6_summary/final_results.csv",
    "6_summary/generation_scores_pivot.csv",
    "6_summary/evaluator_agreement.csv",
)


def record_with_a_rerun_and_a_failure(tracker: Tracker, fake: FakeExperiment) -> None:
    for event in fake.events():
        deliver(tracker, event)
    rerun_and_rescore(tracker, fake)
    deliver(tracker, fake.failure(fake.evaluations[3].task.model_copy(update={"task_id": "never_done"}), fake.start))


def test_rebuild_check_and_results_on_postgres_agree_with_sqlite(postgres_url: str, tmp_path: Path) -> None:
    fake = FakeExperiment(f"pg-{uuid.uuid4().hex[:8]}")
    sqlite_dir, pg_dir = tmp_path / "sqlite", tmp_path / "pg"
    reference = Tracker(sqlite_dir, make_engine(f"sqlite:///{sqlite_dir / 'daydream.db'}"))
    engine = make_engine(postgres_url)
    for tracker in (reference, Tracker(pg_dir, engine)):
        record_with_a_rerun_and_a_failure(tracker, fake)
    ours = {fake.experiment_id}
    recorded = dump_tables(engine, ours)
    lines = {stage: sorted_lines(pg_dir, stage) for stage in ("generation", "evaluation")}

    def daydream(data_dir: Path, *args: str, database_url: str | None = None):
        env = {"COLUMNS": "200", "DAYDREAM_DATABASE_URL": database_url}
        return CliRunner().invoke(app, [*args, "--data", str(data_dir)], env=env)

    drop_db(engine)
    for path in (pg_dir / "7_cross_experiment").glob("*.csv"):
        path.unlink()
    rebuilt = daydream(pg_dir, "rebuild", database_url=postgres_url)
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "5 generations, 8 evaluations, 9 scores, 1 failures" in rebuilt.output  # counts files: a rerun is one more
    assert dump_tables(engine) == recorded == dump_tables(reference.engine, ours)
    assert {stage: sorted_lines(pg_dir, stage) for stage in ("generation", "evaluation")} == lines

    checked = daydream(pg_dir, "check", database_url=postgres_url)
    assert checked.exit_code == 0 and "clean" in checked.output, checked.output
    csv_path = pg_dir / "7_cross_experiment" / "evaluation_results.csv"
    csv_path.write_text("\n".join(csv_path.read_text().splitlines()[:-1]) + "\n")
    stale = daydream(pg_dir, "check", database_url=postgres_url)
    assert stale.exit_code == 1 and "stale_csv_line" in stale.output

    for data_dir, database_url in ((pg_dir, postgres_url), (sqlite_dir, None)):
        outcome = daydream(data_dir, "results", fake.experiment_id, database_url=database_url)
        assert outcome.exit_code == 0, outcome.output
    for name in RESULT_FILES:
        assert (pg_dir / name).read_text() == (sqlite_dir / name).read_text(), name
    assert "1.0" in (pg_dir / "5_parsing" / "parsed_scores.csv").read_text()
    engine.dispose()
    reference.engine.dispose()


def test_an_earlier_daydreams_database_on_postgres_is_migrated_and_keeps_its_rows(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = make_engine(postgres_url)
    drop_db(engine)
    tables, lines = record_with_earlier_daydream(tmp_path / "pg", engine)
    assert_upgraded_in_place(tmp_path / "pg", engine, tables, lines)
