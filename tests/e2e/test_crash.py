"""Crash anywhere: a 300-call experiment survives `kill -9` of every service and of nats-server at
random moments, and ends with exactly the results of a run that had no fault — no row missing,
none doubled, every artifact on disk, and no paid call made twice beyond what a dead worker held.

The moments come from a seeded RNG; the seed is printed, and DAYDREAM_CHAOS_SEED replays it."""

from __future__ import annotations

import os
import random
import time
from functools import partial
from pathlib import Path

import pytest

from daydream.stack import EmbeddedStack
from tests.e2e.chaos import (
    JUDGES,
    STRESS_MODELS,
    WRITERS,
    Outcome,
    cross_experiment_keys,
    outcome,
    prepare,
    publish,
    running_stack,
    tracker_of,
    wait_finished,
    wait_until,
    write_raw,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
EXPERIMENT = "crash"
GENERATIONS, EVALUATIONS = 60, 240
TIER_CAP = 5
KILL_WINDOWS = (
    ("generator", (5, 40)),
    ("evaluator", (80, 130)),
    ("parser", (140, 170)),
    ("tracker", (170, 200)),
    ("nats-server", (200, 240)),
)
"""Which process dies once the fake has seen a random number of calls from each window (of 300)."""
MODELS_OF = {"generator": {m.model for m in WRITERS}, "evaluator": {m.model for m in JUDGES}}
MODELS_OF["nats-server"] = MODELS_OF["generator"] | MODELS_OF["evaluator"]
WORKERS_HIT = {"generator": 1, "evaluator": 1, "nats-server": 2}
"""How many capped worker consumers lose their unacked tasks with each process."""


def run_experiment(data: Path, chaos: random.Random | None) -> tuple[Outcome, dict, list[dict]]:
    write_raw(data, STRESS_MODELS, tier_cap=TIER_CAP)
    spec = prepare(data, EXPERIMENT)
    kills: list[dict] = []
    with running_stack(data, spec) as stack:
        publish(stack, spec)
        if chaos:
            kills = kill_everything_once(stack, chaos)
        tracker = tracker_of(data)
        wait_finished(tracker, EXPERIMENT, timeout_s=120)
        stats = stack.fake_llm_stats()
    return outcome(tracker, EXPERIMENT), stats, kills


def kill_everything_once(stack: EmbeddedStack, chaos: random.Random) -> list[dict]:
    """kill -9 and restart each process in turn, not waiting for one to be back before the next
    dies; returns what each kill interrupted."""
    time.sleep(chaos.uniform(0.0, 0.3))
    kills = [kill_and_restart(stack, "combiner")]
    for name, (low, high) in KILL_WINDOWS:
        at_call = chaos.randint(low, high)
        wait_until(partial(calls_reached, stack, at_call), timeout_s=60, what=f"call {at_call}")
        kills.append(kill_and_restart(stack, name))
    for name in stack.processes:
        stack.wait_healthy(name)
    return kills


def calls_reached(stack: EmbeddedStack, count: int) -> bool:
    return stack.fake_llm_stats()["total_calls"] >= count


def kill_and_restart(stack: EmbeddedStack, name: str) -> dict:
    """Returns the calls the kill may cost twice. A service's are those started by its death (read
    before the kill, the snapshot missed the calls started in between). nats-server's last until
    every service is connected again: until then acks, heartbeats and response-store writes fail."""
    before = stack.fake_llm_stats()
    if name == "nats-server":
        stack.nats.kill()
        stack.nats.start()
        for service in stack.processes:
            stack.wait_healthy(service)
    else:
        stack.kill_service(name)
    at_risk = stack.fake_llm_stats()
    if name != "nats-server":
        stack.start_service(name, wait=False)
    in_flight = sum(m["in_flight"] for model, m in before["models"].items() if model in MODELS_OF.get(name, ()))
    started = {h for h, r in at_risk["requests"].items() if r["started"]}
    print(f"killed {name} at call {before['total_calls']} with {in_flight} call(s) in flight")
    return {"name": name, "in_flight": in_flight, "started": started}


@pytest.fixture(scope="module")
def fault_free(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    result, stats, _ = run_experiment(tmp_path_factory.mktemp("fault-free"), chaos=None)
    assert all(r["completed"] == 1 for r in stats["requests"].values())
    return result


def test_kill_9_of_every_service_and_of_nats_changes_no_result(fault_free: Outcome, tmp_path: Path) -> None:
    seed = int(os.environ.get("DAYDREAM_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (replay with DAYDREAM_CHAOS_SEED={seed})")
    data = tmp_path / "data"
    result, stats, kills = run_experiment(data, random.Random(seed))

    assert len(fault_free.generations) == GENERATIONS and len(fault_free.scores) == EVALUATIONS
    assert result.failures == {}
    assert result.missing_files == []
    assert result.generations == fault_free.generations
    assert result.scores == fault_free.scores
    for stage, count in (("generation", GENERATIONS), ("evaluation", EVALUATIONS)):
        keys = cross_experiment_keys(data, stage)
        assert len(keys) == len(set(keys)) == count, stage
    assert len(list((data / "3_generation" / "generation_responses").glob("*.txt"))) == GENERATIONS

    repeated = {h: r["completed"] - 1 for h, r in stats["requests"].items() if r["completed"] > 1}
    print(f"request bodies completed more than once: {len(repeated)}; in flight at the kills: "
          f"{ {k['name']: k['in_flight'] for k in kills} }")
    started_before_a_kill = set().union(*(k["started"] for k in kills if k["name"] in WORKERS_HIT))
    assert set(repeated) <= started_before_a_kill, "a call first made after every kill was paid twice"
    held_by_dead_workers = sum(WORKERS_HIT.get(k["name"], 0) * TIER_CAP for k in kills)
    assert sum(repeated.values()) <= held_by_dead_workers
    assert all(r["completed"] >= 1 for r in stats["requests"].values() if r["started"])
