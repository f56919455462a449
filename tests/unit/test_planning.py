"""Planning: combos, generation and evaluation tasks, the plan tables, and the `plan` command."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from daydream.plan_cmd import plan
from services.combiner.planning import (
    ComboRegistryProblem,
    append_combo_mappings,
    new_combo_mappings,
    plan_experiment,
    write_task_tables,
)
from shared.events import ComboPlanned, EvaluationTask, ExperimentSpec
from shared.ids import combo_id
from shared.inputs import load_experiment
from shared.tasks import evaluation_tasks, generation_tasks, planned_counts, planned_evaluations

REPO_DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture
def spec(example_raw: Path) -> ExperimentSpec:
    return load_experiment(example_raw, experiment_id="exp-1").spec


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    """The example inputs in a private data dir, so the repo's data/ is never written."""
    shutil.copytree(REPO_DATA / "1_raw", tmp_path / "data" / "1_raw")
    return tmp_path / "data"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


def run_plan(*args: str, env: dict[str, str] | None = None):
    app = typer.Typer()
    app.command()(plan)
    return CliRunner().invoke(app, list(args), env=env)


def test_the_example_plans_16_generations_and_32_evaluations(spec: ExperimentSpec) -> None:
    planned, tasks = plan_experiment(spec)
    assert len(planned.combos) == 4
    assert (planned.generation_tasks, planned.evaluation_tasks) == (16, 32)
    assert planned.tasks_by_tier == {"generation": {"free": 8, "paid": 8}, "evaluation": {"paid": 32}}
    assert len(tasks) == 16
    assert len({t.task_id for t in tasks}) == 16


def test_combos_take_concepts_in_csv_order_with_stable_ids(spec: ExperimentSpec) -> None:
    planned, _ = plan_experiment(spec)
    first = planned.combos[0]
    assert first.concept_ids == ["default-mode-network", "dearth-ai-discoveries", "generator-verifier-gap"]
    assert first.combo_id == combo_id(first.concept_ids, "paragraph", 3)


def test_a_generation_task_carries_everything_a_worker_needs(spec: ExperimentSpec) -> None:
    _, tasks = plan_experiment(spec)
    task = next(t for t in tasks if t.generation_model_id == "deepseek_r1_free" and t.generation_template_id == "essay")
    assert task.stage == "generation"
    assert task.task_id == f"{task.combo_id}_essay_deepseek_r1_free"
    assert task.generation_task_id == task.task_id
    assert task.tier.tier == "free" and task.tier.max_concurrent == 1
    assert (task.parameters.temperature, task.parameters.max_tokens) == (0.7, 4096)
    assert "Default Mode Network" in task.prompt and "Economic Moat" not in task.prompt
    assert task.evaluation_plan is not None
    assert [t.template_id for t in task.evaluation_plan.templates] == ["daydreaming-loop-rubric", "coherence"]
    assert [m.id for m in task.evaluation_plan.models] == ["gpt_41_mini"]


def test_replicates_multiply_generations_with_numbered_ids_and_consecutive_seeds(spec: ExperimentSpec) -> None:
    tasks = generation_tasks(spec.model_copy(update={"replicates": 2, "seed": 5}))
    assert len(tasks) == 32
    assert Counter(t.replicate for t in tasks) == {1: 16, 2: 16}
    assert all(t.task_id.endswith(f"_r{t.replicate}") for t in tasks)
    assert {(t.replicate, t.parameters.seed) for t in tasks} == {(1, 5), (2, 6)}


def test_counts_by_arithmetic_match_the_tasks_built(spec: ExperimentSpec) -> None:
    bigger = spec.model_copy(update={"k_max": 2, "replicates": 3})
    tasks = generation_tasks(bigger)
    evaluations = [e for task in tasks for e in planned_evaluations(task)]
    counts = planned_counts(bigger)
    assert counts.generation_tasks == len(tasks)
    assert counts.evaluation_tasks == len(evaluations)
    assert counts.tasks_by_tier["generation"] == dict(Counter(t.tier.tier for t in tasks))
    assert counts.tasks_by_tier["evaluation"] == dict(Counter(e.tier.tier for e in evaluations))


