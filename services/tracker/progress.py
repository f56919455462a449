"""Experiment progress, counted straight from SQL so it stays cheap for large experiments, and the
`finished_at` an experiment row keeps current inside each write's own transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import and_, bindparam, case, func
from sqlmodel import Session, col, select

from services.tracker.tables import EvaluationResult, Experiment, Failure, GenerationResult, LlmCall
from shared.events import SKIPPED_TRUNCATED_GENERATION

PROGRESS_STAGES = ("generation", "evaluation", "scoring")
"""Failures of other stages (planning, tracking, an unreadable dead letter) are not planned tasks:
they show in `failures_by_reason` only."""


class StageProgress(BaseModel):
    stage: str
    planned: int | None
    """None until ExperimentPlanned has arrived."""
    done: int = 0
    failed: int = 0
    skipped: int = 0
    """Evaluations that will never run: their generation failed, or it was truncated and the
    experiment does not evaluate truncated generations."""


class TierProgress(BaseModel):
    stage: str
    tier: str
    planned: int | None
    done: int = 0
    failed: int = 0


class Progress(BaseModel):
    experiment_id: str
    stages: dict[str, StageProgress]
    """generation, evaluation (the judge answered) and scoring (the answer was parsed)."""
    tiers: list[TierProgress]
    parse_errors: int = 0
    failures_by_reason: dict[str, int] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    """Spent: a reused (cached) response carries its first call's cost but costs nothing again."""
    cost_saved_usd: float = 0.0
    """What the reused responses cost when they were first paid for."""
    planning_error: str | None = None
    """Why the combiner refused to plan the experiment: then no task will ever come."""
    finished: bool = False
    finished_at: datetime | None = None


def current_finished_at(session: Session, experiment: Mapping[str, Any]) -> datetime | None:
    """What the experiment row's `finished_at` should say, from the rows written so far in the
    batch's own transaction: asked once per experiment the batch touched. The full progress runs
    only when the experiment may have finished or had been marked finished: run after every event,
    it alone cost a quarter of the tracker's time (bench/README.md)."""
    if experiment["finished_at"] is None and not _may_be_finished(session, experiment):
        return None
    return progress(session, experiment["experiment_id"]).finished_at



def _count_true(condition):
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


_SCORED_AND_FAILED = select(
    select(func.count())
    .where(EvaluationResult.experiment_id == bindparam("experiment_id"), EvaluationResult.has_score == True)  # noqa: E712
    .scalar_subquery(),
    select(func.count())
    .where(Failure.experiment_id == bindparam("experiment_id"), Failure.resolved == False)  # noqa: E712
    .scalar_subquery(),
)
"""Run after every batch; built once, as building it cost more than running it."""


def _may_be_finished(session: Session, experiment: Mapping[str, Any]) -> bool:
    """False only when the experiment certainly is not finished: scores, plus every unresolved
    failure (a skipped evaluation among them) counted as if it skipped a whole generation's
    evaluations, still fall short of the planned evaluations. Two indexed counts, against the
    seven aggregate queries of `progress`, which decides whenever this says True."""
    generations_planned = experiment["generation_tasks_planned"]
    evaluations_planned = experiment["evaluation_tasks_planned"]
    if generations_planned is None or evaluations_planned is None:
        return False
    if not generations_planned or not evaluations_planned:
        return True
    evaluations_per_generation = evaluations_planned // generations_planned
    scored, failures = session.exec(_SCORED_AND_FAILED, params={"experiment_id": experiment["experiment_id"]}).one()
    return scored + failures * max(evaluations_per_generation, 1) >= evaluations_planned


