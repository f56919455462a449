"""What the machinery costs when the LLM costs nothing: 500 generations x 4 evaluations (2,500 LLM
calls) through all five services and the tracker's writes, against the fake LLM at zero latency.

    uv run python bench/overhead.py [--small] [--profile tracker]

Figures: LLM calls per second end to end (publish -> the tracker has recorded every score),
latency per evaluation from its generation task's creation to its score (and from the publish),
CPU seconds per call of every process. `--profile NAME` samples that service with py-spy while
the experiment runs and folds the stacks into where-the-time-goes lists.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import (
    RESULTS,
    THROUGHPUT_TIER,
    cpu_snapshot,
    driver_cpu_seconds,
    fake_stats,
    machine,
    moment,
    nats_message_counts,
    percentiles,
    planned_calls,
    publish_experiment,
    read_events,
    report,
    running_stack,
    spec_for_generations,
    stack_pids,
    tracker_for,
    wait_finished,
)
from profiling import start_py_spy, stop_py_spy, summarise

from daydream.stack import SERVICES
from shared.events import EVALUATION_SCORED, GENERATION_DONE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="50 generations (250 calls) for a quick sanity run")
    parser.add_argument("--generations", type=int, default=None, help="override the generation count")
    parser.add_argument("--profile", choices=SERVICES, default=None, help="sample this service with py-spy")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    generations = args.generations or (50 if args.small else 500)
    experiment_id = f"overhead-{generations}"
    spec = spec_for_generations(experiment_id, generations, THROUGHPUT_TIER)
    generations, evaluations = planned_calls(spec)
    calls = generations + evaluations

    host = machine()
    with running_stack("overhead", [THROUGHPUT_TIER], latency_s=0.0, keep=args.keep) as stack:
        pids = stack_pids(stack)
        tracker = tracker_for(stack)
        cpu_before, driver_before = cpu_snapshot(pids), driver_cpu_seconds()
        messages_before = nats_message_counts(stack)
        profiler = None
        if args.profile:
            raw = RESULTS / f"profile-{args.profile}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
            RESULTS.mkdir(parents=True, exist_ok=True)
            profiler = start_py_spy(pids[args.profile], raw, args.profile_seconds)
        published_at = publish_experiment(stack, spec)
        finished = wait_finished(tracker, experiment_id, stack, timeout_s=1800, poll_s=0.25)
        recorded_at = time.time()
        cpu_after, driver_after = cpu_snapshot(pids), driver_cpu_seconds()
        messages_after = nats_message_counts(stack)
        if profiler:
            stop_py_spy(profiler)
        fake = fake_stats(stack)
        generated = read_events(stack.nats_url, GENERATION_DONE)
        scored = read_events(stack.nats_url, EVALUATION_SCORED)

    created = {event["task"]["task_id"]: moment(event["task"]["emitted_at"]) for event in generated}
    wall = recorded_at - published_at
    last_score = max((moment(e["emitted_at"]) for e in scored), default=published_at)
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "machine": host,
        "generations": generations,
        "evaluations": evaluations,
        "llm_calls": calls,
        "fake_llm_calls": fake.get("total_calls"),
        "tier": THROUGHPUT_TIER.model_dump(),
        "finished": finished,
        "wall_s": round(wall, 2),
        "calls_per_s": round(calls / wall, 1),
        "last_score_after_publish_s": round(last_score - published_at, 2),
        "tracker_lag_after_last_score_s": round(recorded_at - last_score, 2),
        "latency_generation_task_to_score": percentiles(
            [moment(e["emitted_at"]) - created[e["task"]["generation_task_id"]] for e in scored
             if e["task"]["generation_task_id"] in created]),
        "latency_publish_to_score": percentiles([moment(e["emitted_at"]) - published_at for e in scored]),
        "latency_generation_task_to_done": percentiles(
            [moment(e["emitted_at"]) - moment(e["task"]["emitted_at"]) for e in generated]),
        "cpu_s": {name: round(cpu_after[name] - cpu_before[name], 2) for name in pids},
        "cpu_ms_per_call": {name: round(1000 * (cpu_after[name] - cpu_before[name]) / calls, 2) for name in pids},
        "driver_cpu_s": round(driver_after - driver_before, 2),
        "nats_messages_per_call": {direction: round((messages_after[direction] - messages_before[direction]) / calls, 1)
                                   for direction in messages_before},
    }
    if args.profile:
        result["profile"] = {"service": args.profile, "raw": str(raw.relative_to(RESULTS.parent.parent)),
                             **summarise(raw)}
    rows = [
        ("LLM calls", f"{calls} ({generations} generations x {evaluations // generations} evaluations)"),
        ("wall time, publish -> all recorded", f"{wall:.1f} s"),
        ("LLM calls / s end to end", f"{calls / wall:.1f}"),
        ("tracker lag after the last score", f"{recorded_at - last_score:.1f} s"),
        ("generation task -> score p50 / p95",
         f"{result['latency_generation_task_to_score'].get('p50_s')} / "
         f"{result['latency_generation_task_to_score'].get('p95_s')} s"),
        ("publish -> score p50 / p95",
         f"{result['latency_publish_to_score'].get('p50_s')} / {result['latency_publish_to_score'].get('p95_s')} s"),
        *((f"CPU ms per call: {name}", f"{value:.2f}") for name, value in result["cpu_ms_per_call"].items()),
        ("NATS messages per call, into / out of the server",
         "{in_msgs} / {out_msgs}".format(**result["nats_messages_per_call"])),
    ]
    if args.profile:
        rows += [(f"profile {args.profile} (self, by library)", ", ".join(f"{n} {p}%" for n, p in
                                                                       result["profile"]["self_pct_by_library"][:6]))]
    report("overhead", result, rows)


if __name__ == "__main__":
    main()
