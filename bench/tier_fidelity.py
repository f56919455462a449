"""Do tier caps turn into the throughput they promise? A free tier capped at 1 call in flight and a
paid tier capped at 5 (no rpm limit), 200 generation calls each at the same time, against a fake
LLM that takes 0.2 s per call.

    uv run python bench/tier_fidelity.py [--small]

Figures per tier: achieved calls/s (first call started -> last call finished, from the call
records) divided by the ideal cap / latency, and the peak number in flight the fake server saw
for the tier's model (it must never exceed the cap).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import nats
from common import fake_stats, machine, moment, read_events, report, running_stack

from shared.events import GENERATION_DONE, CallParameters, ModelSpec, TaskCreated, TierSpec, message_id, task_subject
from shared.topology import EVENTS_STREAM

LATENCY_S = 0.2
TIERS = [TierSpec(tier="free", max_concurrent=1), TierSpec(tier="paid", max_concurrent=5)]


def generation_task(tier: TierSpec, index: int) -> TaskCreated:
    """A generation with no evaluation plan: only the generator (and the fake) work. Distinct
    prompts, so no stored response is reused."""
    model = ModelSpec(id=f"{tier.tier}_model", model=f"fake/{tier.tier}-model", provider="fake", tier=tier.tier)
    task_id = f"{tier.tier}-{index:05d}"
    return TaskCreated(
        stage="generation", experiment_id="tier-fidelity", task_id=task_id, tier=tier, model=model,
        parameters=CallParameters(), prompt=f"Write about idea number {index} of tier {tier.tier}.\n- Data Flywheel",
        combo_id=f"combo{index}", generation_template_id="essay", generation_model_id=model.id,
        generation_task_id=task_id,
    )


async def publish_tasks(nats_url: str, tasks: list[TaskCreated]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await asyncio.gather(*(
            js.publish(task_subject(task.stage, task.tier.tier), task.model_dump_json().encode(),
                       headers={"Nats-Msg-Id": message_id("gen", task.experiment_id, task.task_id)})
            for task in tasks
        ))
    finally:
        await nc.close()


async def wait_for_done(nats_url: str, expected: int, timeout_s: float) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while (await js.stream_info(EVENTS_STREAM)).state.messages < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {expected} GenerationDone after {timeout_s}s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def tier_figures(tier: TierSpec, events: list[dict], peak_in_flight: int) -> dict:
    calls = [event["call"] for event in events if event["task"]["tier"]["tier"] == tier.tier]
    span = max(moment(c["finished_at"]) for c in calls) - min(moment(c["started_at"]) for c in calls)
    achieved = len(calls) / span
    ideal = tier.max_concurrent / LATENCY_S
    return {
        "cap": tier.max_concurrent,
        "calls": len(calls),
        "span_s": round(span, 2),
        "achieved_calls_per_s": round(achieved, 2),
        "ideal_calls_per_s": ideal,
        "fidelity": round(achieved / ideal, 3),
        "peak_in_flight": peak_in_flight,
        "mean_call_latency_s": round(sum(c["latency_s"] for c in calls) / len(calls), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="20 calls per tier")
    parser.add_argument("--calls", type=int, default=None, help="calls per tier (default 200)")
    args = parser.parse_args()
    per_tier = args.calls or (20 if args.small else 200)
    tasks = [generation_task(tier, index) for tier in TIERS for index in range(per_tier)]

    host = machine()
    with running_stack("tiers", TIERS, latency_s=LATENCY_S, services=("generator",)) as stack:
        asyncio.run(publish_tasks(stack.nats_url, tasks))
        slowest = per_tier * LATENCY_S / min(t.max_concurrent for t in TIERS)
        asyncio.run(wait_for_done(stack.nats_url, len(tasks), timeout_s=3 * slowest + 60))
        stats = fake_stats(stack)
        events = read_events(stack.nats_url, GENERATION_DONE)

    peaks = {name: model["peak_in_flight"] for name, model in stats["models"].items()}
    result = {
        "benchmark": "tier_fidelity",
        "machine": host,
        "latency_s": LATENCY_S,
        "fake_llm_calls": stats["total_calls"],
        "tiers": {tier.tier: tier_figures(tier, events, peaks.get(f"fake/{tier.tier}-model", 0)) for tier in TIERS},
    }
    rows = []
    for name, figures in result["tiers"].items():
        rows += [
            (f"{name}: cap / calls", f"{figures['cap']} / {figures['calls']}"),
            (f"{name}: achieved / ideal calls/s",
             f"{figures['achieved_calls_per_s']} / {figures['ideal_calls_per_s']}"),
            (f"{name}: fidelity", f"{figures['fidelity']:.1%}"),
            (f"{name}: peak in flight (fake server)", str(figures["peak_in_flight"])),
        ]
    report("tier_fidelity", result, rows)


if __name__ == "__main__":
    main()
