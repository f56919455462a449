"""Planning an experiment, and the plan's tables on disk. Pure: no NATS here.

`combo_mappings.csv` is the registry that lets results of different experiments join on combo id,
so it is append-only and refuses an id that would now mean different concepts.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.events import ComboPlanned, ExperimentPlanned, ExperimentSpec, GenerationTask
from shared.files import atomic_write_bytes, atomic_write_text, csv_text
from shared.ids import COMBO_ID_VERSION
from shared.prompts import TemplateProblem
from shared.tasks import PlannedEvaluation, UndefinedTier, combinations, generation_tasks, planned_counts

PLANNING_PROBLEMS = (UndefinedTier, TemplateProblem)
"""What makes a requested experiment unplannable: recorded as `invalid_experiment`. Anything else
is a bug and is left to crash loudly."""

COMBO_MAPPINGS_COLUMNS = ("combo_id", "version", "concept_id", "description_level", "k_max", "created_at")
CONTENT_COMBINATIONS_COLUMNS = ("combo_id", "concept_id")
GENERATION_TASKS_COLUMNS = (
    "generation_task_id",
    "combo_id",
    "generation_template_id",
    "generation_model_id",
    "model",
    "tier",
    "replicate",
)
EVALUATION_TASKS_COLUMNS = (
    "evaluation_task_id",
    "generation_task_id",
    "evaluation_template_id",
    "evaluation_model_id",
    "model",
    "tier",
    "parser",
    "max_score",
)


class ComboRegistryProblem(Exception):
    """The registry cannot take this plan: an id already recorded for other members (joining on it
    would mix different combos), or a file that is not a registry any more."""


def plan_experiment(spec: ExperimentSpec) -> tuple[ExperimentPlanned, list[GenerationTask]]:
    tasks = generation_tasks(spec)
    counts = planned_counts(spec)
    planned = ExperimentPlanned(
        experiment_id=spec.experiment_id,
        name=spec.name,
        k_max=spec.k_max,
        description_level=spec.description_level,
        replicates=spec.replicates,
        combos=combinations(spec),
        generation_tasks=counts.generation_tasks,
        evaluation_tasks=counts.evaluation_tasks,
        tasks_by_tier=counts.tasks_by_tier,
    )
    return planned, tasks


def new_combo_mappings(
    path: Path, combos: Iterable[ComboPlanned], description_level: str, k_max: int
) -> list[dict[str, Any]]:
    """The registry rows these combos still need. Every combo is checked before the caller writes
    anything, so a collision leaves every file untouched."""
    recorded = _recorded_combos(path)
    created_at = datetime.now(UTC).isoformat(timespec="seconds")
    new_rows = []
    for combo in combos:
        members = (tuple(sorted(combo.concept_ids)), description_level, str(k_max))
        known = recorded.get(combo.combo_id)
        if known is None:
            recorded[combo.combo_id] = members
            new_rows += [
                {
                    "combo_id": combo.combo_id,
                    "version": COMBO_ID_VERSION,
                    "concept_id": concept_id,
                    "description_level": description_level,
                    "k_max": k_max,
                    "created_at": created_at,
                }
                for concept_id in combo.concept_ids
            ]
        elif known != members:
            raise ComboRegistryProblem(
                f"{path}: combo id {combo.combo_id} is recorded for {_describe(known)} "
                f"but now stands for {_describe(members)}; nothing was written. "
                "Check that combo_mappings.csv was not edited by hand, or move it aside to start a new registry"
            )
    return new_rows


def append_combo_mappings(path: Path, rows: list[dict[str, Any]]) -> int:
    """Append rows from `new_combo_mappings`, leaving every existing byte as it was; returns how
    many combos were added."""
    if rows:
        existing = path.read_bytes() if path.exists() else b""
        if existing and not existing.endswith(b"\n"):
            existing += b"\n"
        added = csv_text(COMBO_MAPPINGS_COLUMNS, rows, header=not existing, lineterminator="\n")
        atomic_write_bytes(path, existing + added.encode("utf-8"))
    return len({row["combo_id"] for row in rows})


def write_task_tables(
    tasks_dir: Path,
    plan: ExperimentPlanned,
    generations: list[GenerationTask],
    evaluations: list[PlannedEvaluation],
) -> None:
    """DIR/2_tasks: combos, generation tasks and evaluation tasks (linked by generation_task_id)."""
    combination_rows = [
        {"combo_id": combo.combo_id, "concept_id": concept_id}
        for combo in plan.combos
        for concept_id in combo.concept_ids
    ]
    generation_rows = [
        {
            "generation_task_id": task.task_id,
            "combo_id": task.combo_id,
            "generation_template_id": task.generation_template_id,
            "generation_model_id": task.generation_model_id,
            "model": task.model.model,
            "tier": task.tier.tier,
            "replicate": task.replicate,
        }
        for task in generations
    ]
    evaluation_rows = [
        {
            "evaluation_task_id": evaluation.task_id,
            "generation_task_id": evaluation.generation.task_id,
            "evaluation_template_id": evaluation.template.template_id,
            "evaluation_model_id": evaluation.model.id,
            "model": evaluation.model.model,
            "tier": evaluation.tier.tier,
            "parser": evaluation.template.parser,
            "max_score": evaluation.template.max_score,
        }
        for evaluation in evaluations
    ]
    tables: dict[str, tuple[Sequence[str], Sequence[Mapping[str, object]]]] = {
        "content_combinations.csv": (CONTENT_COMBINATIONS_COLUMNS, combination_rows),
        "generation_tasks.csv": (GENERATION_TASKS_COLUMNS, generation_rows),
        "evaluation_tasks.csv": (EVALUATION_TASKS_COLUMNS, evaluation_rows),
    }
    for name, (columns, rows) in tables.items():
        atomic_write_text(tasks_dir / name, csv_text(columns, rows, lineterminator="\n"))


def _recorded_combos(path: Path) -> dict[str, tuple[tuple[str, ...], str, str]]:
    """combo id -> (sorted members, description level, k_max) as the registry holds them."""
    if not path.exists():
        return {}
    members: dict[str, list[str]] = {}
    settings: dict[str, tuple[str, str]] = {}
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        missing = [column for column in COMBO_MAPPINGS_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ComboRegistryProblem(
                f"{path} line 1: the header lacks {', '.join(missing)}; nothing was written. Restore the "
                f"header ({','.join(COMBO_MAPPINGS_COLUMNS)}) or move the file aside to start a new registry"
            )
        for row in reader:
            members.setdefault(row["combo_id"], []).append(row["concept_id"])
            settings[row["combo_id"]] = (row["description_level"], row["k_max"])
    return {combo: (tuple(sorted(ids)), *settings[combo]) for combo, ids in members.items()}


def _describe(members: tuple[tuple[str, ...], str, str]) -> str:
    concept_ids, level, k_max = members
    return f"[{', '.join(concept_ids)}] at level {level}, k_max {k_max}"
