"""The tracker's tables: every row is keyed so that a redelivered event finds and updates it.

The tracker counts, after every batch of events, how many evaluations are scored, and at startup
looks up the rows still owed a CSV line (see `csv_log` for `revision` and `csv_appended`); the
(experiment_id, has_score) and (experiment_id, csv_appended) indexes keep those lookups from
scanning the whole experiment, which made recording slow down as the tables grew.

Timestamps are aware UTC (SQLModel's UTCDateTime: `timestamptz` on PostgreSQL). Artifact paths are
stored relative to the data directory, so a data directory can be moved.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Table, UniqueConstraint
from sqlmodel import Field, SQLModel


def sa_table(model: type[SQLModel]) -> Table:
    """SQLAlchemy's table behind a table model."""
    return model.__table__  # type: ignore[attr-defined]  # set by SQLModel at class creation, declared to no type checker


class Experiment(SQLModel, table=True):
    """One experiment; created by whichever of its events arrives first, filled in by the rest."""

    __tablename__ = "experiments"

    experiment_id: str = Field(primary_key=True)
    name: str | None = None
    k_max: int | None = None
    description_level: str | None = None
    replicates: int | None = None
    evaluate_truncated: bool = True
    snapshot_path: str | None = None
    generation_tasks_planned: int | None = None
    evaluation_tasks_planned: int | None = None
    tasks_by_tier: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    requested_at: datetime | None = None
    planned_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ComboMapping(SQLModel, table=True):
    """One member concept of a combo: the registry that lets results across experiments join."""

    __tablename__ = "combo_mappings"
    __table_args__ = (UniqueConstraint("combo_id", "concept_id"),)

    id: int | None = Field(default=None, primary_key=True)
    combo_id: str = Field(index=True)
    concept_id: str
    description_level: str
    k_max: int
    version: str
    created_at: datetime


class CallUsage(SQLModel):
    """What a call cost and how it ended, declared once for every table that carries it (the
    result tables, `llm_calls`) and for the cross-experiment CSVs; the names are `CallRecord`'s.
    Nullable, as an evaluation row may exist (its score arrived first) before its call did."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    finish_reason: str | None = None
    truncated: bool | None = None
    cached: bool | None = None


CALL_USAGE_COLUMNS = tuple(CallUsage.model_fields)


class GenerationResult(CallUsage, table=True):
    __tablename__ = "generation_results"
    __table_args__ = (
        UniqueConstraint("experiment_id", "task_id"),
        Index("ix_generation_results_csv_pending", "experiment_id", "csv_appended"),
    )

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: str = Field(index=True)
    task_id: str
    combo_id: str
    generation_template_id: str
    generation_model_id: str
    generation_model: str
    tier: str
    replicate: int
    status: str
    started_at: datetime
    finished_at: datetime
    prompt_path: str
    response_path: str
    call_path: str
    prompt_chars: int
    response_chars: int
    revision: int = 0
    """How many complete states the row has had: its current line in the cross-experiment CSV."""
    csv_appended: bool = False
    """Set once the line of the current revision is in 7_cross_experiment/generation_results.csv."""


class EvaluationResult(CallUsage, table=True):
    """Filled by EvaluationDone (the judge's text) and EvaluationScored (its parse), in either order."""

    __tablename__ = "evaluation_results"
    __table_args__ = (
        UniqueConstraint("experiment_id", "task_id"),
        Index("ix_evaluation_results_csv_pending", "experiment_id", "csv_appended"),
        Index("ix_evaluation_results_scored", "experiment_id", "has_score"),
    )

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: str = Field(index=True)
    task_id: str
    generation_task_id: str = Field(index=True)
    combo_id: str
    generation_template_id: str
    generation_model_id: str
    generation_model: str | None = None
    """The generation model's name, from the generation's row: unknown while that is not recorded."""
    evaluation_template_id: str
    evaluation_model_id: str
    evaluation_model: str
    tier: str
    replicate: int
    max_score: int | None = None
    generation_truncated: bool = False
    status: str
    """`awaiting_score` or `awaiting_response` until both halves arrived, then `scored` or `parse_error`."""
    has_response: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    prompt_path: str | None = None
    response_path: str | None = None
    call_path: str | None = None
    prompt_chars: int | None = None
    response_chars: int | None = None
    has_score: bool = False
    score: float | None = None
    parse_error: str | None = None
    parser: str | None = None
    candidates: list[float] | None = Field(default=None, sa_column=Column(JSON))
    score_path: str | None = None
    scored_at: datetime | None = None
    revision: int = 0
    csv_appended: bool = False


class Failure(SQLModel, table=True):
    """The latest failure of a task; `resolved` once the task later succeeded (e.g. after `rerun`)."""

    __tablename__ = "failures"
    __table_args__ = (UniqueConstraint("experiment_id", "task_id"),)

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: str = Field(index=True)
    task_id: str
    stage: str
    reason: str
    message: str
    attempts: int
    tier: str | None = None
    model_id: str | None = None
    task: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    failed_at: datetime
    failure_path: str
    resolved: bool = False


class LlmCall(CallUsage, table=True):
    """The call behind each result (the newest one when a task was rerun): every `CallRecord`
    field but its text."""

    __tablename__ = "llm_calls"
    __table_args__ = (UniqueConstraint("experiment_id", "task_id"),)

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: str = Field(index=True)
    task_id: str
    stage: str
    model_id: str
    model: str
    tier: str
    latency_s: float
    native_finish_reason: str | None = None
    provider: str | None = None
    resolved_model: str | None = None
    response_id: str | None = None
    attempt: int
    request_hash: str
    started_at: datetime
    finished_at: datetime


ALL_TABLES = (Experiment, ComboMapping, GenerationResult, EvaluationResult, Failure, LlmCall)
