"""The cross-experiment CSVs: append-only logs of each result's states.

A line is appended when a row becomes complete, and again whenever a complete row's values change (a
rerun's newer call, a re-score with another verdict); each line carries the row's `revision`, 1 for
its first complete state. Rule for readers: per (experiment_id, task_id), the line with the highest
revision — also the last one in the file — is the current state; earlier lines are history. A
generation is complete when recorded; an evaluation once its answer, its score and its generation
(which names the generation model) are.

`csv_appended` says the current revision's line is in the CSV; it is committed right after the
append. A crash between the two leaves the flag false with the line already written; the tracker
calls `CsvLog.reconcile()` on start, which appends only the pending revisions not in the CSV yet and
sets their flags. A CSV with an earlier DayDream's header (one of `PAST_CSV_HEADERS`) is first
upgraded in place, atomically: each line gets the added columns (`revision` numbered in the order
the lines were appended, `generation_model` from the generation's line), so no line is lost. A CSV
with any other header is never appended to: the tracker refuses to start on it, naming the file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, update
from sqlmodel import col, select

from services.tracker.artifacts import (
    CsvHeaderMismatch,
    Layout,
    append_csv_rows,
    read_csv_header,
    read_csv_rows,
    write_csv,
)
from services.tracker.stages import StageRegistry
from services.tracker.tables import CALL_USAGE_COLUMNS, EvaluationResult, GenerationResult

GENERATION_CSV_COLUMNS = (
    "experiment_id", "task_id", "revision", "combo_id", "generation_template_id", "generation_model_id",
    "generation_model", "tier", "replicate", "status", "started_at", "finished_at",
    "prompt_path", "response_path", "call_path", "prompt_chars", "response_chars", *CALL_USAGE_COLUMNS,
)  # fmt: skip
EVALUATION_CSV_COLUMNS = (
    "experiment_id", "task_id", "revision", "generation_task_id", "combo_id", "generation_template_id",
    "generation_model_id", "generation_model", "evaluation_template_id", "evaluation_model_id", "evaluation_model",
    "tier", "replicate", "status", "started_at", "finished_at", "scored_at",
    "prompt_path", "response_path", "call_path", "score_path", "prompt_chars", "response_chars",
    *CALL_USAGE_COLUMNS, "generation_truncated", "score", "max_score", "parse_error", "parser",
)  # fmt: skip
CSV_COLUMNS = StageRegistry("CSV columns", generation=GENERATION_CSV_COLUMNS, evaluation=EVALUATION_CSV_COLUMNS)
ADDED_CSV_COLUMNS = StageRegistry(
    "added CSV columns", generation=("revision",), evaluation=("revision", "generation_model")
)
"""Columns an earlier DayDream did not write."""
EARLIER_CSV_COLUMNS = StageRegistry(
    "earlier CSV columns",
    **{
        stage: tuple(column for column in columns if column not in ADDED_CSV_COLUMNS[stage])
        for stage, columns in CSV_COLUMNS.items()
    },
)
PAST_CSV_HEADERS = StageRegistry(
    "past CSV headers", **{stage: (columns,) for stage, columns in EARLIER_CSV_COLUMNS.items()}
)
"""Every header an earlier DayDream wrote, oldest first: each is upgraded to today's on start. A
column added to `CSV_COLUMNS` adds today's header here and says how `_upgraded` fills it."""
RESULT_TABLES: StageRegistry[type[GenerationResult] | type[EvaluationResult]] = StageRegistry(
    "result table", generation=GenerationResult, evaluation=EvaluationResult
)
IS_COMPLETE: StageRegistry[Callable[[Any], bool]] = StageRegistry(
    "completeness rule",
    generation=lambda row: True,
    evaluation=lambda row: bool(row["has_response"] and row["has_score"] and row["generation_model"] is not None),
)
"""Whether a row has a CSV line; `PENDING_CONDITIONS` asks the same in SQL."""
PENDING_CONDITIONS = StageRegistry(
    "pending-line condition",
    generation=(),
    evaluation=(
        EvaluationResult.has_response == True,  # noqa: E712
        EvaluationResult.has_score == True,  # noqa: E712
        col(EvaluationResult.generation_model).is_not(None),
    ),
)


@dataclass(frozen=True)
class CsvHeaderProblem:
    """Why a cross-experiment CSV must not be appended to, and what to do about it."""

    kind: str
    """outdated_csv (an earlier DayDream's header) or foreign_csv."""
    detail: str
    fix: str

    def __str__(self) -> str:
        return f"{self.detail}; fix: {self.fix}"


def csv_header_problem(path: Path, stage: str) -> CsvHeaderProblem | None:
    """None when the CSV is absent, empty or has this tracker's header."""
    if not path.exists() or not path.stat().st_size:
        return None
    header = tuple(read_csv_header(path))
    if header == CSV_COLUMNS[stage]:
        return None
    if header in PAST_CSV_HEADERS[stage]:
        return CsvHeaderProblem(
            "outdated_csv",
            f"{path} was written by an earlier DayDream (it lacks {', '.join(ADDED_CSV_COLUMNS[stage])})",
            "start the tracker (`daydream up` or `daydream run`): it upgrades the file in place",
        )
    return CsvHeaderProblem(
        "foreign_csv",
        f"{path} has columns this tracker did not write",
        "move it aside (it is kept as it is), then run `daydream rebuild`",
    )


