"""The tracker: turns events into artifact files, table rows and cross-experiment CSV lines.

Events arrive in any order and more than once. Every write is keyed on (experiment_id, task_id)
and compares before it changes anything: a redelivered event changes nothing; a newer call for the
same task (a rerun) replaces the row's values; a success resolves an earlier failure.

Cross-experiment CSVs get exactly one line per completed task. A line is appended only when its row
is complete and `csv_appended` is false, and the flag is committed right after the append. A crash
between the two leaves the flag false with the line already written; the tracker service calls
`reconcile_csvs()` on start, which appends only the pending rows whose key is not in the CSV yet and
sets their flags. Constructing a `Tracker` writes nothing, so commands may use one for queries.

Artifacts are written before the row that names them, so a row never points at a file that was
never written, and every artifact carries what its row needs (see `rebuild`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Engine, and_, case, func, update
from sqlmodel import Session, SQLModel, select

from services.tracker.artifacts import (
    Layout,
    append_csv_rows,
    read_csv_rows,
    task_artifact_names,
    to_json,
    write_once,
)
from services.tracker.db import init_db
from services.tracker.tables import (
    ComboMapping,
    EvaluationResult,
    Experiment,
    Failure,
    GenerationResult,
    LlmCall,
)
from shared.events import (
    CallRecord,
    EvaluationDone,
    EvaluationScored,
    ExperimentPlanned,
    ExperimentRequested,
    GenerationDone,
    TaskCreated,
    TaskFailed,
)
from shared.files import atomic_write_text
from shared.ids import COMBO_ID_VERSION

GENERATION_CSV_COLUMNS = (
    "experiment_id", "task_id", "combo_id", "generation_template_id", "generation_model_id",
    "generation_model", "tier", "replicate", "status", "started_at", "finished_at",
    "prompt_path", "response_path", "call_path", "prompt_chars", "response_chars",
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost_usd", "finish_reason",
    "truncated", "cached",
)  # fmt: skip
EVALUATION_CSV_COLUMNS = (
    "experiment_id", "task_id", "generation_task_id", "combo_id", "generation_template_id",
    "generation_model_id", "evaluation_template_id", "evaluation_model_id", "evaluation_model",
    "tier", "replicate", "status", "started_at", "finished_at", "scored_at",
    "prompt_path", "response_path", "call_path", "score_path", "prompt_chars", "response_chars",
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost_usd", "finish_reason",
    "truncated", "cached", "generation_truncated", "score", "max_score", "parse_error", "parser",
)  # fmt: skip
CSV_COLUMNS = {"generation": GENERATION_CSV_COLUMNS, "evaluation": EVALUATION_CSV_COLUMNS}
RESULT_TABLES: dict[str, type[GenerationResult] | type[EvaluationResult]] = {
    "generation": GenerationResult,
    "evaluation": EvaluationResult,
}
PROGRESS_STAGES = ("generation", "evaluation", "scoring")
"""Failures of other stages (planning, tracking, an unreadable dead letter) are not planned tasks:
they show in `failures_by_reason` only."""
TASK_FIELDS_NOT_KEPT = {"prompt", "evaluation_plan"}
"""The prompt has its own file; the evaluation plan is only for the evaluator's fan-out."""


def as_utc(moment: datetime) -> datetime:
    """Aware UTC, as the tables store it; a naive time is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _earliest(*moments: datetime | None) -> datetime | None:
    return min((m for m in moments if m is not None), default=None)


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
    finished: bool = False
    finished_at: datetime | None = None


@dataclass(frozen=True)
class ResultFiles:
    """Where one result's artifacts are, relative to the data directory."""

    prompt_path: str
    response_path: str
    call_path: str
    prompt_chars: int


def kept_task_fields(task: TaskCreated) -> dict[str, Any]:
    return task.model_dump(mode="json", exclude=TASK_FIELDS_NOT_KEPT)


def task_from_kept_fields(fields: dict[str, Any]) -> TaskCreated:
    """The task as the tracker needs it back; its prompt text lives in the prompt file."""
    return TaskCreated.model_validate({**fields, "prompt": ""})


