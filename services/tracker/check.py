"""Consistency checks between the database, the artifact files and the cross-experiment CSVs.
Each problem names where it is and the command that fixes it.

A cross-experiment CSV agrees with the database when, for every row whose line was appended, the
CSV's current line for its (experiment_id, task_id) — the highest revision, see `csv_log` — holds
the row's values, and no revision appears twice."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from services.tracker.artifacts import Layout, read_csv_rows
from services.tracker.csv_log import CSV_COLUMNS, RESULT_TABLES, csv_header_problem, csv_line
from services.tracker.tables import EvaluationResult, Failure, GenerationResult

REBUILD = "run `daydream rebuild`"


@dataclass(frozen=True)
class Problem:
    kind: str
    """orphan, duplicate, missing_artifact, unrecorded_artifact, unreadable_artifact, missing_csv_line,
    stale_csv_line, outdated_csv or foreign_csv."""
    where: str
    detail: str
    fix: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail} — fix: {self.fix}"


def _rerun(experiment_id: str, task_id: str) -> str:
    return f"`daydream rerun {experiment_id} --task {task_id}`"


def check(data_dir: Path, engine: Engine) -> list[Problem]:
    layout = Layout(data_dir)
    with Session(engine) as session:
        generations = session.exec(select(GenerationResult)).all()
        evaluations = session.exec(select(EvaluationResult)).all()
        failures = session.exec(select(Failure)).all()
    return [
        *_orphans(generations, evaluations),
        *_missing_artifacts(layout, generations, evaluations, failures),
        *_unrecorded_artifacts(layout, generations, evaluations),
        *_csv_problems(layout, {"generation": generations, "evaluation": evaluations}),
    ]


def _orphans(generations, evaluations) -> list[Problem]:
    known = {(row.experiment_id, row.task_id) for row in generations}
    return [
        Problem(
            "orphan",
            f"evaluation {row.task_id} of experiment {row.experiment_id}",
            f"its generation {row.generation_task_id} is not recorded",
            f"{REBUILD} (restores it if its files exist), else {_rerun(row.experiment_id, row.generation_task_id)}",
        )
        for row in evaluations
        if (row.experiment_id, row.generation_task_id) not in known
    ]


def _missing_artifacts(layout: Layout, generations, evaluations, failures) -> list[Problem]:
    """An evaluation is redone by rerunning its generation: the evaluator fans out again, and
    stored responses are reused, so the lost file comes back without paying for a new call."""
    problems = []
    for stage, rows, columns in (
        ("generation", generations, ("prompt_path", "response_path", "call_path")),
        ("evaluation", evaluations, ("prompt_path", "response_path", "call_path", "score_path")),
        ("failure", failures, ("failure_path",)),
    ):
        for row in rows:
            for column in columns:
                relative = getattr(row, column)
                if relative and not layout.absolute(relative).exists():
                    problems.append(
                        Problem(
                            "missing_artifact",
                            f"{stage} {row.task_id} of experiment {row.experiment_id}",
                            f"{layout.absolute(relative)} is gone",
                            _rerun(row.experiment_id, getattr(row, "generation_task_id", row.task_id)),
                        )
                    )
    return problems


def _unrecorded_artifacts(layout: Layout, generations, evaluations) -> list[Problem]:
    """Call records and scores on disk that the database knows nothing of (e.g. a lost database)."""
    recorded = {
        "generation": {(row.experiment_id, row.task_id) for row in generations},
        "evaluation": {(row.experiment_id, row.task_id) for row in evaluations},
    }
    problems = []
    for stage in RESULT_TABLES:
        for path in sorted(layout.responses_dir(stage).glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                key = (record["task"]["experiment_id"], record["task"]["task_id"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                problems.append(
                    Problem("unreadable_artifact", str(path), repr(error), "fix or move the file away, then " + REBUILD)
                )
                continue
            if key not in recorded[stage]:
                problems.append(
                    Problem(
                        "unrecorded_artifact", str(path), f"{stage} {key[1]} of experiment {key[0]} has no row", REBUILD
                    )
                )
    return problems


def _csv_problems(layout: Layout, rows_by_stage) -> list[Problem]:
    problems = []
    for stage, rows in rows_by_stage.items():
        path = layout.cross_experiment_csv(stage)
        header_problem = csv_header_problem(path, stage)
        if header_problem is not None:
            problems.append(Problem(header_problem.kind, str(path), header_problem.detail, header_problem.fix))
            continue
        lines = []
        for number, line in enumerate(read_csv_rows(path), start=2):
            if (line.get("revision") or "").isdigit():
                lines.append(line)
            else:
                problems.append(Problem("malformed_csv_line", str(path),
                                        f"line {number}: revision {line.get('revision')!r} is not a number", REBUILD))
        revisions = Counter((line["experiment_id"], line["task_id"], line["revision"]) for line in lines)
        for (experiment_id, task_id, revision), count in sorted(revisions.items()):
            if count > 1:
                problems.append(
                    Problem(
                        "duplicate",
                        str(path),
                        f"{stage} {task_id} of experiment {experiment_id}, revision {revision}, appears {count} times",
                        REBUILD,
                    )
                )
        current = _current_lines(lines)
        for row in rows:
            if not row.csv_appended:
                continue
            where = f"{stage} {row.task_id} of experiment {row.experiment_id}"
            current_line = current.get((row.experiment_id, row.task_id))
            if current_line is None:
                problems.append(Problem("missing_csv_line", str(path), where, REBUILD))
                continue
            differences = _differences(current_line, csv_line(row.model_dump(), CSV_COLUMNS[stage]))
            if differences:
                problems.append(Problem("stale_csv_line", str(path), f"{where}: {differences}", REBUILD))
    return problems


def _current_lines(lines: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    """The highest revision per (experiment_id, task_id); the later line wins a tie."""
    current: dict[tuple[str, str], dict[str, str]] = {}
    for line in lines:
        key = (line["experiment_id"], line["task_id"])
        if key not in current or int(line["revision"]) >= int(current[key]["revision"]):
            current[key] = line
    return current


def _differences(line: dict[str, str], expected: dict) -> str:
    """What the CSV's current line says against the database, compared as the CSV writes values."""
    as_written = {column: "" if value is None else str(value) for column, value in expected.items()}
    return "; ".join(
        f"{column} is {line.get(column)!r} in the CSV, {value!r} in the database"
        for column, value in as_written.items()
        if line.get(column) != value
    )
