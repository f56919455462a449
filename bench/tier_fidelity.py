"""Do tier caps turn into the throughput they promise, with writing and judging sharing one tier?
For each cap, one tier, N generation and N evaluation tasks on one model published at once, a
generator and an evaluator running, against the fake LLM with a fixed latency per call.

    uv run python bench/tier_fidelity.py [--latency S] [--caps 1,5,32] [--calls-per-slot N]

Figures per cap: achieved calls/s (first call started -> last call finished, from the call
records) divided by the ideal cap / latency; the peak in flight the fake server saw (it must equal
the cap); and what the slot mechanism itself costs per call: a loop that takes a tier slot and
gives it back on a real nats-server, wall time and CPU (client and nats-server) per cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import nats
from common import fake_stats, machine, moment, read_events, report, running_stack

from daydream.nats_process import NatsServer
from services.llm_worker.tier_control import TierControl
from shared.events import CallParameters, EvaluationTask, GenerationTask, ModelSpec, TierSpec
from shared.service import publish_to_jetstream
from shared.settings import Settings
from shared.topology import EVENTS_STREAM, ensure_topology


def tasks_for(tier: TierSpec, count: int) -> list[GenerationTask | EvaluationTask]:
    """Distinct prompts, so no stored response is reused; no evaluation plan, so nothing fans out."""
    model = ModelSpec(id="shared_model", model=f"fake/{tier.tier}-model", provider="fake", tier=tier.tier)
    tasks: list[GenerationTask | EvaluationTask] = []
    for index in range(count):
        common = dict(experiment_id="tier-fidelity", tier=tier, model=model, parameters=CallParameters(),
                      combo_id=f"combo{index}", generation_template_id="essay", generation_model_id=model.id,
                      generation_task_id=f"gen-{index:05d}")
        tasks.append(GenerationTask(task_id=f"gen-{index:05d}", prompt=f"Write about idea {index}.", **common))
        tasks.append(EvaluationTask(task_id=f"eval-{index:05d}", prompt=f"Rate essay {index} from 0 to 10.",
                                    evaluation_template_id="judge", evaluation_model_id=model.id,
                                    parser="in_last_line", max_score=10, **common))
    return tasks


async def publish_and_wait(nats_url: str, tasks: list, timeout_s: float) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await asyncio.gather(*(publish_to_jetstream(js, task) for task in tasks))
        deadline = time.monotonic() + timeout_s
        while (await js.stream_info(EVENTS_STREAM)).state.messages < len(tasks):
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {len(tasks)} done events after {timeout_s}s")
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def fidelity(cap: int, latency_s: float, calls_per_slot: int) -> dict:
    tier = TierSpec(tier="shared", max_concurrent=cap)
    tasks = tasks_for(tier, cap * calls_per_slot // 2)
    with running_stack(f"fidelity-{cap}", [tier], latency_s=latency_s, services=("generator", "evaluator")) as stack:
        asyncio.run(publish_and_wait(stack.nats_url, tasks, timeout_s=10 * calls_per_slot * latency_s + 60))
        peak = fake_stats(stack)["models"][f"fake/{tier.tier}-model"]["peak_in_flight"]
        calls = [e["call"] for subject in ("dd.generation.done", "dd.evaluation.done")
                 for e in read_events(stack.nats_url, subject)]
    span = max(moment(c["finished_at"]) for c in calls) - min(moment(c["started_at"]) for c in calls)
    achieved, ideal = len(calls) / span, cap / latency_s
    return {"cap": cap, "calls": len(calls), "span_s": round(span, 2), "achieved_calls_per_s": round(achieved, 1),
            "ideal_calls_per_s": round(ideal, 1), "fidelity": round(achieved / ideal, 3), "peak_in_flight": peak}


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def slot_cycles(nats_url: str, cycles: int) -> tuple[float, float]:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        settings = Settings()
        await ensure_topology(js, settings, [TierSpec(tier="shared", max_concurrent=4)])
        control = await TierControl.open(nc, js, settings)
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(cycles):
            async with control.slot("shared", "evaluation"):
                pass
        wall, client_cpu = time.perf_counter() - started, time.process_time() - cpu
        await control.close()
        return wall, client_cpu
    finally:
        await nc.close()


def mechanism_cost(cycles: int) -> dict:
    with NatsServer(store_dir=Path(tempfile.mkdtemp(prefix="daydream-bench-slots-"))) as server:
        assert server.process
        asyncio.run(slot_cycles(server.url, 50))
        before = cpu_s(server.process.pid)
        wall, client_cpu = asyncio.run(slot_cycles(server.url, cycles))
        server_cpu = cpu_s(server.process.pid) - before
    return {"cycles": cycles, "wall_ms_per_call": round(1000 * wall / cycles, 3),
            "client_cpu_ms_per_call": round(1000 * client_cpu / cycles, 3),
            "nats_server_cpu_ms_per_call": round(1000 * server_cpu / cycles, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the fake takes per call (default 0.2)")
    parser.add_argument("--caps", default="1,5,32", help="caps to measure, comma-separated (default 1,5,32)")
    parser.add_argument("--calls-per-slot", type=int, default=40,
                        help="calls per slot of the cap, half writing and half judging (default 40)")
    parser.add_argument("--cycles", type=int, default=2000, help="slot take/give-back cycles for the cost (default 2000)")
    args = parser.parse_args()
    host = machine()
    caps = [int(cap) for cap in args.caps.split(",")]
    result = {"benchmark": "tier_fidelity", "machine": host, "latency_s": args.latency,
              "both_stages_on_one_tier": {str(cap): fidelity(cap, args.latency, args.calls_per_slot) for cap in caps},
              "slot_mechanism": mechanism_cost(args.cycles)}
    rows = []
    for cap, figures in result["both_stages_on_one_tier"].items():
        rows += [(f"cap {cap}: calls, achieved / ideal calls/s",
                  f"{figures['calls']}, {figures['achieved_calls_per_s']} / {figures['ideal_calls_per_s']}"),
                 (f"cap {cap}: fidelity, peak in flight", f"{figures['fidelity']:.1%}, {figures['peak_in_flight']}")]
    cost = result["slot_mechanism"]
    rows.append(("slot take + give back per call: wall / client CPU / nats-server CPU (ms)",
                 f"{cost['wall_ms_per_call']} / {cost['client_cpu_ms_per_call']} / {cost['nats_server_cpu_ms_per_call']}"))
    result["median_fidelity"] = statistics.median(f["fidelity"] for f in result["both_stages_on_one_tier"].values())
    report("tier_fidelity", result, rows)


if __name__ == "__main__":
    main()