class Tracker:
    """The single writer of durable state. Synchronous: each event is one transaction, plus one that
    flags the CSV line it appended."""

    def __init__(self, data_dir: Path, engine: Engine) -> None:
        self.layout = Layout(data_dir)
        self.engine = engine
        init_db(engine)

    # ---- events ------------------------------------------------------------------------

    def record_requested(self, event: ExperimentRequested) -> None:
        spec = event.spec
        write_once(
            self.layout.events_dir(spec.experiment_id), ["requested.json"], to_json(event.model_dump(mode="json"))
        )
        self.store_requested(event)

    def record_planned(self, event: ExperimentPlanned) -> None:
        write_once(
            self.layout.events_dir(event.experiment_id), ["planned.json"], to_json(event.model_dump(mode="json"))
        )
        self.store_planned(event)

    def record_generation(self, event: GenerationDone) -> None:
        files = self._write_result_artifacts("generation", event.task, event.call)
        self.store_generation(event.task, event.call, files)

    def record_evaluation(self, event: EvaluationDone) -> None:
        files = self._write_result_artifacts("evaluation", event.task, event.call)
        self.store_evaluation(event.task, event.call, files)

    def record_score(self, event: EvaluationScored) -> None:
        task = event.task
        record = event.model_dump(mode="json")
        record["task"] = kept_task_fields(task)
        path = write_once(
            self.layout.responses_dir("evaluation"),
            task_artifact_names(task.task_id, task.experiment_id, ".score.json"),
            to_json(record),
        )
        self.store_score(event, self.layout.relative(path))

    def record_failure(self, event: TaskFailed) -> None:
        """The latest failure of a task is kept (a failure file is state, not a result)."""
        path = self.layout.failures_dir(event.experiment_id) / f"{event.task_id}.json"
        if (
            not path.exists()
            or TaskFailed.model_validate_json(path.read_text(encoding="utf-8")).emitted_at < event.emitted_at
        ):
            atomic_write_text(path, to_json(event.model_dump(mode="json")))
        self.store_failure(event, self.layout.relative(path))

    # ---- storing (shared by the events above and by `rebuild`) -----------------------------

    def store_requested(self, event: ExperimentRequested) -> None:
        spec = event.spec
        with Session(self.engine) as session:
            experiment = self._experiment(session, spec.experiment_id)
            experiment.name = spec.name
            experiment.k_max = spec.k_max
            experiment.description_level = spec.description_level
            experiment.replicates = spec.replicates
            experiment.evaluate_truncated = spec.evaluate_truncated
            experiment.snapshot_path = self.layout.relative(self.layout.experiment_dir(spec.experiment_id))
            experiment.requested_at = _earliest(experiment.requested_at, as_utc(event.emitted_at))
            session.add(experiment)
            _refresh_finished(session, experiment)
            session.commit()

    def store_planned(self, event: ExperimentPlanned) -> None:
        planned_at = as_utc(event.emitted_at)
        with Session(self.engine) as session:
            experiment = self._experiment(session, event.experiment_id)
            if experiment.planned_at is None or planned_at >= experiment.planned_at:
                experiment.name = experiment.name or event.name
                experiment.k_max = experiment.k_max or event.k_max
                experiment.description_level = experiment.description_level or event.description_level
                experiment.replicates = experiment.replicates or event.replicates
                experiment.generation_tasks_planned = event.generation_tasks
                experiment.evaluation_tasks_planned = event.evaluation_tasks
                experiment.tasks_by_tier = event.tasks_by_tier
                experiment.planned_at = planned_at
                session.add(experiment)
            self._add_combo_mappings(
                session,
                [
                    ComboMapping(
                        combo_id=combo.combo_id,
                        concept_id=concept_id,
                        description_level=event.description_level,
                        k_max=event.k_max,
                        version=COMBO_ID_VERSION,
                        created_at=planned_at,
                    )
                    for combo in event.combos
                    for concept_id in combo.concept_ids
                ],
            )
            _refresh_finished(session, experiment)
            session.commit()

    def store_combo_mappings(self, mappings: list[ComboMapping]) -> None:
        with Session(self.engine) as session:
            self._add_combo_mappings(session, mappings)
            session.commit()

    def store_generation(self, task: TaskCreated, call: CallRecord, files: ResultFiles) -> None:
        with Session(self.engine) as session:
            row = self._result_row(session, GenerationResult, task.experiment_id, task.task_id)
            if row is None or as_utc(call.finished_at) > row.finished_at:
                values = dict(
                    experiment_id=task.experiment_id,
                    task_id=task.task_id,
                    combo_id=task.combo_id,
                    generation_template_id=task.generation_template_id,
                    generation_model_id=task.generation_model_id,
                    generation_model=task.model.model,
                    tier=task.tier.tier,
                    replicate=task.replicate,
                    status="done",
                    **_call_values(call, files),
                )
                row = _assign(row or GenerationResult(**values), values)
                session.add(row)
                self._store_call(session, task, call)
            experiment = self._after_success(session, task.experiment_id, task.task_id, as_utc(call.started_at))
            _refresh_finished(session, experiment)
            line = _owed_csv_line("generation", row)
            session.commit()
        self._append_csv_line("generation", line)

    def store_evaluation(self, task: TaskCreated, call: CallRecord, files: ResultFiles) -> None:
        with Session(self.engine) as session:
            row = self._evaluation_row(session, task)
            if row.finished_at is None or as_utc(call.finished_at) > row.finished_at:
                _assign(row, {"has_response": True, **_call_values(call, files)})
                row.status = _evaluation_status(row)
                session.add(row)
                self._store_call(session, task, call)
            experiment = self._after_success(session, task.experiment_id, task.task_id, as_utc(call.started_at))
            _refresh_finished(session, experiment)
            line = _owed_csv_line("evaluation", row)
            session.commit()
        self._append_csv_line("evaluation", line)

    def store_score(self, event: EvaluationScored, score_path: str) -> None:
        task = event.task
        scored_at = as_utc(event.emitted_at)
        with Session(self.engine) as session:
            row = self._evaluation_row(session, task)
            if row.scored_at is None or scored_at > row.scored_at:
                _assign(
                    row,
                    dict(
                        has_score=True,
                        score=event.score,
                        parse_error=event.parse_error,
                        parser=event.parser,
                        candidates=list(event.candidates),
                        score_path=score_path,
                        scored_at=scored_at,
                    ),
                )
                row.status = _evaluation_status(row)
                session.add(row)
            experiment = self._after_success(session, task.experiment_id, task.task_id, None)
            _refresh_finished(session, experiment)
            line = _owed_csv_line("evaluation", row)
            session.commit()
        self._append_csv_line("evaluation", line)

    def store_failure(self, event: TaskFailed, failure_path: str) -> None:
        failed_at = as_utc(event.emitted_at)
        with Session(self.engine) as session:
            experiment = self._experiment(session, event.experiment_id)
            row = session.exec(
                select(Failure).where(Failure.experiment_id == event.experiment_id, Failure.task_id == event.task_id)
            ).first()
            if row is None or failed_at > row.failed_at:
                values = dict(
                    experiment_id=event.experiment_id,
                    task_id=event.task_id,
                    stage=event.stage,
                    reason=event.reason,
                    message=event.message,
                    attempts=event.attempts,
                    tier=event.tier,
                    model_id=event.model_id,
                    task=event.task.model_dump(mode="json") if event.task else None,
                    failed_at=failed_at,
                    failure_path=failure_path,
                )
                row = _assign(row or Failure(**values), values)
            row.resolved = self._succeeded(session, event.experiment_id, event.task_id)
            session.add(row)
            _refresh_finished(session, experiment)
            session.commit()

    # ---- queries ---------------------------------------------------------------------------

    def experiment_ids(self) -> list[str]:
        """Oldest request first; experiments known only from their results sort last."""
        with Session(self.engine) as session:
            experiments = session.exec(select(Experiment)).all()
        ordered = sorted(
            experiments,
            key=lambda e: (
                e.requested_at is None,
                e.requested_at or datetime.min.replace(tzinfo=timezone.utc),
                e.experiment_id,
            ),
        )
        return [experiment.experiment_id for experiment in ordered]

    def finished_at_by_experiment(self) -> dict[str, datetime | None]:
        """Every experiment's `finished_at`, one narrow query: lets a poller tell which
        experiments' progress can have changed without computing any progress."""
        with Session(self.engine) as session:
            return dict(session.exec(select(Experiment.experiment_id, Experiment.finished_at)).all())

    def failed_tasks(self, experiment_id: str) -> list[TaskCreated]:
        """What `rerun --failed` republishes: unresolved failures that carried their task."""
        with Session(self.engine) as session:
            failures = session.exec(
                select(Failure)
                .where(Failure.experiment_id == experiment_id, Failure.resolved == False)  # noqa: E712
                .order_by(Failure.task_id)
            ).all()
        return [TaskCreated.model_validate(failure.task) for failure in failures if failure.task is not None]

    def progress(self, experiment_id: str) -> Progress:
        with Session(self.engine) as session:
            return _progress(session, experiment_id)

    # ---- cross-experiment CSVs ---------------------------------------------------------------

    def reconcile_csvs(self) -> None:
        """Finish appends a crash interrupted: rows still pending whose line may already be written."""
        for stage in CSV_COLUMNS:
            written = {
                (line["experiment_id"], line["task_id"])
                for line in read_csv_rows(self.layout.cross_experiment_csv(stage))
            }
            with Session(self.engine) as session:
                pending = session.exec(_pending_csv_rows(stage)).all()
                experiment_ids = sorted({row.experiment_id for row in pending})
                for row in pending:
                    if (row.experiment_id, row.task_id) in written:
                        row.csv_appended = True
                        session.add(row)
                session.commit()
            for experiment_id in experiment_ids:
                self._append_pending_csv_rows(stage, experiment_id)

    def _append_pending_csv_rows(self, stage: str, experiment_id: str) -> None:
        with Session(self.engine) as session:
            pending = session.exec(
                _pending_csv_rows(stage).where(RESULT_TABLES[stage].experiment_id == experiment_id)
            ).all()
            if not pending:
                return
            append_csv_rows(
                self.layout.cross_experiment_csv(stage),
                CSV_COLUMNS[stage],
                [csv_line(row, CSV_COLUMNS[stage]) for row in pending],
            )
            for row in pending:
                row.csv_appended = True
                session.add(row)
            session.commit()

    def _append_csv_line(self, stage: str, line: dict[str, Any] | None) -> None:
        """Called after the row's commit: an event can complete only its own row, so its line is
        the only one owed. The flag is set after the append, so a crash in between leaves a line
        that `reconcile_csvs` recognises, never a duplicate."""
        if line is None:
            return
        append_csv_rows(self.layout.cross_experiment_csv(stage), CSV_COLUMNS[stage], [line])
        table = RESULT_TABLES[stage]
        with self.engine.begin() as connection:
            connection.execute(
                update(table)
                .where(table.experiment_id == line["experiment_id"], table.task_id == line["task_id"])
                .values(csv_appended=True)
            )

    # ---- helpers ----------------------------------------------------------------------------

    def _write_result_artifacts(self, stage: str, task: TaskCreated, call: CallRecord) -> ResultFiles:
        names = partial(task_artifact_names, task.task_id, task.experiment_id)
        prompt = write_once(self.layout.prompts_dir(stage), names(".txt"), task.prompt)
        response = write_once(self.layout.responses_dir(stage), names(".txt"), call.text)
        record = {
            "experiment_id": task.experiment_id,
            "task_id": task.task_id,
            "stage": stage,
            "task": kept_task_fields(task),
            "call": call.model_dump(mode="json"),
            "prompt_path": self.layout.relative(prompt),
            "response_path": self.layout.relative(response),
            "prompt_chars": len(task.prompt),
        }
        call_file = write_once(self.layout.responses_dir(stage), names(".json"), to_json(record))
        return ResultFiles(
            prompt_path=record["prompt_path"],
            response_path=record["response_path"],
            call_path=self.layout.relative(call_file),
            prompt_chars=len(task.prompt),
        )

    def _experiment(self, session: Session, experiment_id: str) -> Experiment:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None:
            experiment = Experiment(experiment_id=experiment_id)
            session.add(experiment)
            session.flush()
        return experiment

    @staticmethod
    def _result_row(session: Session, table, experiment_id: str, task_id: str):
        return session.exec(select(table).where(table.experiment_id == experiment_id, table.task_id == task_id)).first()

    def _evaluation_row(self, session: Session, task: TaskCreated) -> EvaluationResult:
        row = self._result_row(session, EvaluationResult, task.experiment_id, task.task_id)
        if row is not None:
            return row
        return EvaluationResult(
            experiment_id=task.experiment_id,
            task_id=task.task_id,
            generation_task_id=task.generation_task_id,
            combo_id=task.combo_id,
            generation_template_id=task.generation_template_id,
            generation_model_id=task.generation_model_id,
            evaluation_template_id=task.evaluation_template_id or "",
            evaluation_model_id=task.evaluation_model_id or task.model.id,
            evaluation_model=task.model.model,
            tier=task.tier.tier,
            replicate=task.replicate,
            max_score=task.max_score,
            generation_truncated=task.generation_truncated,
            status="pending",
        )

    def _store_call(self, session: Session, task: TaskCreated, call: CallRecord) -> None:
        values = dict(
            experiment_id=task.experiment_id,
            task_id=task.task_id,
            stage=task.stage,
            model_id=task.model.id,
            model=task.model.model,
            tier=task.tier.tier,
            **call.model_dump(exclude={"text", "started_at", "finished_at"}),
            started_at=as_utc(call.started_at),
            finished_at=as_utc(call.finished_at),
        )
        row = self._result_row(session, LlmCall, task.experiment_id, task.task_id)
        session.add(_assign(row or LlmCall(**values), values))

    def _after_success(
        self, session: Session, experiment_id: str, task_id: str, started_at: datetime | None
    ) -> Experiment:
        """Ensures the experiment row (results may arrive before the request) and returns it."""
        experiment = self._experiment(session, experiment_id)
        experiment.started_at = _earliest(experiment.started_at, started_at)
        session.add(experiment)
        failure = self._result_row(session, Failure, experiment_id, task_id)
        if failure is not None and not failure.resolved:
            failure.resolved = True
            session.add(failure)
        return experiment

    def _succeeded(self, session: Session, experiment_id: str, task_id: str) -> bool:
        if self._result_row(session, GenerationResult, experiment_id, task_id) is not None:
            return True
        evaluation = self._result_row(session, EvaluationResult, experiment_id, task_id)
        return evaluation is not None and (evaluation.has_response or evaluation.has_score)

    @staticmethod
    def _add_combo_mappings(session: Session, mappings: list[ComboMapping]) -> None:
        combo_ids = {mapping.combo_id for mapping in mappings}
        known = set(
            session.exec(
                select(ComboMapping.combo_id, ComboMapping.concept_id).where(ComboMapping.combo_id.in_(combo_ids))
            ).all()
        )
        for mapping in mappings:
            if (mapping.combo_id, mapping.concept_id) not in known:
                known.add((mapping.combo_id, mapping.concept_id))
                session.add(mapping)


