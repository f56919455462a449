"""`daydream export` and `daydream.load` at scale: time to read N evaluations (with and without their
texts) and to write each format, on a synthetic SQLite data dir whose rows are bulk-inserted (the
tracker would take most of an hour to record 100,000 calls) and whose texts are real files.

    uv run python bench/export.py [--evaluations 100000] [--judges 4] [--repeats 3]

Each measurement is repeated `--repeats` times, the measurements interleaved (a slow moment of the
shared machine hits every one of them alike); the median is reported.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import machine, report
from sqlalchemy import insert

from daydream.export import export_columns, write_csv, write_jsonl, write_parquet
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from services.tracker.tables import ComboMapping, EvaluationResult, GenerationResult, LlmCall

MOMENT = datetime(2026, 1, 1, tzinfo=UTC)
GENERATION_TEXT = "An essay that combines the concepts, paragraph after paragraph.\n" * 40
JUDGE_TEXT = "The essay is coherent and the combination is novel.\n" * 8 + "SCORE: 6"


def populate(data: Path, evaluations: int, judges: int) -> None:
    tracker = Tracker(data, make_engine(f"sqlite:///{data / 'daydream.db'}"))
    generations = evaluations // judges
    common = dict(experiment_id="bench", tier="bench", replicate=1, started_at=MOMENT, finished_at=MOMENT,
                  prompt_tokens=400, completion_tokens=600, cost_usd=0.0004, finish_reason="stop", cached=False)
    generation_rows, evaluation_rows, calls, mappings = [], [], [], []
    for g in range(generations):
        combo, model = f"combo{g // 20}", f"gm{g % 5}"
        task_id = f"gen{g}"
        paths = {kind: f"3_generation/generation_{kind}s/{task_id}.txt" for kind in ("prompt", "response")}
        generation_rows.append(dict(common, task_id=task_id, combo_id=combo, generation_template_id=f"t{g % 4}",
                                    generation_model_id=model, generation_model=f"vendor/{model}", status="done",
                                    prompt_path=paths["prompt"], response_path=paths["response"],
                                    call_path=f"3_generation/generation_responses/{task_id}.json", prompt_chars=900,
                                    response_chars=len(GENERATION_TEXT), revision=1, csv_appended=True))
        calls.append(dict(common, task_id=task_id, stage="generation", model_id=model, model=f"vendor/{model}",
                          latency_s=4.2, provider="SomeHost", attempt=1, request_hash=task_id))
        if g % 20 == 0:
            mappings += [dict(combo_id=combo, concept_id=f"concept{g + i}", description_level="sentence", k_max=3,
                              version="v1", created_at=MOMENT) for i in range(3)]
        for j in range(judges):
            eval_id = f"{task_id}_judge_em{j}"
            evaluation_rows.append(dict(
                common, task_id=eval_id, generation_task_id=task_id, combo_id=combo,
                generation_template_id=f"t{g % 4}", generation_model_id=model, generation_model=f"vendor/{model}",
                evaluation_template_id="judge", evaluation_model_id=f"em{j}", evaluation_model=f"vendor/em{j}",
                max_score=9, status="scored", has_response=True, has_score=True, score=float((g + j) % 10),
                parser="final_verdict", response_path=f"4_evaluation/evaluation_responses/{eval_id}.txt",
                revision=1, csv_appended=True))
            calls.append(dict(common, task_id=eval_id, stage="evaluation", model_id=f"em{j}", model=f"vendor/em{j}",
                              latency_s=2.1, provider="SomeHost", attempt=1, request_hash=eval_id))
    with tracker.engine.begin() as connection:
        for table, rows in ((GenerationResult, generation_rows), (EvaluationResult, evaluation_rows),
                            (LlmCall, calls), (ComboMapping, mappings)):
            connection.execute(insert(table), rows)
    for row in generation_rows:
        for path, text in ((row["prompt_path"], "Combine these concepts."), (row["response_path"], GENERATION_TEXT)):
            (data / path).parent.mkdir(parents=True, exist_ok=True)
            (data / path).write_text(text)
    for row in evaluation_rows:
        (data / row["response_path"]).parent.mkdir(parents=True, exist_ok=True)
        (data / row["response_path"]).write_text(JUDGE_TEXT)
    tracker.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--evaluations", type=int, default=100_000)
    parser.add_argument("--judges", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    host = machine()
    data = Path(tempfile.mkdtemp(prefix="daydream-bench-export-"))
    try:
        started = time.perf_counter()
        populate(data, args.evaluations, args.judges)
        populated_s = time.perf_counter() - started
        engine = make_engine(f"sqlite:///{data / 'daydream.db'}")
        frames = {}

        def read(texts: bool) -> dict:
            return export_columns(data, engine, ["bench"], texts=texts)

        steps = {
            "read without texts": lambda: read(False),
            "read with texts": lambda: frames.setdefault("columns", read(True)),
            "write csv": lambda: write_csv(frames["columns"], io.StringIO()),
            "write jsonl": lambda: write_jsonl(frames["columns"], io.StringIO()),
            "write parquet": lambda: write_parquet(frames["columns"], data / "bench.parquet"),
            "pandas frame": lambda: __import__("pandas").DataFrame(frames["columns"]),
            "polars frame": lambda: __import__("polars").DataFrame(frames["columns"]),
        }
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.repeats):
            frames.clear()
            for name, step in steps.items():
                began = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - began)
        rows = len(frames["columns"]["experiment_id"])
        engine.dispose()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    report(
        "export",
        {
            "machine": host,
            "evaluations": rows,
            "judges": args.judges,
            "repeats": args.repeats,
            "populate_s": round(populated_s, 1),
            "median_s": {name: round(statistics.median(values), 2) for name, values in times.items()},
            "all_s": {name: [round(value, 2) for value in values] for name, values in times.items()},
        },
        [(name, f"{statistics.median(values):.2f} s") for name, values in times.items()],
    )


if __name__ == "__main__":
    main()
