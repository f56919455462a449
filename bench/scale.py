"""Does the stack hold up as the tables grow? 4,000 generations x 4 evaluations (20,000 LLM calls)
against the fake LLM at zero latency, through all five services.

    uv run python bench/scale.py [--small] [--calls N] [--timeout-s S]

Figures: resident memory (VmRSS) of every process at the start, the middle and the end; the
database and cross-experiment CSV sizes at the end; seconds per 1,000 calls recorded by the
tracker, first thousand against last (does it slow down as the tables grow?). A run that does not
finish within --timeout-s reports how far it got.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import (
    THROUGHPUT_TIER,
    cpu_snapshot,
    fake_stats,
    machine,
    planned_calls,
    publish_experiment,
    report,
    rss_snapshot,
    running_stack,
    spec_for_generations,
    stack_pids,
    tracker_for,
    wait_finished,
)

from services.tracker.progress import Progress

BUCKET = 1000


def recorded_calls(progress: Progress) -> int:
    """LLM calls whose result the tracker has written (generations and judge answers)."""
    return progress.stages["generation"].done + progress.stages["evaluation"].done


def size_mib(*paths: Path) -> float:
    return round(sum(path.stat().st_size for path in paths if path.exists()) / 2**20, 2)


def tree_size_mib(root: Path) -> tuple[float, int]:
    files = [path for path in root.rglob("*") if path.is_file()]
    return size_mib(*files), len(files)


def seconds_per_bucket(series: list[tuple[float, int]], total: int) -> list[float]:
    """Wall seconds the tracker took to record each successive 1,000 calls (from the poll series)."""
    crossings = []
    for threshold in range(BUCKET, total + 1, BUCKET):
        moment = next((t for t, done in series if done >= threshold), None)
        if moment is None:
            break
        crossings.append(moment)
    starts = [series[0][0], *crossings[:-1]]
    return [round(end - start, 2) for start, end in zip(starts, crossings, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="2,500 calls")
    parser.add_argument("--calls", type=int, default=None, help="LLM calls in all (default 20,000; 5 per generation)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="stop waiting after this long")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    calls_wanted = args.calls or (2500 if args.small else 20000)
    experiment_id = f"scale-{calls_wanted}"
    spec = spec_for_generations(experiment_id, max(1, calls_wanted // 5), THROUGHPUT_TIER)
    generations, evaluations = planned_calls(spec)
    calls = generations + evaluations

    host = machine()
    with running_stack("scale", [THROUGHPUT_TIER], latency_s=0.0, keep=args.keep) as stack:
        pids = stack_pids(stack)
        tracker = tracker_for(stack)
        rss = {"start": rss_snapshot(pids)}
        cpu_before = cpu_snapshot(pids)
        series: list[tuple[float, int]] = []

        def sample(progress: Progress) -> None:
            series.append((time.time(), recorded_calls(progress)))
            if "middle" not in rss and series[-1][1] >= calls // 2:
                rss["middle"] = rss_snapshot(pids)

        published_at = publish_experiment(stack, spec)
        series.append((published_at, 0))
        finished = wait_finished(tracker, experiment_id, stack, timeout_s=args.timeout_s, poll_s=1.0, on_poll=sample)
        ended_at = time.time()
        rss["end"] = rss_snapshot(pids)
        cpu_after = cpu_snapshot(pids)
        reached = recorded_calls(tracker.progress(experiment_id))
        llm_calls = fake_stats(stack)["total_calls"]
        data = stack.data
        database = size_mib(*data.glob("daydream.db*"))
        csvs = {path.name: size_mib(path) for path in sorted((data / "7_cross_experiment").glob("*.csv"))}
        artifacts = {name: tree_size_mib(data / name) for name in ("3_generation", "4_evaluation")}

    buckets = seconds_per_bucket(series, reached)
    wall = ended_at - published_at
    result = {
        "benchmark": "scale",
        "machine": host,
        "llm_calls_planned": calls,
        "generations": generations,
        "evaluations": evaluations,
        "finished": finished,
        "calls_recorded": reached,
        "fake_llm_calls": llm_calls,
        "wall_s": round(wall, 1),
        "calls_per_s": round(reached / wall, 1),
        "rss_mib": rss,
        "database_mib": database,
        "csv_mib": csvs,
        "artifacts_mib_and_files": artifacts,
        "seconds_per_1000_calls": buckets,
        "first_1000_s": buckets[0] if buckets else None,
        "last_1000_s": buckets[-1] if buckets else None,
        "cpu_s": {name: round(cpu_after[name] - cpu_before[name], 1) for name in pids},
    }
    rows = [
        ("LLM calls recorded / planned", f"{reached} / {calls}" + ("" if finished else " (timed out)")),
        ("wall time", f"{wall:.0f} s ({reached / wall:.1f} calls/s)"),
        ("s per 1,000 calls: first / last", f"{result['first_1000_s']} / {result['last_1000_s']}"),
        ("database", f"{database} MiB"),
        *((f"CSV {name}", f"{value} MiB") for name, value in csvs.items()),
        *((f"artifacts {name}", f"{mib} MiB in {files} files") for name, (mib, files) in artifacts.items()),
        *((f"RSS MiB {name}: start / middle / end",
           f"{rss['start'][name]} / {rss.get('middle', {}).get(name, '-')} / {rss['end'][name]}") for name in pids),
    ]
    report("scale", result, rows)


if __name__ == "__main__":
    main()