def test_evaluation_tasks_render_the_response_into_each_judge_prompt(spec: ExperimentSpec) -> None:
    generation = generation_tasks(spec)[0]
    tasks = evaluation_tasks(generation, "THE GENERATED TEXT", truncated=False)
    assert [(t.evaluation_template_id, t.evaluation_model_id) for t in tasks] == [
        ("daydreaming-loop-rubric", "gpt_41_mini"),
        ("coherence", "gpt_41_mini"),
    ]
    rubric = tasks[0]
    assert rubric.stage == "evaluation"
    assert rubric.task_id == f"{generation.task_id}_daydreaming-loop-rubric_gpt_41_mini"
    assert "THE GENERATED TEXT" in rubric.prompt and rubric.prompt.rstrip().endswith("from 0 to 9.")
    assert (rubric.parser, rubric.max_score) == ("in_last_line", 9)
    assert rubric.generation_task_id == generation.task_id
    assert (rubric.combo_id, rubric.generation_model_id) == (generation.combo_id, generation.generation_model_id)
    assert rubric.tier.tier == "paid" and rubric.model.id == "gpt_41_mini"
    assert (rubric.parameters.temperature, rubric.parameters.max_tokens) == (0.0, 1024)
    assert isinstance(rubric, EvaluationTask) and rubric.generation_truncated is False


def test_a_truncated_generation_is_judged_only_when_the_plan_says_so(spec: ExperimentSpec) -> None:
    judged = generation_tasks(spec)[0]
    assert all(t.generation_truncated for t in evaluation_tasks(judged, "cut off", truncated=True))
    assert len(evaluation_tasks(judged, "cut off", truncated=True)) == 2
    skipped = generation_tasks(spec.model_copy(update={"evaluate_truncated": False}))[0]
    assert evaluation_tasks(skipped, "cut off", truncated=True) == []
    assert len(evaluation_tasks(skipped, "complete", truncated=False)) == 2


def register(registry: Path, combos: list[ComboPlanned]) -> int:
    return append_combo_mappings(registry, new_combo_mappings(registry, combos, "paragraph", 3))


def test_combo_mappings_are_appended_once_per_combo(spec: ExperimentSpec, tmp_path: Path) -> None:
    planned, _ = plan_experiment(spec)
    registry = tmp_path / "combo_mappings.csv"
    assert register(registry, planned.combos) == 4
    rows = read_csv(registry)
    assert len(rows) == 12
    assert set(rows[0]) == {"combo_id", "version", "concept_id", "description_level", "k_max", "created_at"}
    assert {(r["version"], r["description_level"], r["k_max"]) for r in rows} == {("v1", "paragraph", "3")}
    before = registry.read_text(encoding="utf-8")
    assert register(registry, planned.combos) == 0
    assert registry.read_text(encoding="utf-8") == before


def test_appending_keeps_every_existing_byte_of_the_registry(spec: ExperimentSpec, tmp_path: Path) -> None:
    """Append-only even for a registry saved by a spreadsheet with CRLF and no final newline."""
    planned, _ = plan_experiment(spec)
    registry = tmp_path / "combo_mappings.csv"
    register(registry, planned.combos[:1])
    edited = registry.read_bytes().replace(b"\n", b"\r\n").rstrip(b"\r\n")
    registry.write_bytes(edited)
    assert register(registry, planned.combos[1:]) == 3
    assert registry.read_bytes().startswith(edited + b"\n")
    assert len(read_csv(registry)) == 12


def test_a_combo_id_recorded_with_other_members_is_a_collision(spec: ExperimentSpec, tmp_path: Path) -> None:
    planned, _ = plan_experiment(spec)
    registry = tmp_path / "combo_mappings.csv"
    register(registry, planned.combos[:1])
    tampered = (
        registry.read_text(encoding="utf-8")
        .replace("economic-moat", "x")
        .replace("generator-verifier-gap", "economic-moat")
    )
    registry.write_text(tampered, encoding="utf-8")
    new = ComboPlanned(combo_id="combo_v1_new", concept_ids=["a", "b", "c"])
    with pytest.raises(ComboRegistryProblem, match=f"combo id {planned.combos[0].combo_id} is recorded for"):
        new_combo_mappings(registry, [new, planned.combos[0]], "paragraph", 3)


