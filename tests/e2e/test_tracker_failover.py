"""Two trackers, one active: kill -9 the active one and the standby takes over within the lease's
TTL, then records what was published meanwhile — once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
from sqlmodel import Session, select

from daydream.stack import EmbeddedStack
from services.tracker.tables import Failure
from shared.events import TaskFailed
from shared.nats_cluster import server_urls
from shared.service import publish_to_jetstream
from tests.e2e.chaos import tracker_of, wait_until
from tests.e2e.cluster import start_replica

LEASE_TTL_S = 3.0


async def publish_failures(nats_url: str, failures: list[TaskFailed]) -> None:
    nc = await nats.connect(server_urls(nats_url))
    try:
        js = nc.jetstream()
        for failure in failures:
            await publish_to_jetstream(js, failure)
    finally:
        await nc.close()


def failure(index: int) -> TaskFailed:
    return TaskFailed(stage="generation", experiment_id="failover", task_id=f"task{index:03d}",
                      reason="server_error", message="provider down", attempts=6)


def recorded(data: Path) -> list[str]:
    with Session(tracker_of(data).engine) as session:
        return sorted(row.task_id for row in session.exec(select(Failure).where(Failure.experiment_id == "failover")))


def test_the_standby_tracker_takes_over_when_the_active_one_is_killed(tmp_path: Path) -> None:
    stack = EmbeddedStack(tmp_path / "data", llm_base_url=None,
                          extra_env={"DAYDREAM_TRACKER_LEASE_TTL_S": str(LEASE_TTL_S)})
    try:
        stack.start_nats()
        stack.start_service("tracker")
        standby = start_replica(stack, "tracker", 2, wait=False)
        asyncio.run(publish_failures(stack.nats_url, [failure(i) for i in range(10)]))
        wait_until(lambda: len(recorded(stack.data)) == 10, timeout_s=30, what="the active tracker to record")
        wait_until(lambda: "is standby" in (stack.logs / f"{standby}.log").read_text(), timeout_s=30,
                   what="the second tracker to wait as a standby")

        stack.kill_service("tracker")
        killed_at = time.monotonic()
        asyncio.run(publish_failures(stack.nats_url, [failure(i) for i in range(10, 20)]))
        stack.wait_healthy(standby)
        takeover_s = time.monotonic() - killed_at
        wait_until(lambda: len(recorded(stack.data)) == 20, timeout_s=30, what="the standby to record")

        print(f"tracker takeover after kill -9: {takeover_s:.1f} s (lease TTL {LEASE_TTL_S} s)")
        assert recorded(stack.data) == [f"task{i:03d}" for i in range(20)]
    finally:
        stack.stop()
