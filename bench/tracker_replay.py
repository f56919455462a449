"""The tracker alone, in process, no broker: replay a whole experiment's events into a fresh data
directory and time every 1,000 LLM calls recorded. It isolates the service that `overhead.py`
finds hottest, so a change to it can be judged in seconds.

    uv run python bench/tracker_replay.py [--generations 500] [--batch 64] [--cprofile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from common import machine, planned_calls, report, spec_for_generations

from services.combiner.planning import plan_experiment
from services.parser.evaluation import score_evaluation
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from shared.events import CallRecord, EvaluationDone, ExperimentRequested, GenerationDone, TaskCreated, TierSpec, utcnow
from shared.tasks import evaluation_tasks

TIER = TierSpec(tier="bench", max_concurrent=16)


def call_for(task: TaskCreated, text: str) -> CallRecord:
    started = utcnow()
    return CallRecord(text=text, finish_reason="stop", prompt_tokens=len(task.prompt) // 4, completion_tokens=50,
                      request_hash=f"hash-{task.task_id}", started_at=started,
                      finished_at=started + timedelta(milliseconds=5))


def replay(tracker: Tracker, spec, bucket: int, batch: int) -> list[float]:
    """Events in the order the live stack produces them: each generation, then its judges' answers
    and scores, recorded `batch` events per transaction as the tracker's batch loop does under
    load (1: one event per transaction). Returns wall seconds per `bucket` LLM calls recorded."""
    tracker.record_requested(ExperimentRequested(spec=spec))
    planned, tasks = plan_experiment(spec)
    tracker.record_planned(planned)
    times, calls, started, pending = [], 0, time.perf_counter(), []

    def record(*events) -> None:
        pending.extend(events)
        if len(pending) >= batch:
            tracker.record_batch(pending)
            pending.clear()

    for task in tasks:
        generated = GenerationDone(task=task, call=call_for(task, f"An essay for {task.task_id}.\n" * 20))
        record(generated)
        calls += 1
        for judge in evaluation_tasks(task, generated.call.text, truncated=False):
            answered = EvaluationDone(task=judge, call=call_for(judge, f"Judging {judge.task_id}.\nSCORE: 6"))
            record(answered, score_evaluation(answered))
            calls += 1
            if calls % bucket == 0:
                now = time.perf_counter()
                times.append(round(now - started, 2))
                started = now
    tracker.record_batch(pending)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=500)
    parser.add_argument("--bucket", type=int, default=500, help="report seconds per this many calls")
    parser.add_argument("--batch", type=int, default=64, help="events per transaction (1: one per event)")
    parser.add_argument("--cprofile", action="store_true", help="print the top functions by cumulative time")
    args = parser.parse_args()
    spec = spec_for_generations("replay", args.generations, TIER)
    host = machine()
    data = Path(tempfile.mkdtemp(prefix="daydream-bench-replay-"))
    try:
        tracker = Tracker(data, make_engine(f"sqlite:///{data / 'daydream.db'}"))
        profiler = cProfile.Profile() if args.cprofile else None
        started, cpu_started = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        buckets = replay(tracker, spec, args.bucket, args.batch)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        finished = tracker.progress("replay").finished
    finally:
        shutil.rmtree(data, ignore_errors=True)
    calls = sum(planned_calls(spec))
    result = {"benchmark": "tracker_replay", "machine": host, "llm_calls": calls, "batch": args.batch, "finished": finished,
              "wall_s": round(wall, 2), "ms_per_call": round(1000 * wall / calls, 2),
              "cpu_ms_per_call": round(1000 * cpu / calls, 2),
              f"seconds_per_{args.bucket}_calls": buckets}
    report("tracker_replay", result, [
        ("LLM calls recorded", str(calls)),
        ("ms per call", f"{1000 * wall / calls:.2f}"),
        ("CPU ms per call (user + sys)", f"{1000 * cpu / calls:.2f}"),
        (f"s per {args.bucket} calls: first / last", f"{buckets[0]} / {buckets[-1]}" if buckets else "-"),
    ])
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)


if __name__ == "__main__":
    main()
