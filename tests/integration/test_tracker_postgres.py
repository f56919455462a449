"""The tracker on a real PostgreSQL: duplicated, shuffled delivery lands exactly as in-order
delivery does on SQLite (rows, timestamps, JSON columns, CSV lines)."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest
from sqlmodel import Session, select

from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.tables import ComboMapping
from tests.unit.test_tracker_recorder import FakeExperiment, csv_keys, deliver, dump_tables

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
        mappings = session.exec(select(ComboMapping).where(ComboMapping.combo_id.in_(combo_ids))).all()
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
