"""Chaos on a cluster: three clustered nats-servers (every stream and bucket R3), two processes of
every worker, two trackers (active/standby) writing to PostgreSQL, a 900-call experiment. During
the run kill -9 the node leading the tasks stream (and start it again), one evaluator and the
active tracker. Nothing may be lost or recorded twice, no call may be paid twice unless it was in
flight at a kill, and the experiment must finish on its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from daydream.nats_process import NatsCluster
from daydream.publish_cmd import publish_experiment
from daydream.stack import EmbeddedStack
from services.tracker.db import make_engine
from services.tracker.lease import LEASE_BUCKET, LEASE_KEY
from services.tracker.recorder import Tracker
from services.tracker.tables import EvaluationResult, GenerationResult
from shared.nats_cluster import server_urls
from shared.topology import TASKS_STREAM
from tests.e2e.chaos import (
    ACK_WAIT_S,
    Model,
    cross_experiment_keys,
    outcome,
    prepare,
    short_ack_settings,
    wait_until,
    write_raw,
)
from tests.e2e.cluster import start_replica, stream_leader
from tests.e2e.conftest import FAST_RETRIES

pytestmark = pytest.mark.e2e

EXPERIMENT = "cluster-chaos"
WRITERS = [Model(f"writer_{n}", f"fake/writer-{n}", True, False) for n in "abcde"]
JUDGES = [Model(f"judge_{n}", f"fake/judge-{n}", False, True) for n in "abcd"]
GENERATIONS = 20 * len(WRITERS)
EVALUATIONS = GENERATIONS * 2 * len(JUDGES)
"""20 combos x 5 writers = 100 generations, x 2 templates x 4 judges = 800 evaluations: 900 calls."""
REPLICATED = ("combiner", "generator", "evaluator", "parser", "tracker")
LEASE_TTL_S = 4.0


async def active_tracker_pid(url: str) -> int:
    nc = await nats.connect(server_urls(url))
    try:
        holder = ((await (await nc.jetstream().key_value(LEASE_BUCKET)).get(LEASE_KEY)).value or b"").decode()
        return int(holder.split("-")[-2])
    finally:
        await nc.close()


def in_flight(stack: EmbeddedStack) -> int:
    return stack.fake_llm_stats()["in_flight"]


def at_call(stack: EmbeddedStack, call: int) -> None:
    wait_until(lambda: stack.fake_llm_stats()["total_calls"] >= call, timeout_s=60, what=f"call {call}")


def restart_exited_trackers(stack: EmbeddedStack) -> None:
    """What a supervisor (compose's restart policy) does: a tracker that lost its lease while its
    node was down exits by design, and comes back as a standby."""
    for name, replica in (("tracker", None), ("tracker-2", 2)):
        if stack.processes[name].poll() is None:
            continue
        if replica is None:
            stack.start_service("tracker", wait=False)
        else:
            start_replica(stack, "tracker", replica, wait=False)


def test_a_cluster_loses_nothing_when_a_node_a_worker_and_the_tracker_die(tmp_path: Path, postgres_url: str) -> None:
    data = tmp_path / "data"
    write_raw(data, WRITERS + JUDGES, tier_cap=8)
    spec = prepare(data, EXPERIMENT)
    env = {**FAST_RETRIES, "DAYDREAM_ACK_WAIT_S": str(ACK_WAIT_S),
           "DAYDREAM_DATABASE_URL": postgres_url, "DAYDREAM_TRACKER_LEASE_TTL_S": str(LEASE_TTL_S)}
    stack = EmbeddedStack(data, llm_base_url=None, fake_llm_latency=0.05, extra_env=env, cluster_size=3)
    cluster = stack.nats
    assert isinstance(cluster, NatsCluster)
    kills: dict[str, int] = {}
    started = time.monotonic()
    try:
        stack.start_nats()
        settings = short_ack_settings(cluster.url, stream_replicas=3)
        stack.declare_topology(settings, spec.tiers)
        stack.start_fake_llm()
        stack.start_services(REPLICATED)
        replicas = [start_replica(stack, name, 2, wait=False) for name in REPLICATED]
        for name in replicas[:-1]:  # the second tracker is a standby: healthy only once it leads
            stack.wait_healthy(name)
        asyncio.run(publish_experiment(settings, spec))

        at_call(stack, 150)
        node = int(asyncio.run(stream_leader(cluster.url, TASKS_STREAM)).removeprefix("n"))
        kills["nats-server"] = in_flight(stack)
        cluster.kill(node)
        at_call(stack, 300)
        cluster.restart(node)
        restart_exited_trackers(stack)

        at_call(stack, 400)
        kills["evaluator"] = in_flight(stack)
        stack.kill_service("evaluator")

        at_call(stack, 550)
        restart_exited_trackers(stack)
        active = asyncio.run(active_tracker_pid(cluster.url))
        kills["tracker"] = in_flight(stack)
        killed_tracker = next(name for name, process in stack.processes.items() if process.pid == active)
        stack.kill_service(killed_tracker)

        tracker = Tracker(data, make_engine(postgres_url))
        deadline = time.monotonic() + 120
        while not (progress := tracker.progress(EXPERIMENT)).finished:
            assert time.monotonic() < deadline, f"experiment {EXPERIMENT} did not finish within 120 s"
            restart_exited_trackers(stack)
            time.sleep(0.5)
        elapsed_s = time.monotonic() - started
        stats = stack.fake_llm_stats()
    finally:
        stack.stop()

    result = outcome(tracker, EXPERIMENT)
    with Session(tracker.engine) as session:
        rows = {table.__name__: session.exec(select(func.count()).select_from(table)).one()
                for table in (GenerationResult, EvaluationResult)}
    paid_twice = sum(r["completed"] - 1 for r in stats["requests"].values() if r["completed"] > 1)
    print(f"cluster chaos: {GENERATIONS + EVALUATIONS} planned calls, {stats['total_calls']} made, kills with calls in "
          f"flight {kills}, paid twice {paid_twice} (bound {sum(kills.values())}), rows {rows}, "
          f"finished in {elapsed_s:.0f} s")
    assert progress.finished
    assert result.failures == {}
    assert result.missing_files == []
    assert (len(result.generations), len(result.scores)) == (GENERATIONS, EVALUATIONS)
    assert rows == {"GenerationResult": GENERATIONS, "EvaluationResult": EVALUATIONS}
    for stage, count in (("generation", GENERATIONS), ("evaluation", EVALUATIONS)):
        keys = cross_experiment_keys(data, stage)
        assert len(keys) == len(set(keys)) == count, stage
    assert paid_twice <= sum(kills.values())
