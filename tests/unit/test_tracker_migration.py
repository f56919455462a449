"""Data written by an earlier DayDream is upgraded in place, every row and CSV line kept: a
database without the columns added since (revision, csv_appended, generation_model) is migrated at
start, and a cross-experiment CSV with an earlier header is rewritten under today's."""

from __future__ import annotations

import csv
from pathlib import Path

from sqlalchemy import Engine, text
from sqlmodel import Session, select

from services.tracker.artifacts import read_csv_rows
from services.tracker.check import check as find_problems
from services.tracker.csv_log import EARLIER_CSV_COLUMNS
from services.tracker.db import SchemaMigration, make_engine
from services.tracker.recorder import Tracker
from tests.fakes import FakeExperiment, deliver, dump_tables

ADDED_COLUMNS = {
    "generation_results": ("revision", "csv_appended"),
    "evaluation_results": ("revision", "csv_appended", "generation_model"),
}
ADDED_INDEXES = ("ix_generation_results_csv_pending", "ix_evaluation_results_csv_pending")


def record_with_earlier_daydream(data_dir: Path, engine: Engine) -> tuple[dict, dict]:
    """Records a fake experiment, then takes the database and the CSVs back to an earlier
    DayDream's layout; returns the tables and the CSV lines as today's tracker wrote them."""
    fake = FakeExperiment()
    tracker = Tracker(data_dir, engine)
    for event in fake.events():
        deliver(tracker, event)
    tables = dump_tables(engine)
    lines = {stage: read_csv_rows(tracker.layout.cross_experiment_csv(stage)) for stage in EARLIER_CSV_COLUMNS}
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE schema_migrations"))
        for index in ADDED_INDEXES:
            connection.execute(text(f"DROP INDEX IF EXISTS {index}"))
        for table, columns in ADDED_COLUMNS.items():
            for column in columns:
                connection.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
    engine.dispose()
    for stage, columns in EARLIER_CSV_COLUMNS.items():
        path = tracker.layout.cross_experiment_csv(stage)
        with path.open("w", encoding="utf-8", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(lines[stage])
    return tables, lines


def assert_upgraded_in_place(data_dir: Path, engine: Engine, tables: dict, lines: dict) -> None:
    tracker = Tracker(data_dir, engine)
    tracker.reconcile_csvs()
    assert dump_tables(engine) == tables
    for stage, expected in lines.items():
        assert read_csv_rows(tracker.layout.cross_experiment_csv(stage)) == expected
    assert find_problems(data_dir, engine) == []
    with Session(engine) as session:
        assert session.exec(select(SchemaMigration.version)).all() == [1, 2]


def test_an_earlier_daydreams_database_and_csvs_are_upgraded_and_keep_their_rows(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data_dir / 'daydream.db'}")
    tables, lines = record_with_earlier_daydream(data_dir, engine)
    assert_upgraded_in_place(data_dir, engine, tables, lines)


def test_an_upgraded_tracker_starting_again_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data_dir / 'daydream.db'}")
    tables, lines = record_with_earlier_daydream(data_dir, engine)
    assert_upgraded_in_place(data_dir, engine, tables, lines)
    csv_bytes = (data_dir / "7_cross_experiment" / "evaluation_results.csv").read_bytes()
    assert_upgraded_in_place(data_dir, engine, tables, lines)
    assert (data_dir / "7_cross_experiment" / "evaluation_results.csv").read_bytes() == csv_bytes
