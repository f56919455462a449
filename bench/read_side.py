"""The read side at size: `daydream status` and `daydream results` on one experiment of N LLM calls
(N/5 generations, each judged 4 times), the rows written straight into SQLite with Core bulk
inserts (recording them through the tracker would take as long as the run itself). Each command
runs as the user runs it, a fresh `daydream` process, timed from start to exit (its ~1 s import
start-up included) and, in process, the query and summary work alone.

    uv run python bench/read_side.py [--calls 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import machine, report
from sqlalchemy import Engine, insert

from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.summaries import read_results, render_results_table, write_results
from services.tracker.tables import EvaluationResult, Experiment, GenerationResult, LlmCall

EXPERIMENT = "readside"
JUDGES = 4
CHUNK = 5_000


def fill(data: Path, calls: int) -> None:
    """One finished experiment of `calls` LLM calls, with every column the tracker writes."""
    engine = make_engine(f"sqlite:///{data / 'daydream.db'}")
    Tracker(data, engine)  # the schema
    generations = calls // (JUDGES + 1)
    chaos, t0 = random.Random(7), datetime(2026, 12, 1, tzinfo=UTC)
    common = dict(experiment_id=EXPERIMENT, tier="bench", replicate=0, prompt_tokens=100, completion_tokens=50,
                  cost_usd=0.001, finish_reason="stop", truncated=False, cached=False)
    gen_rows, eval_rows, call_rows = [], [], []
    for g in range(generations):
        task_id, at = f"gen{g:07d}", t0 + timedelta(milliseconds=g)
        ids = dict(combo_id=f"combo{g % 20}", generation_template_id=f"tpl{g % 5}", generation_model_id=f"gm{g % 5}")
        paths = dict(prompt_path=f"p/{task_id}.txt", response_path=f"r/{task_id}.txt", call_path=f"r/{task_id}.json")
        gen_rows.append(dict(common, task_id=task_id, **ids, **paths, generation_model=f"vendor/gm{g % 5}",
                             status="done", started_at=at, finished_at=at, prompt_chars=100, response_chars=900,
                             revision=1, csv_appended=True))
        call_rows.append(dict(common, task_id=task_id, stage="generation", model_id=ids["generation_model_id"],
                              model="m", latency_s=0.1, attempt=1, request_hash=task_id, started_at=at, finished_at=at))
        for j in range(JUDGES):
            judge_id, score = f"{task_id}_j{j}", float(chaos.randint(0, 9))
            eval_rows.append(dict(common, task_id=judge_id, generation_task_id=task_id, **ids, **paths,
                                  generation_model=f"vendor/gm{g % 5}", evaluation_template_id=f"judge{j % 2}",
                                  evaluation_model_id=f"em{j // 2}", evaluation_model=f"vendor/em{j // 2}",
                                  max_score=9, status="scored", has_response=True, has_score=True, score=score,
                                  parser="last_number", candidates=[score], score_path=f"r/{judge_id}.score.json",
                                  started_at=at, finished_at=at, scored_at=at, prompt_chars=100, response_chars=20,
                                  revision=1, csv_appended=True))
            call_rows.append(dict(common, task_id=judge_id, stage="evaluation", model_id=f"em{j // 2}", model="m",
                                  latency_s=0.1, attempt=1, request_hash=judge_id, started_at=at, finished_at=at))
    with engine.begin() as connection:
        connection.execute(insert(Experiment).values(
            experiment_id=EXPERIMENT, name=EXPERIMENT, generation_tasks_planned=generations,
            evaluation_tasks_planned=generations * JUDGES, requested_at=t0, planned_at=t0, started_at=t0,
            finished_at=t0 + timedelta(milliseconds=generations),
            tasks_by_tier={"generation": {"bench": generations}, "evaluation": {"bench": generations * JUDGES}}))
        for table, rows in ((GenerationResult, gen_rows), (EvaluationResult, eval_rows), (LlmCall, call_rows)):
            for start in range(0, len(rows), CHUNK):
                connection.execute(insert(table), rows[start:start + CHUNK])
    engine.dispose()


def cli_seconds(data: Path, *command: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "daydream", *command, "--data", str(data)], check=True,
                   stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - started, 2)


def write_and_render(engine: Engine, data: Path) -> None:
    """What `daydream results` does: the tables written, the top generations rendered."""
    results = read_results(engine, EXPERIMENT)
    write_results(results, data)
    render_results_table(engine, results)


def in_process_seconds(data: Path) -> dict[str, float]:
    """Wall and CPU seconds of the queries and summaries alone; on a shared machine the CPU figure
    is the one to compare."""
    engine = make_engine(f"sqlite:///{data / 'daydream.db'}")
    tracker = Tracker(data, engine)
    figures = {}
    for name, work in (("status", lambda: tracker.progress(EXPERIMENT)),
                       ("results", lambda: write_and_render(engine, data))):
        started, cpu_started = time.perf_counter(), time.process_time()
        work()
        figures[f"{name}_s"] = round(time.perf_counter() - started, 3)
        figures[f"{name}_cpu_s"] = round(time.process_time() - cpu_started, 3)
    engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    host = machine()
    data = Path(tempfile.mkdtemp(prefix="daydream-bench-readside-"))
    try:
        fill(data, args.calls)
        rounds = [{"status_cli_s": cli_seconds(data, "status", EXPERIMENT),
                   "results_cli_s": cli_seconds(data, "results", EXPERIMENT),
                   "help_cli_s": cli_seconds(data, "status", "--help"),
                   **in_process_seconds(data)} for _ in range(args.rounds)]
    finally:
        shutil.rmtree(data, ignore_errors=True)
    result = {"benchmark": "read_side", "machine": host, "llm_calls": args.calls, "rounds": rounds}
    report("read_side", result, [
        ("LLM calls in the experiment", f"{args.calls:,}"),
        *((f"round {i + 1}: status / results (CLI, s)", f"{r['status_cli_s']} / {r['results_cli_s']}")
          for i, r in enumerate(rounds)),
        *((f"round {i + 1}: status / results (in process, s)", f"{r['status_s']} / {r['results_s']}")
          for i, r in enumerate(rounds)),
        *((f"round {i + 1}: status / results (in process, CPU s)", f"{r['status_cpu_s']} / {r['results_cpu_s']}")
          for i, r in enumerate(rounds)),
    ])


if __name__ == "__main__":
    main()
