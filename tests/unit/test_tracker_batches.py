"""Events recorded in batches (one transaction each, as the tracker's batch loop does) leave the
same rows, files and CSV lines as one event at a time, and a batch that fails half-way leaves
nothing behind that its redelivery would double."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest
from sqlmodel import Session, select

from services.tracker import rows as rows_module
from services.tracker.batches import BatchConsumer
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.tables import GenerationResult
from shared.events import GenerationDone
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


class FakeMessage:
    """What the batch writer uses of a pulled JetStream message; records how it was settled and
    whether its event's row was already committed when it was acked."""

    def __init__(self, event, tracker: Tracker) -> None:
        self.event, self.tracker = event, tracker
        self.data, self.subject, self.metadata = event.model_dump_json().encode(), event.subject_name(), None
        self.settled: list[str] = []
        self.row_committed_at_ack: bool | None = None

    async def ack(self) -> None:
        with Session(self.tracker.engine) as session:
            found = session.exec(select(GenerationResult).where(
                GenerationResult.task_id == self.event.task.task_id)).first()
        self.row_committed_at_ack = found is not None
        self.settled.append("ack")

    async def nak(self) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")


async def write_until_settled(tracker: Tracker, record_batch, messages: list[FakeMessage]) -> None:
    consumer = BatchConsumer(broker=None, js=None, record_batch=record_batch, writing=asyncio.Lock())
    for message in messages:
        consumer.arrived.put_nowait((GenerationDone, message))
    writer = asyncio.create_task(consumer.write())
    while not all(message.settled for message in messages):
        await asyncio.sleep(0.01)
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer


async def test_a_batch_is_acked_only_once_committed_and_a_bad_event_is_handed_back_alone(tmp_path: Path) -> None:
    tracker = make_tracker(tmp_path / "data")
    fake = FakeExperiment()
    unrecordable = fake.generations[1].task.task_id

    def record_batch(events) -> None:
        if any(event.task.task_id == unrecordable for event in events):
            raise OSError("this one cannot be written")
        tracker.record_batch(events)

    messages = [FakeMessage(event, tracker) for event in fake.generations]
    await write_until_settled(tracker, record_batch, messages)

    assert [message.settled for message in messages] == [["ack"], ["nak"], ["ack"], ["ack"]]
    assert [message.row_committed_at_ack for message in messages] == [True, None, True, True]