def progress(session: Session, experiment_id: str) -> Progress:
    """Counts straight from SQL, so progress stays cheap for large experiments."""
    experiment = session.get(Experiment, experiment_id) or Experiment(experiment_id=experiment_id)
    by_tier = experiment.tasks_by_tier or {}
    done: dict[tuple[str, str], int] = defaultdict(int)
    failed: dict[tuple[str, str], int] = defaultdict(int)

    generations = session.exec(
        select(GenerationResult.tier, func.count())
        .where(GenerationResult.experiment_id == experiment_id)
        .group_by(GenerationResult.tier)
    ).all()
    for tier, count in generations:
        done["generation", tier] += count

    evaluations = session.exec(
        select(
            EvaluationResult.tier,
            _count_true(EvaluationResult.has_response),
            _count_true(EvaluationResult.has_score),
            _count_true(and_(col(EvaluationResult.has_score), col(EvaluationResult.score).is_(None))),
        )
        .where(EvaluationResult.experiment_id == experiment_id)
        .group_by(EvaluationResult.tier)
    ).all()
    scored = parse_errors = 0
    for tier, responded, tier_scored, tier_parse_errors in evaluations:
        done["evaluation", tier] += responded
        scored += tier_scored
        parse_errors += tier_parse_errors

    failures = session.exec(
        select(Failure.stage, Failure.tier, Failure.reason, func.count())
        .where(Failure.experiment_id == experiment_id, Failure.resolved == False)  # noqa: E712
        .group_by(col(Failure.stage), col(Failure.tier), col(Failure.reason))
    ).all()
    failures_by_reason: dict[str, int] = defaultdict(int)
    failed_by_stage: dict[str, int] = defaultdict(int)
    skipped_by_choice = 0  # evaluations of truncated generations left unjudged; the fan-out records each
    for stage, failed_tier, reason, count in failures:
        failures_by_reason[reason] += count
        if stage not in PROGRESS_STAGES:
            continue
        if reason == SKIPPED_TRUNCATED_GENERATION:
            skipped_by_choice += count
        else:
            failed_by_stage[stage] += count
            failed[stage, failed_tier or "?"] += count
    planning_error: str | None = session.exec(
        select(Failure.message).where(Failure.experiment_id == experiment_id, Failure.stage == "planning",
                                      Failure.resolved == False)  # noqa: E712
    ).first()

    prompt_tokens, completion_tokens, spent, saved = session.exec(
        select(
            func.coalesce(func.sum(LlmCall.prompt_tokens), 0),
            func.coalesce(func.sum(LlmCall.completion_tokens), 0),
            func.coalesce(func.sum(case((col(LlmCall.cached) == False, col(LlmCall.cost_usd)), else_=0.0)), 0.0),  # noqa: E712
            func.coalesce(func.sum(case((col(LlmCall.cached) == True, col(LlmCall.cost_usd)), else_=0.0)), 0.0),  # noqa: E712
        ).where(LlmCall.experiment_id == experiment_id)
    ).one()

    generations_planned = experiment.generation_tasks_planned
    evaluations_planned = experiment.evaluation_tasks_planned
    evaluations_per_generation = (evaluations_planned or 0) // generations_planned if generations_planned else 0
    skipped = failed_by_stage["generation"] * evaluations_per_generation + skipped_by_choice
    stages = {
        "generation": StageProgress(
            stage="generation",
            planned=generations_planned,
            done=sum(count for (stage, _), count in done.items() if stage == "generation"),
            failed=failed_by_stage["generation"],
        ),
        "evaluation": StageProgress(
            stage="evaluation",
            planned=evaluations_planned,
            done=sum(count for (stage, _), count in done.items() if stage == "evaluation"),
            failed=failed_by_stage["evaluation"],
            skipped=skipped,
        ),
        "scoring": StageProgress(
            stage="scoring",
            planned=evaluations_planned,
            done=scored,
            failed=failed_by_stage["scoring"],
            skipped=skipped + failed_by_stage["evaluation"],
        ),
    }
    finished = generations_planned is not None and all(
        stage.planned is not None and stage.done + stage.failed + stage.skipped >= stage.planned
        for stage in stages.values()
    )
    tier_keys = sorted({*done, *failed, *((stage, tier) for stage, tiers in by_tier.items() for tier in tiers)})
    return Progress(
        experiment_id=experiment_id,
        stages=stages,
        tiers=[
            TierProgress(
                stage=stage,
                tier=tier,
                planned=by_tier.get(stage, {}).get(tier),
                done=done[stage, tier],
                failed=failed[stage, tier],
            )
            for stage, tier in tier_keys
        ],
        parse_errors=parse_errors,
        failures_by_reason=dict(failures_by_reason),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=float(spent),
        cost_saved_usd=float(saved),
        planning_error=planning_error,
        finished=finished,
        finished_at=_last_activity(session, experiment_id) if finished else None,
    )


def _last_activity(session: Session, experiment_id: str) -> datetime | None:
    """When the last piece of the experiment landed: derived from the data, so `rebuild` agrees."""
    moments = [
        session.exec(
            select(func.max(GenerationResult.finished_at)).where(GenerationResult.experiment_id == experiment_id)
        ).one(),
        session.exec(
            select(func.max(EvaluationResult.finished_at)).where(EvaluationResult.experiment_id == experiment_id)
        ).one(),
        session.exec(
            select(func.max(EvaluationResult.scored_at)).where(EvaluationResult.experiment_id == experiment_id)
        ).one(),
        session.exec(
            select(func.max(Failure.failed_at)).where(Failure.experiment_id == experiment_id, Failure.resolved == False)  # noqa: E712
        ).one(),
    ]
    return max((moment for moment in moments if moment is not None), default=None)
