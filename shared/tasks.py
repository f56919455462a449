"""Expanding an experiment into tasks: combos, generation tasks, and each generation's evaluations.

The combiner expands generations and the evaluator expands evaluations; both use this module, so a
task looks the same whoever built it.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

from shared.events import (
    CallParameters,
    ComboPlanned,
    ConceptSpec,
    EvaluationPlan,
    EvaluationTask,
    EvaluationTemplateSpec,
    ExperimentSpec,
    GenerationTask,
    ModelSpec,
    TierSpec,
)
from shared.ids import combo_id, evaluation_task_id, generation_task_id
from shared.prompts import render_evaluation_prompt, render_generation_prompt


@dataclass(frozen=True)
class PlannedEvaluation:
    """One evaluation a generation will get, known before its text exists (for the plan tables)."""

    task_id: str
    generation: GenerationTask
    template: EvaluationTemplateSpec
    model: ModelSpec
    tier: TierSpec


@dataclass(frozen=True)
class PlannedCounts:
    generation_tasks: int
    evaluation_tasks: int
    tasks_by_tier: dict[str, dict[str, int]]
    """stage -> tier -> task count, as `ExperimentPlanned.tasks_by_tier`."""


def combinations(spec: ExperimentSpec) -> list[ComboPlanned]:
    """Every k_max-sized combination of the active concepts, in CSV order."""
    return [
        ComboPlanned(
            combo_id=combo_id([c.concept_id for c in members], spec.description_level, spec.k_max),
            concept_ids=[c.concept_id for c in members],
        )
        for members in itertools.combinations(spec.concepts, spec.k_max)
    ]


def generation_tasks(spec: ExperimentSpec) -> list[GenerationTask]:
    """combos x generation templates x generation models x replicates, prompts rendered."""
    concepts = {concept.concept_id: concept for concept in spec.concepts}
    plan = EvaluationPlan(
        templates=spec.evaluation_templates,
        models=spec.evaluation_models,
        tiers=spec.tiers,
        evaluate_truncated=spec.evaluate_truncated,
    )
    tasks = []
    for combo in combinations(spec):
        members: list[ConceptSpec] = [concepts[concept_id] for concept_id in combo.concept_ids]
        for template in spec.generation_templates:
            prompt = render_generation_prompt(template, members)
            for model in spec.generation_models:
                for replicate in range(1, spec.replicates + 1):
                    task_id = generation_task_id(
                        combo.combo_id, template.template_id, model.id, replicate, spec.replicates
                    )
                    tasks.append(
                        GenerationTask(
                            experiment_id=spec.experiment_id,
                            task_id=task_id,
                            tier=tier_of(model, spec.tiers),
                            model=model,
                            parameters=_parameters(model, replicate_seed(spec.seed, replicate)),
                            prompt=prompt,
                            replicate=replicate,
                            fresh=spec.fresh,
                            endpoint=spec.endpoint,
                            max_cost=spec.max_cost,
                            combo_id=combo.combo_id,
                            generation_template_id=template.template_id,
                            generation_model_id=model.id,
                            generation_task_id=task_id,
                            evaluation_plan=plan,
                        )
                    )
    return tasks


def planned_evaluations(generation: GenerationTask) -> list[PlannedEvaluation]:
    """The evaluations the generation's plan asks for: evaluation templates x evaluation models."""
    plan = generation.evaluation_plan
    if plan is None:
        return []
    return [
        PlannedEvaluation(
            task_id=evaluation_task_id(generation.task_id, template.template_id, model.id),
            generation=generation,
            template=template,
            model=model,
            tier=tier_of(model, plan.tiers),
        )
        for template in plan.templates
        for model in plan.models
    ]


def evaluation_tasks(generation: GenerationTask, response_text: str, truncated: bool) -> list[EvaluationTask]:
    """Judge tasks for one finished generation; none for a truncated one unless the plan says so."""
    plan = generation.evaluation_plan
    if plan is None or (truncated and not plan.evaluate_truncated):
        return []
    return [
        EvaluationTask(
            experiment_id=generation.experiment_id,
            task_id=planned.task_id,
            tier=planned.tier,
            model=planned.model,
            parameters=_parameters(planned.model, generation.parameters.seed),
            prompt=render_evaluation_prompt(planned.template, response_text),
            replicate=generation.replicate,
            fresh=generation.fresh,
            endpoint=generation.endpoint,
            max_cost=generation.max_cost,
            combo_id=generation.combo_id,
            generation_template_id=generation.generation_template_id,
            generation_model_id=generation.generation_model_id,
            generation_task_id=generation.task_id,
            evaluation_template_id=planned.template.template_id,
            evaluation_model_id=planned.model.id,
            parser=planned.template.parser,
            max_score=planned.template.max_score,
            allow_decimals=planned.template.allow_decimals,
            generation_truncated=truncated,
        )
        for planned in planned_evaluations(generation)
    ]


@dataclass(frozen=True)
class PlanSize:
    """How many of each thing an experiment makes: known by arithmetic, before any is built."""

    concepts: int
    k_max: int
    generation_templates: int
    generation_models: int
    replicates: int
    evaluation_templates: int
    evaluation_models: int

    @property
    def combos(self) -> int:
        return math.comb(self.concepts, self.k_max)

    @property
    def generation_tasks(self) -> int:
        return self.combos * self.generation_templates * self.generation_models * self.replicates

    @property
    def evaluation_tasks(self) -> int:
        return self.generation_tasks * self.evaluation_templates * self.evaluation_models

    @property
    def calls(self) -> int:
        return self.generation_tasks + self.evaluation_tasks


def planned_counts(spec: ExperimentSpec) -> PlannedCounts:
    """Task totals by arithmetic, so progress and ETA are known without building any task."""
    size = PlanSize(
        len(spec.concepts), spec.k_max, len(spec.generation_templates), len(spec.generation_models),
        spec.replicates, len(spec.evaluation_templates), len(spec.evaluation_models),
    )
    per_generation_model = size.combos * size.generation_templates * size.replicates
    per_evaluation_model = size.generation_tasks * size.evaluation_templates
    by_tier: dict[str, Counter[str]] = {"generation": Counter(), "evaluation": Counter()}
    for model in spec.generation_models:
        by_tier["generation"][model.tier] += per_generation_model
    for model in spec.evaluation_models:
        by_tier["evaluation"][model.tier] += per_evaluation_model
    return PlannedCounts(
        generation_tasks=size.generation_tasks,
        evaluation_tasks=size.evaluation_tasks,
        tasks_by_tier={stage: dict(counts) for stage, counts in by_tier.items()},
    )


class UndefinedTier(ValueError):
    """A model names a tier the experiment does not define: the selection cannot be planned."""


def tier_of(model: ModelSpec, tiers: list[TierSpec]) -> TierSpec:
    for tier in tiers:
        if tier.tier == model.tier:
            return tier
    raise UndefinedTier(f"model '{model.id}' uses tier '{model.tier}', which the experiment does not define")


def replicate_seed(seed: int | None, replicate: int) -> int | None:
    """Replicate i of a seeded experiment sends seed + i - 1, so its n replicates are n distinct
    samples that are each reproducible. Unseeded replicates differ through the
    `X-DayDream-Replicate` header the client sends (see `shared.llm`)."""
    return None if seed is None else seed + replicate - 1


def _parameters(model: ModelSpec, seed: int | None) -> CallParameters:
    return CallParameters(temperature=model.temperature, max_tokens=model.max_tokens, seed=seed)