def csv_line(row: Mapping[Any, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """A result row's values (by column name) as its CSV line."""
    values = {column: row[column] for column in columns}
    return {column: value.isoformat() if isinstance(value, datetime) else value for column, value in values.items()}


def complete_line(stage: str, row: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """The row's CSV line as it stands, or None while it is not complete: taken before an update."""
    return csv_line(row, CSV_COLUMNS[stage]) if row is not None and IS_COMPLETE[stage](row) else None


def revise(stage: str, row: dict[str, Any], before: dict[str, Any] | None) -> None:
    """After an update: a complete row whose line differs from its last complete state's takes
    the next revision, whose line the CSV is then owed."""
    if IS_COMPLETE[stage](row) and csv_line(row, CSV_COLUMNS[stage]) != before:
        row["revision"] += 1
        row["csv_appended"] = False


def owed_csv_lines(stage: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lines of those rows that are complete and not yet appended, as they stand now."""
    return [csv_line(row, CSV_COLUMNS[stage]) for row in rows if not row["csv_appended"] and IS_COMPLETE[stage](row)]


def pending_csv_rows(stage: str):
    table = RESULT_TABLES[stage]
    return (
        select(table)
        .where(table.csv_appended == False, *PENDING_CONDITIONS[stage])  # noqa: E712
        .order_by(col(table.finished_at), col(table.task_id))
    )


def _upgraded(lines: Iterable[dict[str, str]], generation_models: dict[tuple[str, str], str]) -> Iterator[dict]:
    """An earlier DayDream's lines with today's columns: a line's own values win over the filled-in ones."""
    revisions: Counter[tuple[str, str]] = Counter()
    for line in lines:
        key = (line["experiment_id"], line["task_id"])
        revisions[key] += 1
        generation = (line["experiment_id"], line.get("generation_task_id", line["task_id"]))
        yield {"revision": revisions[key], "generation_model": generation_models.get(generation, ""), **line}


@cache
def _flag_appended(table):
    """One statement for a whole batch of lines (executemany), built once per table."""
    return (
        update(table)
        .where(
            table.experiment_id == bindparam("line_experiment_id"),
            table.task_id == bindparam("line_task_id"),
            table.revision == bindparam("line_revision"),
        )
        .values(csv_appended=True)
    )


class CsvLog:
    """Appends the lines rows owe and flags them, and finishes what a crash interrupted."""

    def __init__(self, layout: Layout, engine: Engine) -> None:
        self.layout = layout
        self.engine = engine

    def upgrade(self) -> list[Path]:
        """Rewrites each CSV an earlier DayDream wrote under today's header, every line kept;
        returns those it rewrote. Generations first: evaluations take their model from them."""
        upgraded = []
        for stage in CSV_COLUMNS:
            path = self.layout.cross_experiment_csv(stage)
            problem = csv_header_problem(path, stage)
            if problem is None or problem.kind != "outdated_csv":
                continue
            generation_models = {
                (line["experiment_id"], line["task_id"]): line["generation_model"]
                for line in read_csv_rows(self.layout.cross_experiment_csv("generation"))
            }
            write_csv(path, CSV_COLUMNS[stage], list(_upgraded(read_csv_rows(path), generation_models)))
            upgraded.append(path)
        return upgraded

    def reconcile(self) -> None:
        """Upgrades earlier DayDreams' CSVs, then finishes appends a crash interrupted: pending
        revisions whose line may already be written. Refuses, before touching anything, a CSV it
        must not append to (see the module docstring)."""
        self.upgrade()
        for stage in CSV_COLUMNS:
            problem = csv_header_problem(self.layout.cross_experiment_csv(stage), stage)
            if problem is not None:
                raise CsvHeaderMismatch(str(problem))
        for stage in CSV_COLUMNS:
            written = {
                (line["experiment_id"], line["task_id"], line["revision"])
                for line in read_csv_rows(self.layout.cross_experiment_csv(stage))
            }
            with self.engine.begin() as connection:
                pending = connection.execute(pending_csv_rows(stage)).mappings().all()
                experiment_ids = sorted({row["experiment_id"] for row in pending})
                _flag(connection, stage, [
                    row for row in pending if (row["experiment_id"], row["task_id"], str(row["revision"])) in written
                ])
            for experiment_id in experiment_ids:
                self._append_pending(stage, experiment_id)

    def _append_pending(self, stage: str, experiment_id: str) -> None:
        with self.engine.begin() as connection:
            pending = connection.execute(
                pending_csv_rows(stage).where(RESULT_TABLES[stage].experiment_id == experiment_id)
            ).mappings().all()
            if not pending:
                return
            append_csv_rows(
                self.layout.cross_experiment_csv(stage),
                CSV_COLUMNS[stage],
                [csv_line(row, CSV_COLUMNS[stage]) for row in pending],
            )
            _flag(connection, stage, pending)

    def append(self, stage: str, lines: list[dict[str, Any]]) -> None:
        """Called after a commit with the lines it owes. The flags are set after the append, so a
        crash in between leaves lines that `reconcile` recognises, never a duplicate."""
        if not lines:
            return
        append_csv_rows(self.layout.cross_experiment_csv(stage), CSV_COLUMNS[stage], lines)
        with self.engine.begin() as connection:
            _flag(connection, stage, lines)


def _flag(connection: Connection, stage: str, lines: Sequence[Mapping[Any, Any]]) -> None:
    """Marks the revisions of these lines (or rows) as in the CSV."""
    if lines:
        connection.execute(
            _flag_appended(RESULT_TABLES[stage]),
            [{"line_experiment_id": line["experiment_id"], "line_task_id": line["task_id"],
              "line_revision": line["revision"]} for line in lines],
        )