def _call_values(call: CallRecord, files: ResultFiles) -> dict[str, Any]:
    return dict(
        started_at=as_utc(call.started_at),
        finished_at=as_utc(call.finished_at),
        prompt_path=files.prompt_path,
        response_path=files.response_path,
        call_path=files.call_path,
        prompt_chars=files.prompt_chars,
        response_chars=len(call.text),
        prompt_tokens=call.prompt_tokens,
        completion_tokens=call.completion_tokens,
        reasoning_tokens=call.reasoning_tokens,
        cost_usd=call.cost_usd,
        finish_reason=call.finish_reason,
        truncated=call.truncated,
        cached=call.cached,
    )


def _assign(row: SQLModel, values: dict[str, Any]) -> SQLModel:
    for name, value in values.items():
        setattr(row, name, value)
    return row


def _evaluation_status(row: EvaluationResult) -> str:
    if not row.has_score:
        return "awaiting_score"
    if not row.has_response:
        return "awaiting_response"
    return "scored" if row.score is not None else "parse_error"


def _refresh_finished(session: Session, experiment: Experiment) -> None:
    """Keeps `finished_at` current inside the event's own transaction. The full progress runs only
    when the experiment may have finished or had been marked finished: run after every event, it
    alone cost a quarter of the tracker's time (bench/README.md)."""
    session.flush()
    if experiment.finished_at is None and not _may_be_finished(session, experiment):
        return
    finished_at = _progress(session, experiment.experiment_id).finished_at
    if experiment.finished_at != finished_at:
        experiment.finished_at = finished_at
        session.add(experiment)