def test_a_registry_without_its_columns_is_refused_with_the_fix(spec: ExperimentSpec, tmp_path: Path) -> None:
    planned, _ = plan_experiment(spec)
    registry = tmp_path / "combo_mappings.csv"
    registry.write_text("combo_id,concept_id\ncombo_v1_x,a\n", encoding="utf-8")
    with pytest.raises(ComboRegistryProblem, match=r"line 1: the header lacks version, description_level, k_max"):
        new_combo_mappings(registry, planned.combos, "paragraph", 3)


def test_task_tables_link_evaluations_to_generations(spec: ExperimentSpec, tmp_path: Path) -> None:
    planned, tasks = plan_experiment(spec)
    evaluations = [e for task in tasks for e in planned_evaluations(task)]
    write_task_tables(tmp_path / "2_tasks", planned, tasks, evaluations)
    combos = read_csv(tmp_path / "2_tasks" / "content_combinations.csv")
    generations = read_csv(tmp_path / "2_tasks" / "generation_tasks.csv")
    judged = read_csv(tmp_path / "2_tasks" / "evaluation_tasks.csv")
    assert len(combos) == 12 and set(combos[0]) == {"combo_id", "concept_id"}
    assert len(generations) == 16 and len(judged) == 32
    assert {r["generation_task_id"] for r in judged} == {r["generation_task_id"] for r in generations}
    assert {r["combo_id"] for r in generations} == {r["combo_id"] for r in combos}
    assert judged[0]["model"] == "openai/gpt-4.1-mini" and judged[0]["max_score"] == "9"
    assert sorted(p.name for p in (tmp_path / "2_tasks").iterdir()) == [
        "content_combinations.csv",
        "evaluation_tasks.csv",
        "generation_tasks.csv",
    ]


def test_plan_prints_the_counts_and_writes_the_tables(data_copy: Path) -> None:
    result = run_plan("--data", str(data_copy))
    assert result.exit_code == 0, result.output
    assert "4 combos of k_max=3 from 4 active concepts" in result.output
    assert "generation tasks: 16" in result.output
    assert "evaluation tasks: 32" in result.output
    assert "total LLM calls: 48" in result.output
    assert "4 new combo(s)" in result.output
    assert len(read_csv(data_copy / "2_tasks" / "generation_tasks.csv")) == 16
    assert len(read_csv(data_copy / "combo_mappings.csv")) == 12


def test_planning_again_adds_no_combos(data_copy: Path) -> None:
    run_plan("--data", str(data_copy))
    result = run_plan("--data", str(data_copy))
    assert result.exit_code == 0, result.output
    assert "0 new combo(s)" in result.output
    assert len(read_csv(data_copy / "combo_mappings.csv")) == 12


def test_plan_reports_every_description_fallback(data_copy: Path) -> None:
    result = run_plan("--level", "article", "--k-max", "2", "--replicates", "2", env={"DAYDREAM_DATA": str(data_copy)})
    assert result.exit_code == 0, result.output
    for concept in ("dearth-ai-discoveries", "generator-verifier-gap", "economic-moat"):
        assert f"description fallback: {concept} uses paragraph (asked for article)" in result.output
    assert "default-mode-network uses" not in result.output
    assert "generation tasks: 48" in result.output


def test_plan_refuses_a_combo_id_collision_without_writing_tables(data_copy: Path) -> None:
    run_plan("--data", str(data_copy))
    registry = data_copy / "combo_mappings.csv"
    registry.write_text(registry.read_text(encoding="utf-8").replace("economic-moat", "x"), encoding="utf-8")
    shutil.rmtree(data_copy / "2_tasks")
    result = run_plan("--data", str(data_copy))
    assert result.exit_code == 2
    assert "is recorded for" in result.output
    assert not (data_copy / "2_tasks").exists()
