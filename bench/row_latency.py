"""At low load, how soon an answer is visible where `daydream status` reads it: one call in flight
(a tier of cap 1), the fake LLM answering after `--latency` s, each generation judged once, and
the tables polled every 5 ms. The figure per answer is from its `GenerationDone` or
`EvaluationDone` (stamped by the worker as it publishes) to the first poll that sees its row (an
evaluation's with its answer) committed.

    uv run python bench/row_latency.py [--generations 40] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import time

from common import machine, moment, percentiles, publish_experiment, read_events, report, running_stack, synthetic_spec
from sqlalchemy import select, union_all

from services.tracker.db import engine_for
from services.tracker.tables import EvaluationResult, GenerationResult
from shared.events import EVALUATION_DONE, GENERATION_DONE, TierSpec

ONE_IN_FLIGHT = TierSpec(tier="single", max_concurrent=1, requests_per_minute=None)
POLL_S = 0.005


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.1, help="the fake LLM's seconds per call")
    args = parser.parse_args()
    experiment_id = "row-latency"
    spec = synthetic_spec(experiment_id, concepts=args.generations, k_max=1, generation_templates=1,
                          generation_models=1, evaluation_templates=1, evaluation_models=1, tier=ONE_IN_FLIGHT)
    host = machine()
    seen: dict[str, float] = {}
    with running_stack("row-latency", [ONE_IN_FLIGHT], latency_s=args.latency) as stack:
        engine = engine_for(stack.data)
        publish_experiment(stack, spec)
        query = union_all(
            select(GenerationResult.task_id).where(GenerationResult.experiment_id == experiment_id),
            select(EvaluationResult.task_id).where(EvaluationResult.experiment_id == experiment_id,
                                                   EvaluationResult.has_response == True),  # noqa: E712
        )
        deadline = time.monotonic() + 60 + args.generations * 2 * (args.latency + 1)
        while len(seen) < 2 * args.generations and time.monotonic() < deadline:
            with engine.connect() as connection:
                now = time.time()
                for (task_id,) in connection.execute(query):
                    seen.setdefault(task_id, now)
            time.sleep(POLL_S)
        done = {event["task"]["task_id"]: moment(event["emitted_at"]) for subject in (GENERATION_DONE, EVALUATION_DONE)
                for event in read_events(stack.nats_url, subject)}
        engine.dispose()
    delays = [seen[task_id] - emitted for task_id, emitted in done.items() if task_id in seen]
    result = {"benchmark": "row_latency", "machine": host, "generations": args.generations,
              "fake_latency_s": args.latency, "rows_seen": len(delays),
              "answer_to_row_visible": percentiles(delays)}
    figures = result["answer_to_row_visible"]
    report("row_latency", result, [
        ("answers (one call in flight)", str(2 * args.generations)),
        ("rows seen", str(len(delays))),
        ("answer -> row visible p50 / p95 / max",
         f"{figures.get('p50_s')} / {figures.get('p95_s')} / {figures.get('max_s')} s"),
    ])


if __name__ == "__main__":
    main()
