"""Do tier caps turn into the throughput they promise? A free tier capped at 1 call in flight and a
paid tier capped at 5 (no rpm limit), all tasks published at once, against a fake LLM with a fixed
latency per call.

    uv run python bench/tier_fidelity.py [--latency S] [--free N] [--paid N]
    uv run python bench/tier_fidelity.py --latency 0.1 --free 20 --paid 40   # issue 3's Done-when

Figures per tier: achieved calls/s (first call started -> last call finished, from the call
records) divided by the ideal cap / latency; the peak number in flight the fake server saw for the
tier's model (it must never exceed the cap); and where the missing time goes — the HTTP overhead
on top of the fake's latency, and the slot gap: from one call's end to the start of the call that
took its slot (store, publish, ack, next pull, decode, store lookup).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import nats
from common import fake_stats, machine, moment, read_events, report, running_stack

from shared.events import GENERATION_DONE, CallParameters, GenerationTask, ModelSpec, TierSpec
from shared.service import publish_from_client
from shared.topology import EVENTS_STREAM

FREE = TierSpec(tier="free", max_concurrent=1)
PAID = TierSpec(tier="paid", max_concurrent=5)


def generation_task(tier: TierSpec, index: int) -> GenerationTask:
    """A generation with no evaluation plan: only the generator (and the fake) work. Distinct
    prompts, so no stored response is reused."""
    model = ModelSpec(id=f"{tier.tier}_model", model=f"fake/{tier.tier}-model", provider="fake", tier=tier.tier)
    task_id = f"{tier.tier}-{index:05d}"
    return GenerationTask(
        experiment_id="tier-fidelity", task_id=task_id, tier=tier, model=model,
        parameters=CallParameters(), prompt=f"Write about idea number {index} of tier {tier.tier}.\n- Data Flywheel",
        combo_id=f"combo{index}", generation_template_id="essay", generation_model_id=model.id,
        generation_task_id=task_id,
    )


async def publish_tasks(nats_url: str, tasks: list[GenerationTask]) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await asyncio.gather(*(publish_from_client(js, task) for task in tasks))
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


def slot_gaps_s(calls: list[dict], cap: int) -> list[float]:
    """The k-th call to finish frees the slot that the (cap + k)-th call to start takes."""
    starts = sorted(moment(c["started_at"]) for c in calls)
    finishes = sorted(moment(c["finished_at"]) for c in calls)
    return [start - finish for start, finish in zip(starts[cap:], finishes, strict=False)]


def tier_figures(tier: TierSpec, events: list[dict], peak_in_flight: int, latency_s: float) -> dict:
    calls = [event["call"] for event in events if event["task"]["tier"]["tier"] == tier.tier]
    span = max(moment(c["finished_at"]) for c in calls) - min(moment(c["started_at"]) for c in calls)
    achieved = len(calls) / span
    ideal = tier.max_concurrent / latency_s
    gaps = slot_gaps_s(calls, tier.max_concurrent)
    return {
        "cap": tier.max_concurrent,
        "calls": len(calls),
        "span_s": round(span, 3),
        "achieved_calls_per_s": round(achieved, 2),
        "ideal_calls_per_s": round(ideal, 2),
        "fidelity": round(achieved / ideal, 3),
        "peak_in_flight": peak_in_flight,
        "mean_http_overhead_ms": round(1000 * (statistics.fmean(c["latency_s"] for c in calls) - latency_s), 1),
        "median_slot_gap_ms": round(1000 * statistics.median(gaps), 1) if gaps else None,
        "mean_slot_gap_ms": round(1000 * statistics.fmean(gaps), 1) if gaps else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake takes per call (default 0.2)")
    parser.add_argument("--free", type=int, default=200, help="tasks on the free tier, cap 1 (default 200)")
    parser.add_argument("--paid", type=int, default=200, help="tasks on the paid tier, cap 5 (default 200)")
    args = parser.parse_args()
    counts = {FREE.tier: args.free, PAID.tier: args.paid}
    tiers = [tier for tier in (FREE, PAID) if counts[tier.tier]]
    tasks = [generation_task(tier, index) for tier in tiers for index in range(counts[tier.tier])]

    host = machine()
    with running_stack("tiers", tiers, latency_s=args.latency, services=("generator",)) as stack:
        asyncio.run(publish_tasks(stack.nats_url, tasks))
        slowest = max(counts[tier.tier] * args.latency / tier.max_concurrent for tier in tiers)
        asyncio.run(wait_for_done(stack.nats_url, len(tasks), timeout_s=3 * slowest + 60))
        stats = fake_stats(stack)
        events = read_events(stack.nats_url, GENERATION_DONE)

    peaks = {name: model["peak_in_flight"] for name, model in stats["models"].items()}
    result = {
        "benchmark": "tier_fidelity",
        "machine": host,
        "latency_s": args.latency,
        "fake_llm_calls": stats["total_calls"],
        "tiers": {
            tier.tier: tier_figures(tier, events, peaks.get(f"fake/{tier.tier}-model", 0), args.latency)
            for tier in tiers
        },
    }
    rows = []
    for name, figures in result["tiers"].items():
        rows += [
            (f"{name}: cap / calls", f"{figures['cap']} / {figures['calls']}"),
            (f"{name}: achieved / ideal calls/s",
             f"{figures['achieved_calls_per_s']} / {figures['ideal_calls_per_s']}"),
            (f"{name}: fidelity", f"{figures['fidelity']:.1%}"),
            (f"{name}: peak in flight (fake server)", str(figures["peak_in_flight"])),
            (f"{name}: HTTP overhead per call (ms)", str(figures["mean_http_overhead_ms"])),
            (f"{name}: slot gap median / mean (ms)",
             f"{figures['median_slot_gap_ms']} / {figures['mean_slot_gap_ms']}"),
        ]
    report("tier_fidelity", result, rows)


if __name__ == "__main__":
    main()
