"""Upserting the tracker's rows: every write is keyed on (experiment_id, task_id) and compares
before it changes anything. A redelivered event changes nothing; a newer call for the same task (a
rerun) replaces the row's values; a success resolves an earlier failure. A score re-emitted with the
verdict already recorded changes nothing, not even `scored_at`. Used by the tracker for each event
and by `rebuild` for each artifact file."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam
from sqlmodel import Session, SQLModel, col, select

from services.tracker.artifacts import Layout, ResultFiles
from services.tracker.csv_log import CsvLog, complete_line, owed_csv_lines, revise
from services.tracker.progress import refresh_finished
from services.tracker.tables import (
    CALL_USAGE_COLUMNS,
    ComboMapping,
    EvaluationResult,
    Experiment,
    Failure,
    GenerationResult,
    LlmCall,
)
from shared.events import (
    CallRecord,
    EvaluationScored,
    EvaluationTask,
    ExperimentPlanned,
    ExperimentRequested,
    GenerationTask,
    TaskCreated,
    TaskFailed,
)
from shared.ids import COMBO_ID_VERSION


def as_utc(moment: datetime) -> datetime:
    """Aware UTC, as the tables store it; a naive time is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


PRELOAD_CHUNK = 500
"""Task ids per `IN` list: well under SQLite's and PostgreSQL's bound-parameter limits."""
Row = TypeVar("Row", GenerationResult, EvaluationResult, LlmCall, Failure)
Model = TypeVar("Model", bound=SQLModel)


def _earliest(*moments: datetime | None) -> datetime | None:
    return min((m for m in moments if m is not None), default=None)



@dataclass
class _Batch:
    """What the stores of one transaction share: its session, the experiments they touched (whose
    `finished_at` is refreshed once, before the commit) and the CSV lines owed after it."""

    session: Session
    found: dict[tuple[Any, str, str], Any] = field(default_factory=dict)
    """Result, call and failure rows by (table, experiment_id, task_id), None for none: looked up
    in bulk by `preload`, kept as the stores create them."""
    experiments: dict[str, Experiment] = field(default_factory=dict)
    lines: dict[str, dict[tuple, dict[str, Any]]] = field(default_factory=lambda: {"generation": {}, "evaluation": {}})
    """By (experiment_id, task_id, revision): a row stored twice in one batch owes its line once."""


