"""Consistency checks between the database, the artifact files and the cross-experiment CSVs.
Each problem names where it is and the command that fixes it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from services.tracker.artifacts import Layout, read_csv_rows
from services.tracker.recorder import RESULT_TABLES
from services.tracker.tables import EvaluationResult, Failure, GenerationResult

REBUILD = "run `daydream rebuild`"


@dataclass(frozen=True)
class Problem:
    kind: str
    """orphan, duplicate, missing_artifact, unrecorded_artifact, unreadable_artifact or missing_csv_line."""
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
        lines = Counter((line["experiment_id"], line["task_id"]) for line in read_csv_rows(path))
        for (experiment_id, task_id), count in sorted(lines.items()):
            if count > 1:
                problems.append(
                    Problem(
                        "duplicate",
                        str(path),
                        f"{stage} {task_id} of experiment {experiment_id} appears {count} times",
                        REBUILD,
                    )
                )
        for row in rows:
            if row.csv_appended and (row.experiment_id, row.task_id) not in lines:
                problems.append(
                    Problem(
                        "missing_csv_line",
                        str(path),
                        f"{stage} {row.task_id} of experiment {row.experiment_id}",
                        REBUILD,
                    )
                )
    return problems