def _owed_csv_line(stage: str, row: GenerationResult | EvaluationResult) -> dict[str, Any] | None:
    """The row's CSV line if it is complete and not yet appended: `_pending_csv_rows`'s conditions.
    Taken before the commit expires the row's attributes."""
    if row.csv_appended or (stage == "evaluation" and not (row.has_response and row.has_score)):
        return None
    return csv_line(row, CSV_COLUMNS[stage])


def _pending_csv_rows(stage: str):
    table = RESULT_TABLES[stage]
    query = select(table).where(table.csv_appended == False)  # noqa: E712
    if stage == "evaluation":
        query = query.where(table.has_response == True, table.has_score == True)  # noqa: E712
    return query.order_by(table.finished_at, table.task_id)


def csv_line(row: SQLModel, columns: tuple[str, ...]) -> dict[str, Any]:
    values = {column: getattr(row, column) for column in columns}
    return {column: value.isoformat() if isinstance(value, datetime) else value for column, value in values.items()}


def _count_true(condition):
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _may_be_finished(session: Session, experiment: Experiment) -> bool:
    """False only when the experiment certainly is not finished: scores, plus every unresolved
    failure counted as if it skipped a whole generation's evaluations, plus the truncated
    generations that will not be judged, still fall short of the planned evaluations. Two indexed
    counts, against the seven aggregate queries of `_progress`, which decides whenever this says
    True."""
    generations_planned = experiment.generation_tasks_planned
    evaluations_planned = experiment.evaluation_tasks_planned
    if generations_planned is None or evaluations_planned is None:
        return False
    if not generations_planned or not evaluations_planned:
        return True
    evaluations_per_generation = evaluations_planned // generations_planned
    experiment_id = experiment.experiment_id
    scored, failures = session.exec(
        select(
            select(func.count())
            .where(EvaluationResult.experiment_id == experiment_id, EvaluationResult.has_score == True)  # noqa: E712
            .scalar_subquery(),
            select(func.count())
            .where(Failure.experiment_id == experiment_id, Failure.resolved == False)  # noqa: E712
            .scalar_subquery(),
        )
    ).one()
    bound = scored + failures * max(evaluations_per_generation, 1)
    if not experiment.evaluate_truncated:
        truncated = session.exec(
            select(func.count()).where(GenerationResult.experiment_id == experiment_id,
                                       GenerationResult.truncated == True)  # noqa: E712
        ).one()
        bound += truncated * evaluations_per_generation
    return bound >= evaluations_planned


