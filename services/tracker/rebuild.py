"""Rebuild the database and the cross-experiment CSVs from the files the tracker wrote.

Sources: DIR/experiments/<id>/events/{requested,planned}*.json and failures/*.json, the call-record
JSON next to every response (task fields, call, paths of its prompt and response files), the
`.score.json` next to every evaluation response, and DIR/combo_mappings.csv. Every file is read and
validated before anything is deleted, so a bad file stops the rebuild with the old state intact.

Files are replayed in the order their events happened (by their own timestamps), so a task that was
rerun or re-scored gets its revisions, and their CSV lines, in the order they happened.
A cross-experiment CSV with an earlier DayDream's header is replaced like a current one; one with
columns DayDream never wrote is refused and left alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Engine

from services.tracker.artifacts import EXPERIMENTS_DIR, Layout, ResultFiles, read_csv_rows, task_from_kept_fields
from services.tracker.csv_log import CSV_COLUMNS, csv_header_problem
from services.tracker.db import drop_db, init_db
from services.tracker.rows import Rows, as_utc
from services.tracker.stages import StageRegistry
from services.tracker.tables import ComboMapping
from shared.events import CallRecord, EvaluationScored, ExperimentPlanned, ExperimentRequested, TaskFailed

RESULT_STORES: StageRegistry[Callable[[Rows, Any, CallRecord, ResultFiles], None]] = StageRegistry(
    "store function", generation=Rows.store_generation, evaluation=Rows.store_evaluation
)
"""Each stage's store takes that stage's task, which the stage named in the artifact decides."""


_Parsed = TypeVar("_Parsed")


class RebuildError(Exception):
    """An artifact that cannot be read back; nothing was deleted."""


@dataclass
class RebuildReport:
    experiments: int = 0
    generations: int = 0
    evaluations: int = 0
    scores: int = 0
    failures: int = 0
    combo_mappings: int = 0
    sources: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _Replay:
    """One file's contribution, kept until every file has been read."""

    sort_key: tuple
    """(when it happened, kind, name): kinds break ties in the order events follow one another."""
    apply: Callable[[Rows], None]


def _load(path: Path, parse: Callable[[Any], _Parsed]) -> _Parsed:
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, ValidationError) as error:
        raise RebuildError(
            f"{path}: cannot be read back ({error}). Fix the file or move it out of the data directory, "
            "then run `daydream rebuild` again."
        ) from error


def _result_replay(layout: Layout, path: Path, stage: str) -> _Replay:
    def parse(record: dict) -> _Replay:
        task = task_from_kept_fields(record["task"])
        call = CallRecord.model_validate(record["call"])
        files = ResultFiles(
            prompt_path=record["prompt_path"],
            response_path=record["response_path"],
            call_path=layout.relative(path),
            prompt_chars=record["prompt_chars"],
        )
        store = RESULT_STORES[stage]
        return _Replay((as_utc(call.finished_at), 2, task.task_id), lambda rows: store(rows, task, call, files))

    return _load(path, parse)


def _score_replay(layout: Layout, path: Path) -> _Replay:
    def parse(record: dict) -> _Replay:
        event = EvaluationScored.model_validate({**record, "task": task_from_kept_fields(record["task"])})
        return _Replay(
            (as_utc(event.emitted_at), 3, event.task.task_id),
            lambda rows: rows.store_score(event, layout.relative(path)),
        )

    return _load(path, parse)


def _collect(layout: Layout, report: RebuildReport) -> list[_Replay]:
    replays: list[_Replay] = []

    def add(replay: _Replay, path: Path, counter: str | None = None) -> None:
        replays.append(replay)
        report.sources.append(path)
        if counter:
            setattr(report, counter, getattr(report, counter) + 1)

    events_dirs = sorted((layout.data_dir / EXPERIMENTS_DIR).glob("*/events"))
    report.experiments = len(events_dirs)
    for events_dir in events_dirs:
        for path in sorted(events_dir.glob("requested*.json")):
            requested = _load(path, ExperimentRequested.model_validate)
            add(_Replay((as_utc(requested.emitted_at), 0, path.name), partial(Rows.store_requested, event=requested)), path)
        for path in sorted(events_dir.glob("planned*.json")):
            planned = _load(path, ExperimentPlanned.model_validate)
            add(_Replay((as_utc(planned.emitted_at), 1, path.name), partial(Rows.store_planned, event=planned)), path)
        for path in sorted(events_dir.glob("failures/*.json")):
            failed = _load(path, TaskFailed.model_validate)
            store = partial(Rows.store_failure, event=failed, failure_path=layout.relative(path))
            add(_Replay((as_utc(failed.emitted_at), 4, failed.task_id), store), path, "failures")
    for stage, counter in (("generation", "generations"), ("evaluation", "evaluations")):
        for path in sorted(layout.responses_dir(stage).glob("*.json")):
            if path.name.endswith(".score.json"):
                add(_score_replay(layout, path), path, "scores")
            else:
                add(_result_replay(layout, path, stage), path, counter)
    return sorted(replays, key=lambda replay: replay.sort_key)


def _combo_mappings(layout: Layout) -> list[ComboMapping]:
    path = layout.combo_mappings_csv()
    mappings = []
    for line_number, row in enumerate(read_csv_rows(path), start=2):
        try:
            mappings.append(
                ComboMapping(
                    combo_id=row["combo_id"],
                    concept_id=row["concept_id"],
                    description_level=row["description_level"],
                    k_max=int(row["k_max"]),
                    version=row["version"],
                    created_at=as_utc(datetime.fromisoformat(row["created_at"])),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise RebuildError(
                f"{path}, line {line_number}: {error!r}; expected columns "
                "combo_id,version,concept_id,description_level,k_max,created_at — fix the row, then rebuild again."
            ) from error
    return mappings


def _refuse_foreign_csvs(layout: Layout) -> None:
    """A cross-experiment CSV with other columns (say, the original pipeline's) is not ours to delete."""
    for stage in CSV_COLUMNS:
        problem = csv_header_problem(layout.cross_experiment_csv(stage), stage)
        if problem is not None and problem.kind == "foreign_csv":
            raise RebuildError(f"{problem.detail}; {problem.fix} again.")


def rebuild(data_dir: Path, engine: Engine) -> RebuildReport:
    """Replace the database and the cross-experiment CSVs with what the artifacts say."""
    layout = Layout(data_dir)
    report = RebuildReport()
    replays = _collect(layout, report)
    mappings = _combo_mappings(layout)
    _refuse_foreign_csvs(layout)
    drop_db(engine)
    for stage in CSV_COLUMNS:
        layout.cross_experiment_csv(stage).unlink(missing_ok=True)
    init_db(engine)
    rows = Rows(layout, engine)
    for replay in replays:
        replay.apply(rows)
    rows.store_combo_mappings(mappings)
    report.combo_mappings = len(mappings)
    return report
