"""Events recorded in batches (one transaction each, as the tracker's batch loop does) leave the
same rows, files and CSV lines as one event at a time, and a batch that fails half-way leaves
nothing behind that its redelivery would double."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from services.tracker import rows as rows_module
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from tests.fakes import FakeExperiment, csv_keys, csv_lines, deliver, dump_tables


def make_tracker(data_dir: Path) -> Tracker:
    return Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_duplicated_batches_give_the_state_of_one_event_at_a_time(tmp_path: Path, seed: int) -> None:
    one_by_one, batched = make_tracker(tmp_path / "one"), make_tracker(tmp_path / "batched")
    events = FakeExperiment().events()
    for event in events:
        deliver(one_by_one, event)
    twice = events * 2
    chaos = random.Random(seed)
    chaos.shuffle(twice)
    while twice:
        size = chaos.randint(1, 12)
        batched.record_batch(twice[:size])
        twice = twice[size:]

    assert dump_tables(batched.engine) == dump_tables(one_by_one.engine)
    for stage, count in (("generation", 4), ("evaluation", 8)):
        keys = csv_keys(tmp_path / "batched", stage)
        assert len(keys) == len(set(keys)) == count
    assert batched.progress("exp1").finished


def test_a_batch_that_fails_half_way_is_rolled_back_and_its_redelivery_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference, tracker = make_tracker(tmp_path / "reference"), make_tracker(tmp_path / "crashed")
    events = FakeExperiment().events()
    for event in events:
        deliver(reference, event)

    real_store_score = rows_module.Rows.store_score
    calls = []

    def store_score_then_fail(self, event, score_path):
        real_store_score(self, event, score_path)
        calls.append(event)
        if len(calls) == 3:
            raise OSError("disk gone")

    monkeypatch.setattr(rows_module.Rows, "store_score", store_score_then_fail)
    with pytest.raises(OSError):
        tracker.record_batch(events)
    assert all(not rows for rows in dump_tables(tracker.engine).values())
    assert csv_lines(tmp_path / "crashed", "evaluation") == []

    monkeypatch.setattr(rows_module.Rows, "store_score", real_store_score)
    tracker.record_batch(events)
    assert dump_tables(tracker.engine) == dump_tables(reference.engine)
    assert csv_keys(tmp_path / "crashed", "evaluation") == csv_keys(tmp_path / "reference", "evaluation")
