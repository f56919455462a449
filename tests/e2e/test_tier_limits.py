"""The tier as the unit of control, on a real nats-server with two replicas each of the generator
and the evaluator, against the fake LLM over real HTTP, counted where a provider counts: at the
endpoint. One cap across writing, judging and replicas; one rate; one cooldown after a 429; a
refused key stops the tier; a killed slot holder's slot comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from daydream.stack import EmbeddedStack
from shared.events import TierSpec
from shared.settings import Settings
from shared.tiers import TierState
from shared.topology import all_tier_states
from tests.e2e.conftest import nats_and_fake_llm
from tests.e2e.harness import declare_tiers, evaluation_task, generation_task, publish_tasks, read_events

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FREE = TierSpec(tier="free", max_concurrent=1, requests_per_minute=None)
PAID = TierSpec(tier="paid", max_concurrent=5, requests_per_minute=None)
METERED = TierSpec(tier="metered", max_concurrent=3, requests_per_minute=30)
TIERS = [FREE, PAID, METERED]
SETTINGS = Settings(ack_wait_s=5)
REPLICAS = ("generator", "generator-2", "evaluator", "evaluator-2")


@pytest.fixture(scope="module")
def tiers_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with nats_and_fake_llm(tmp_path_factory.mktemp("data"), latency_s=0.2) as stack:
        stack.declare_topology(SETTINGS, TIERS)
        start_replicas(stack)
        yield stack


async def declare(stack: EmbeddedStack, tiers: list[TierSpec]) -> None:
    await declare_tiers(stack.nats_url, SETTINGS, tiers)


def start_replicas(stack: EmbeddedStack, names: tuple[str, ...] = REPLICAS) -> None:
    for name in names:
        stack.start_service(name, wait=False, module=f"services.{name.removesuffix('-2')}")
    for name in names:
        stack.wait_healthy(name)


def both_stages(experiment_id: str, count: int, model: str, tier: TierSpec) -> list:
    return ([generation_task(experiment_id, i, model, tier) for i in range(count)]
            + [evaluation_task(experiment_id, i, model, tier) for i in range(count)])


async def finished(stack: EmbeddedStack, experiment_id: str, count: int, timeout_s: float = 120.0) -> list[dict]:
    """Every done or failed event of the experiment, once `count` of them are in."""
    def enough(events: list[dict]) -> bool:
        return len(mine(events)) >= count

    def mine(events: list[dict]) -> list[dict]:
        return [e for e in events if (e.get("task") or {}).get("experiment_id", e.get("experiment_id")) == experiment_id]

    return mine(await read_events(stack.nats_url, "dd.>", enough, timeout_s=timeout_s))


def model_stats(stack: EmbeddedStack, model: str) -> dict:
    return stack.fake_llm_stats()["models"][model]


@pytest.mark.parametrize(("tier", "per_stage"), [(FREE, 6), (PAID, 20)])
async def test_the_cap_holds_for_the_tier_across_both_stages_and_all_replicas(
        tiers_stack: EmbeddedStack, tier: TierSpec, per_stage: int) -> None:
    await declare(tiers_stack, TIERS)
    model = f"fake/{tier.tier}-both"
    await publish_tasks(tiers_stack.nats_url, both_stages(f"cap-{tier.tier}", per_stage, model, tier))
    events = await finished(tiers_stack, f"cap-{tier.tier}", 2 * per_stage)

    seen = model_stats(tiers_stack, model)
    print(f"tier {tier.tier} cap {tier.max_concurrent}: peak in flight at the endpoint {seen['peak_in_flight']}, "
          f"calls {seen['calls']}")
    assert seen["peak_in_flight"] == tier.max_concurrent
    assert all(e["call"]["text"] for e in events)
    judged = [e["call"]["started_at"] for e in events if e["task"]["stage"] == "evaluation"]
    written = [e["call"]["started_at"] for e in events if e["task"]["stage"] == "generation"]
    assert sorted(judged)[len(judged) // 2] < sorted(written)[len(written) // 2], "a freed slot goes to judging first"


async def test_a_cap_edited_between_two_experiments_takes_effect(tiers_stack: EmbeddedStack) -> None:
    narrower = PAID.model_copy(update={"max_concurrent": 2})
    await declare(tiers_stack, [FREE, narrower, METERED])
    model = "fake/paid-narrowed"
    await publish_tasks(tiers_stack.nats_url, both_stages("cap-edited", 10, model, narrower))
    await finished(tiers_stack, "cap-edited", 20)
    assert model_stats(tiers_stack, model)["peak_in_flight"] == 2
    await declare(tiers_stack, TIERS)


async def test_no_60_s_window_holds_more_calls_than_the_tiers_rate(tiers_stack: EmbeddedStack) -> None:
    """rpm 30, cap 3, four workers: 33 calls, so a window starting at the first call would see 31
    if the rate were per process or per stage."""
    await declare(tiers_stack, TIERS)
    model = "fake/metered-both"
    tasks = both_stages("rpm", 17, model, METERED)[:33]
    await publish_tasks(tiers_stack.nats_url, tasks)
    await finished(tiers_stack, "rpm", 33, timeout_s=150)
    starts = sorted(model_stats(tiers_stack, model)["started"])
    busiest = max(sum(1 for s in starts if first <= s < first + 60.0) for first in starts)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    print(f"rpm 30: busiest 60 s window {busiest} calls; {len(starts)} calls over {starts[-1] - starts[0]:.1f} s")
    assert len(starts) == 33 and busiest <= 30
    assert max(gaps) < 10, "the rate is spread over the minute, not a burst and then a stall"


async def test_a_429_cools_the_whole_tier_down_while_other_tiers_go_on(tiers_stack: EmbeddedStack) -> None:
    """The 429 comes in the middle of a busy tier (five calls in flight, more waiting); its
    Retry-After is 2 s. Calls already at the endpoint finish; none may start until it has passed."""
    await declare(tiers_stack, TIERS)
    refused, model = "fake/paid-cool+fault=429@2:1", "fake/paid-cool"
    busy = both_stages("cool", 15, model, PAID)
    busy += [generation_task("cool", 100 + i, "fake/free-during-cooldown", FREE) for i in range(20)]
    await publish_tasks(tiers_stack.nats_url, busy)
    while model_stats_or_empty(tiers_stack, model).get("calls", 0) < 8:
        await asyncio.sleep(0.05)
    await publish_tasks(tiers_stack.nats_url, [evaluation_task("cool", 0, refused, PAID).model_copy(
        update={"task_id": "eval-refused"})])
    await finished(tiers_stack, "cool", len(busy) + 1)

    refused_at = model_stats(tiers_stack, refused)["finished"][0]
    paid_starts = model_stats(tiers_stack, model)["started"] + model_stats(tiers_stack, refused)["started"][1:]
    on_their_way = 0.1
    """A call a worker had started before the 429 reached it may arrive that much later."""
    during = [round(s - refused_at, 3) for s in paid_starts if refused_at + on_their_way < s < refused_at + 2.0]
    resumed = min(s for s in paid_starts if s > refused_at + on_their_way) - refused_at
    free_during = [s for s in model_stats(tiers_stack, "fake/free-during-cooldown")["started"]
                   if refused_at < s < refused_at + 2.0]
    print(f"429 (Retry-After 2 s) sent at t0: paid calls started in (t0, t0+2s): {during}; first one after "
          f"{resumed:.2f} s; free calls meanwhile: {len(free_during)}")
    assert during == []
    assert free_during, "another tier is not held back by this tier's cooldown"
    paid = next(state for state in await tier_states_now(tiers_stack) if state.tier == "paid")
    print(f"paid cap after the 429: {paid.effective_cap} of {paid.max_concurrent}")
    assert paid.effective_cap < paid.max_concurrent, "a 429 halves the tier's cap"


async def test_a_refused_key_stops_the_tier_after_one_call(tiers_stack: EmbeddedStack) -> None:
    await declare(tiers_stack, TIERS)
    model = "fake/free-bad-key+fault=401"
    await publish_tasks(tiers_stack.nats_url, both_stages("bad-key", 5, model, FREE))
    failures = [e for e in await finished(tiers_stack, "bad-key", 10) if "reason" in e]
    assert len(failures) == 10 and {f["reason"] for f in failures} == {"auth"}
    assert model_stats(tiers_stack, model)["calls"] == 1
    stopped = [f for f in failures if "tier free is stopped" in f["message"]]
    assert len(stopped) == 9 and all("401" in f["message"] or "key" in f["message"] for f in stopped)
    await declare(tiers_stack, TIERS)


async def test_a_killed_slot_holders_slot_comes_back_within_15_s(tiers_stack: EmbeddedStack, tmp_path: Path) -> None:
    await declare(tiers_stack, TIERS)
    await publish_tasks(tiers_stack.nats_url, [generation_task("holder", 0, "fake/free-stuck+fault=slow@60", FREE)])
    deadline = time.monotonic() + 30
    while model_stats_or_empty(tiers_stack, "fake/free-stuck+fault=slow@60").get("in_flight") != 1:
        assert time.monotonic() < deadline, "the slow call never started"
        await asyncio.sleep(0.1)
    for name in ("generator", "generator-2"):
        tiers_stack.kill_service(name)
    killed_at = time.time()
    await publish_tasks(tiers_stack.nats_url, [evaluation_task("after-kill", i, "fake/free-after-kill", FREE)
                                               for i in range(2)])
    await finished(tiers_stack, "after-kill", 2, timeout_s=60)
    back_after = model_stats(tiers_stack, "fake/free-after-kill")["started"][0] - killed_at
    print(f"slot of a kill -9'd holder back after {back_after:.1f} s")
    assert back_after <= 15
    start_replicas(tiers_stack, ("generator", "generator-2"))


async def tier_states_now(stack: EmbeddedStack) -> list[TierState]:
    nc = await nats.connect(stack.nats_url)
    try:
        return await all_tier_states(nc.jetstream())
    finally:
        await nc.close()


def model_stats_or_empty(stack: EmbeddedStack, model: str) -> dict:
    return stack.fake_llm_stats()["models"].get(model, {})