class Rows:
    """The single writer of the tables. Synchronous: the stores inside one `batch()` are one
    transaction, followed by one CSV append per stage and one statement flagging those lines; a
    store outside a batch is a batch of its own."""

    def __init__(self, layout: Layout, engine: Engine) -> None:
        self.layout = layout
        self.engine = engine
        self.csv_log = CsvLog(layout, engine)
        self._open: _Batch | None = None

    @contextmanager
    def batch(self) -> Iterator[Session]:
        """One transaction for every store inside it (nested batches join the outer one). An
        exception rolls the whole batch back and appends no CSV line: the events are redelivered,
        and every store is idempotent."""
        if self._open is not None:
            yield self._open.session
            return
        with Session(self.engine) as session:
            self._open = batch = _Batch(session)
            try:
                yield session
                for experiment in batch.experiments.values():
                    refresh_finished(session, experiment)
                self.layout.sync()
                session.commit()
            finally:
                self._open = None
        for stage, lines in batch.lines.items():
            self.csv_log.append(stage, list(lines.values()))

    def preload(self, keys: Iterable[tuple[Any, str, str]]) -> None:
        """Looks up, inside the open batch, the rows of these (table, experiment_id, task_id) in a
        few statements, so its stores find them without a query each (one each cost more than the
        rest of the store)."""
        assert self._open is not None
        found, session = self._open.found, self._open.session
        wanted: dict[tuple[Any, str], set[str]] = defaultdict(set)
        for table, experiment_id, task_id in keys:
            if (table, experiment_id, task_id) not in found:
                wanted[table, experiment_id].add(task_id)
        for (table, experiment_id), task_ids in wanted.items():
            for task_id in task_ids:
                found[table, experiment_id, task_id] = None
            ordered = sorted(task_ids)
            for start in range(0, len(ordered), PRELOAD_CHUNK):
                chunk = ordered[start:start + PRELOAD_CHUNK]
                for row in session.exec(
                    select(table).where(col(table.experiment_id) == experiment_id, col(table.task_id).in_(chunk))
                ):
                    found[table, experiment_id, row.task_id] = row

    def _touched(self, experiment: Experiment, *stages_and_lines: tuple[str, list[dict[str, Any]]]) -> None:
        assert self._open is not None
        self._open.experiments[experiment.experiment_id] = experiment
        for stage, lines in stages_and_lines:
            for line in lines:
                self._open.lines[stage][line["experiment_id"], line["task_id"], line["revision"]] = line

    def store_requested(self, event: ExperimentRequested) -> None:
        spec = event.spec
        with self.batch() as session:
            experiment = self._experiment(session, spec.experiment_id)
            experiment.name = spec.name
            experiment.k_max = spec.k_max
            experiment.description_level = spec.description_level
            experiment.replicates = spec.replicates
            experiment.evaluate_truncated = spec.evaluate_truncated
            experiment.snapshot_path = self.layout.relative(self.layout.experiment_dir(spec.experiment_id))
            experiment.requested_at = _earliest(experiment.requested_at, as_utc(event.emitted_at))
            session.add(experiment)
            self._touched(experiment)

    def store_planned(self, event: ExperimentPlanned) -> None:
        planned_at = as_utc(event.emitted_at)
        with self.batch() as session:
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
            self._touched(experiment)

    def store_combo_mappings(self, mappings: list[ComboMapping]) -> None:
        with self.batch() as session:
            self._add_combo_mappings(session, mappings)

    def store_generation(self, task: GenerationTask, call: CallRecord, files: ResultFiles) -> None:
        with self.batch() as session:
            row = self._result_row(session, GenerationResult, task.experiment_id, task.task_id)
            named: list[EvaluationResult] = []
            if row is None or as_utc(call.finished_at) > row.finished_at:
                before = complete_line("generation", row)
                values: dict[str, Any] = dict(
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
                row = self._kept(GenerationResult(**values) if row is None else _assign(row, values))
                revise("generation", row, before)
                session.add(row)
                self._store_call(session, task, call)
                named = self._name_generation_model(session, row)
            experiment = self._after_success(session, task.experiment_id, task.task_id, as_utc(call.started_at))
            self._touched(experiment, ("generation", owed_csv_lines("generation", [row])),
                          ("evaluation", owed_csv_lines("evaluation", named)))

    def store_evaluation(self, task: EvaluationTask, call: CallRecord, files: ResultFiles) -> None:
        with self.batch() as session:
            row = self._evaluation_row(session, task)
            if row.finished_at is None or as_utc(call.finished_at) > row.finished_at:
                before = complete_line("evaluation", row)
                _assign(row, {"has_response": True, **_call_values(call, files)})
                row.status = _evaluation_status(row)
                revise("evaluation", row, before)
                session.add(row)
                self._store_call(session, task, call)
            experiment = self._after_success(session, task.experiment_id, task.task_id, as_utc(call.started_at))
            self._touched(experiment, ("evaluation", owed_csv_lines("evaluation", [row])))

    def store_score(self, event: EvaluationScored, score_path: str) -> None:
        task = event.task
        scored_at = as_utc(event.emitted_at)
        with self.batch() as session:
            row = self._evaluation_row(session, task)
            if row.scored_at is None or scored_at > row.scored_at:
                before = complete_line("evaluation", row)
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
                revise("evaluation", row, before)
                session.add(row)
            experiment = self._after_success(session, task.experiment_id, task.task_id, None)
            self._touched(experiment, ("evaluation", owed_csv_lines("evaluation", [row])))

    def store_failure(self, event: TaskFailed, failure_path: str) -> None:
        failed_at = as_utc(event.emitted_at)
        with self.batch() as session:
            experiment = self._experiment(session, event.experiment_id)
            row = session.exec(
                select(Failure).where(Failure.experiment_id == event.experiment_id, Failure.task_id == event.task_id)
            ).first()
            if row is None or failed_at > row.failed_at:
                values: dict[str, Any] = dict(
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
                row = self._kept(Failure(**values) if row is None else _assign(row, values))
            row.resolved = self._succeeded(session, event.experiment_id, event.task_id)
            session.add(row)
            self._touched(experiment)

    def _experiment(self, session: Session, experiment_id: str) -> Experiment:
        experiment = session.get(Experiment, experiment_id)
        if experiment is None:
            experiment = Experiment(experiment_id=experiment_id)
            session.add(experiment)
            session.flush()
        return experiment

    def _result_row(self, session: Session, table, experiment_id: str, task_id: str):
        assert self._open is not None
        key = (table, experiment_id, task_id)
        if key not in self._open.found:
            self._open.found[key] = session.exec(
                _row_by_task(table), params={"experiment_id": experiment_id, "task_id": task_id}
            ).first()
        return self._open.found[key]

    def _kept(self, row: Row) -> Row:
        """A row this batch created (or updated), found by later lookups in the batch."""
        assert self._open is not None
        self._open.found[type(row), row.experiment_id, row.task_id] = row
        return row

    def _evaluation_row(self, session: Session, task: EvaluationTask) -> EvaluationResult:
        row = self._result_row(session, EvaluationResult, task.experiment_id, task.task_id)
        if row is not None:
            return row
        if not isinstance(task, EvaluationTask):
            raise TypeError(f"{task.task_id} is a {task.stage} task, not an evaluation")
        generation = self._result_row(session, GenerationResult, task.experiment_id, task.generation_task_id)
        return self._kept(EvaluationResult(
            experiment_id=task.experiment_id,
            task_id=task.task_id,
            generation_task_id=task.generation_task_id,
            combo_id=task.combo_id,
            generation_template_id=task.generation_template_id,
            generation_model_id=task.generation_model_id,
            generation_model=generation.generation_model if generation is not None else None,
            evaluation_template_id=task.evaluation_template_id or "",
            evaluation_model_id=task.evaluation_model_id or task.model.id,
            evaluation_model=task.model.model,
            tier=task.tier.tier,
            replicate=task.replicate,
            max_score=task.max_score,
            generation_truncated=task.generation_truncated,
            status="pending",
        ))

    @staticmethod
    def _name_generation_model(session: Session, generation: GenerationResult) -> list[EvaluationResult]:
        """Evaluations recorded before their generation learn its model's name; returns them, as
        some may now be complete and owed their first CSV line."""
        waiting = session.exec(
            select(EvaluationResult).where(
                EvaluationResult.experiment_id == generation.experiment_id,
                EvaluationResult.generation_task_id == generation.task_id,
                col(EvaluationResult.generation_model).is_(None),
            )
        ).all()
        for evaluation in waiting:
            evaluation.generation_model = generation.generation_model
            revise("evaluation", evaluation, None)
            session.add(evaluation)
        return list(waiting)

    def verdict_recorded(self, event: EvaluationScored) -> bool:
        with self.batch() as session:
            row = self._result_row(session, EvaluationResult, event.task.experiment_id, event.task.task_id)
            return row is not None and row.has_score and _verdict(row) == _verdict(event)

    def _store_call(self, session: Session, task: TaskCreated, call: CallRecord) -> None:
        values: dict[str, Any] = dict(
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
        session.add(self._kept(LlmCall(**values) if row is None else _assign(row, values)))

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
                select(ComboMapping.combo_id, ComboMapping.concept_id).where(col(ComboMapping.combo_id).in_(combo_ids))
            ).all()
        )
        for mapping in mappings:
            if (mapping.combo_id, mapping.concept_id) not in known:
                known.add((mapping.combo_id, mapping.concept_id))
                session.add(mapping)


def rows_looked_up(event: object) -> list[tuple[Any, str, str]]:
    """The (table, experiment_id, task_id) an event's store looks up, for `Rows.preload`."""
    if isinstance(event, TaskFailed):
        return [(table, event.experiment_id, event.task_id) for table in (Failure, GenerationResult, EvaluationResult)]
    task: TaskCreated | None = getattr(event, "task", None)
    if task is None:
        return []
    own = (GenerationResult, EvaluationResult, LlmCall, Failure)
    return [
        *((table, task.experiment_id, task.task_id) for table in own),
        (GenerationResult, task.experiment_id, task.generation_task_id),
    ]


@cache
def _row_by_task(table):
    """Built once per table: building and coercing the statement anew for each of the several
    lookups an event makes cost more than running it."""
    return select(table).where(table.experiment_id == bindparam("experiment_id"), table.task_id == bindparam("task_id"))


def _call_values(call: CallRecord, files: ResultFiles) -> dict[str, Any]:
    return dict(
        started_at=as_utc(call.started_at),
        finished_at=as_utc(call.finished_at),
        prompt_path=files.prompt_path,
        response_path=files.response_path,
        call_path=files.call_path,
        prompt_chars=files.prompt_chars,
        response_chars=len(call.text),
        **call.model_dump(include=set(CALL_USAGE_COLUMNS)),
    )


def _assign(row: Model, values: dict[str, Any]) -> Model:
    for name, value in values.items():
        setattr(row, name, value)
    return row


def _verdict(scored: EvaluationResult | EvaluationScored) -> tuple:
    return scored.score, scored.parse_error, scored.parser, tuple(scored.candidates or ())


def _evaluation_status(row: EvaluationResult) -> str:
    if not row.has_score:
        return "awaiting_score"
    if not row.has_response:
        return "awaiting_response"
    return "scored" if row.score is not None else "parse_error"