def _progress(session: Session, experiment_id: str) -> Progress:
    """Counts straight from SQL, so progress stays cheap for large experiments."""
    experiment = session.get(Experiment, experiment_id) or Experiment(experiment_id=experiment_id)
    by_tier = experiment.tasks_by_tier or {}
    done: dict[tuple[str, str], int] = defaultdict(int)
    failed: dict[tuple[str, str], int] = defaultdict(int)

    generations = session.exec(
        select(GenerationResult.tier, func.count(), _count_true(GenerationResult.truncated))
        .where(GenerationResult.experiment_id == experiment_id)
        .group_by(GenerationResult.tier)
    ).all()
    truncated_generations = 0
    for tier, count, truncated in generations:
        done["generation", tier] += count
        truncated_generations += truncated

    evaluations = session.exec(
        select(
            EvaluationResult.tier,
            _count_true(EvaluationResult.has_response),
            _count_true(EvaluationResult.has_score),
            _count_true(and_(EvaluationResult.has_score, EvaluationResult.score.is_(None))),
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
        .group_by(Failure.stage, Failure.tier, Failure.reason)
    ).all()
    failures_by_reason: dict[str, int] = defaultdict(int)
    failed_by_stage: dict[str, int] = defaultdict(int)
    for stage, tier, reason, count in failures:
        failures_by_reason[reason] += count
        if stage in PROGRESS_STAGES:
            failed_by_stage[stage] += count
            failed[stage, tier or "?"] += count

    prompt_tokens, completion_tokens, cost = session.exec(
        select(
            func.coalesce(func.sum(LlmCall.prompt_tokens), 0),
            func.coalesce(func.sum(LlmCall.completion_tokens), 0),
            func.coalesce(func.sum(LlmCall.cost_usd), 0.0),
        ).where(LlmCall.experiment_id == experiment_id)
    ).one()

    generations_planned = experiment.generation_tasks_planned
    evaluations_planned = experiment.evaluation_tasks_planned
    evaluations_per_generation = evaluations_planned // generations_planned if generations_planned else 0
    never_evaluated = failed_by_stage["generation"] + (0 if experiment.evaluate_truncated else truncated_generations)
    skipped = never_evaluated * evaluations_per_generation
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
        cost_usd=float(cost),
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
