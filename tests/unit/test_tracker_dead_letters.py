"""A task JetStream gave up on becomes a recorded, counted, rerunnable failure, and its message
leaves the tasks stream. (The advisory's route and a malformed advisory are exercised on a real
nats-server in tests/e2e/test_pipeline.py.)"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY
from sqlmodel import Session, select

from services.tracker.db import make_engine
from services.tracker.dead_letters import MaxDeliveriesAdvisory, record_dead_letter
from services.tracker.recorder import Tracker
from services.tracker.tables import Failure
from tests.fakes import FakeExperiment

SEQUENCE = 41


class FakeTasks:
    """The tasks stream holding some messages by sequence."""

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = messages

    async def payload(self, stream: str, sequence: int) -> bytes | None:
        return self.messages.get(sequence)

    async def delete(self, stream: str, sequence: int) -> None:
        del self.messages[sequence]


def advisory(sequence: int = SEQUENCE) -> MaxDeliveriesAdvisory:
    return MaxDeliveriesAdvisory.model_validate_json(
        '{"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": "DD_TASKS", '
        f'"consumer": "generator-writers", "stream_seq": {sequence}, "deliveries": 6}}'
    )


def failures_counted(stage: str, reason: str) -> float:
    return REGISTRY.get_sample_value("daydream_tasks_failed_total", {"stage": stage, "reason": reason}) or 0.0


def tracker_in(tmp_path: Path) -> Tracker:
    return Tracker(tmp_path / "data", make_engine(f"sqlite:///{tmp_path / 'data' / 'daydream.db'}"))


async def test_a_dead_lettered_task_is_recorded_counted_and_deleted(tmp_path: Path) -> None:
    tracker = tracker_in(tmp_path)
    task = FakeExperiment().generations[0].task
    tasks = FakeTasks({SEQUENCE: task.model_dump_json().encode()})
    counted = failures_counted("generation", "max_deliveries")

    await record_dead_letter(advisory(), tasks, tracker.record_failure)

    with Session(tracker.engine) as session:
        failure = session.exec(select(Failure)).one()
    assert (failure.experiment_id, failure.task_id, failure.stage, failure.reason, failure.attempts) == (
        "exp1", task.task_id, "generation", "max_deliveries", 6,
    )  # fmt: skip
    assert "DD_TASKS/generator-writers seq 41" in failure.message
    assert tracker.failed_tasks("exp1") == [task]
    assert failures_counted("generation", "max_deliveries") == counted + 1
    assert tasks.messages == {}


async def test_a_dead_letter_whose_task_is_unreadable_or_gone_is_still_recorded(tmp_path: Path) -> None:
    tracker = tracker_in(tmp_path)
    tasks = FakeTasks({SEQUENCE: b"{not a task"})
    counted = failures_counted("unknown", "max_deliveries")

    await record_dead_letter(advisory(), tasks, tracker.record_failure)
    await record_dead_letter(advisory(SEQUENCE + 1), tasks, tracker.record_failure)

    with Session(tracker.engine) as session:
        failures = session.exec(select(Failure).order_by(Failure.task_id)).all()
    assert [(f.experiment_id, f.task_id, f.stage) for f in failures] == [
        ("unknown", "dead-letter-41", "unknown"),
        ("unknown", "dead-letter-42", "unknown"),
    ]
    assert "undecodable message redelivered 6 times" in failures[0].message
    assert failures_counted("unknown", "max_deliveries") == counted + 2
    assert tasks.messages == {}


async def test_an_event_a_reader_gave_up_on_is_recorded_against_its_task_and_kept_for_other_readers(
    tmp_path: Path,
) -> None:
    tracker = tracker_in(tmp_path)
    done = FakeExperiment().generations[0]
    events = FakeTasks({SEQUENCE: done.model_dump_json().encode()})
    given_up = advisory().model_copy(update={"stream": "DD_EVENTS", "consumer": "evaluator-fanout"})

    await record_dead_letter(given_up, events, tracker.record_failure)

    with Session(tracker.engine) as session:
        failure = session.exec(select(Failure)).one()
    assert (failure.task_id, failure.reason) == (done.task.task_id, "max_deliveries")
    assert "DD_EVENTS/evaluator-fanout seq 41" in failure.message
    assert SEQUENCE in events.messages
