"""Poison messages: a payload that is not JSON, or JSON of the wrong shape, on any subject a
service reads is terminated at once and recorded as one failure — never redelivered, never
silently dropped — and the services go on working."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from sqlmodel import Session, select

from services.tracker.tables import Failure
from shared.events import (
    EVALUATION_DONE,
    EVALUATION_SCORED,
    EXPERIMENT_PLANNED,
    EXPERIMENT_REQUESTED,
    GENERATION_DONE,
    TASK_FAILED,
    task_subject,
)
from shared.topology import EVENTS_STREAM, TASKS_STREAM
from tests.e2e.chaos import Model, prepare, publish, running_stack, tracker_of, wait_finished, wait_until, write_raw

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
CONSUMED_SUBJECTS = (
    EXPERIMENT_REQUESTED,
    task_subject("generation", "paid"),
    task_subject("evaluation", "paid"),
    GENERATION_DONE,
    EVALUATION_DONE,
    EXPERIMENT_PLANNED,
    EVALUATION_SCORED,
    TASK_FAILED,
)
POISONS = {
    "not-json": b"{this is not json",
    "wrong-shape": b'{"experiment_id": 42, "surprise": true}',
    "unsafe-id": (b'{"stage": "generation", "experiment_id": "../../escaped", "task_id": "../../escaped", '
                  b'"reason": "auth", "message": "m", "attempts": 1}'),
}
"""The last one is a well-formed `TaskFailed` but for its ids: written as it is, the tracker would
put files outside the data directory."""


async def publish_poison(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for subject in CONSUMED_SUBJECTS:
        for name, payload in POISONS.items():
            await js.publish(subject, payload, headers={"Nats-Msg-Id": f"poison-{name}-{subject}"})
    await nc.close()


async def consumers_settled(nats_url: str) -> list[str]:
    """Consumers that still hold, owe or redelivered a message."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    unsettled = []
    for stream in (TASKS_STREAM, EVENTS_STREAM):
        for info in await js.consumers_info(stream):
            if info.num_ack_pending or info.num_redelivered or info.num_pending:
                unsettled.append(f"{info.name}: pending {info.num_pending}, ack pending {info.num_ack_pending}, "
                                 f"redelivered {info.num_redelivered}")
    await nc.close()
    return unsettled


def poison_failures(tracker) -> list[Failure]:
    with Session(tracker.engine) as session:
        return list(session.exec(select(Failure).where(Failure.reason == "poison_message")).all())


def test_poison_on_every_consumed_subject_is_recorded_once_and_work_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_raw(data, [Model("writer", "fake/writer", True, False), Model("judge", "fake/judge", False, True)],
              concepts=4, k_max=2, evaluation_templates=1)
    spec = prepare(data, "after-poison")
    expected = len(CONSUMED_SUBJECTS) * len(POISONS)
    with running_stack(data, spec, latency_s=0.01) as stack:
        tracker = tracker_of(data)
        asyncio.run(publish_poison(stack.nats_url))
        wait_until(lambda: len(poison_failures(tracker)) >= expected, timeout_s=30, what="poison failures")
        wait_until(lambda: not asyncio.run(consumers_settled(stack.nats_url)), timeout_s=15,
                   what="every consumer to settle")

        failures = poison_failures(tracker)
        assert len(failures) == expected
        for subject in CONSUMED_SUBJECTS:
            about = [f for f in failures if f"malformed message on {subject} " in f.message]
            assert len(about) == len(POISONS), subject
        assert any("Invalid JSON" in f.message for f in failures)
        assert any("Invalid JSON" not in f.message for f in failures)
        assert all(f.experiment_id == "unknown" and f.attempts == 1 for f in failures)
        assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()

        publish(stack, spec)
        progress = wait_finished(tracker, spec.experiment_id, timeout_s=60)
        assert {s: (p.done, p.failed) for s, p in progress.stages.items()} == {
            "generation": (6, 0), "evaluation": (6, 0), "scoring": (6, 0)}
        assert asyncio.run(consumers_settled(stack.nats_url)) == []
        assert all(process.poll() is None for process in stack.processes.values())
