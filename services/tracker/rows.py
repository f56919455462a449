"""Upserting the tracker's rows: every write is keyed on (experiment_id, task_id) and compares
before it changes anything. A redelivered event changes nothing; a newer call for the same task (a
rerun) replaces the row's values; a success resolves an earlier failure. A score re-emitted with the
verdict already recorded changes nothing, not even `scored_at`. Used by the tracker for each event
and by `rebuild` for each artifact file.

The stores work on plain dicts, one per row, looked up in bulk and kept for the batch; the batch
writes the rows it created and those whose values differ from the database's in a few bulk
statements before its commit (the ORM's unit of work cost more than the rest of recording)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import ColumnDefault, Connection, Engine, Table, UniqueConstraint, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

from services.tracker.artifacts import Layout, ResultFiles
from services.tracker.csv_log import CsvLog, complete_line, owed_csv_lines, revise
from services.tracker.progress import current_finished_at
from services.tracker.stages import RESULT_STAGES
from services.tracker.tables import (
    CALL_USAGE_COLUMNS,
    ComboMapping,
    EvaluationResult,
    Experiment,
    Failure,
    GenerationResult,
    LlmCall,
    sa_table,
)
from shared.events import (
    CallRecord,
    EvaluationScored,
    EvaluationTask,
    ExperimentPlanned,
    ExperimentRequested,
    GenerationDone,
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
WRITE_ORDER = (Experiment, GenerationResult, EvaluationResult, LlmCall, Failure)
"""Experiments first: `current_finished_at` reads them back before the commit."""
INSERTS: dict[str, Callable[[Table], Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
"""Each dialect's insert, the one with `on conflict`."""
Values = dict[str, Any]


def _earliest(*moments: datetime | None) -> datetime | None:
    return min((m for m in moments if m is not None), default=None)


@dataclass(frozen=True)
class _Shape:
    """What the batch needs to know of a table, read once from its SQLModel definition."""

    table: Table
    key: tuple[str, ...]
    """The columns a row is found by: its unique constraint, else its primary key."""
    defaults: Values
    """Every column a store writes (the generated id left out), with its default."""


@cache
def _shape(model: type[SQLModel]) -> _Shape:
    table = sa_table(model)
    unique = [constraint for constraint in table.constraints if isinstance(constraint, UniqueConstraint)]
    key = tuple(unique[0].columns.keys() if unique else table.primary_key.columns.keys())
    generated = table.autoincrement_column
    defaults = {
        column.name: column.default.arg if isinstance(column.default, ColumnDefault) and column.default.is_scalar else None
        for column in table.columns
        if column is not generated
    }
    return _Shape(table, key, defaults)


@dataclass
class _Batch:
    """What the stores of one transaction share: its session, the rows they looked up or created,
    the experiments they touched (whose `finished_at` is refreshed once, before the commit) and the
    CSV lines owed after it."""

    session: Session
    connection: Connection
    found: dict[tuple, Values | None] = field(default_factory=dict)
    """Rows by (model, *key), None for none: looked up in bulk by `preload`, kept as stores create them."""
    in_database: dict[tuple, Values] = field(default_factory=dict)
    """The values each row found had in the database: a row is written only if they changed."""
    evaluations_by_generation: dict[tuple[str, str], dict[str, Values]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    """The evaluation rows kept, by (experiment_id, generation_task_id) then task_id."""
    awaiting_looked_up: set[tuple[str, str]] = field(default_factory=set)
    """(experiment_id, generation_task_id) whose evaluations awaiting the generation's model are kept."""
    experiments: set[str] = field(default_factory=set)
    lines: dict[str, dict[tuple, Values]] = field(default_factory=lambda: {stage: {} for stage in RESULT_STAGES})
    """By (experiment_id, task_id, revision): a row stored twice in one batch owes its line once."""

    def keep(self, model: type[SQLModel], row: Values, *, in_database: bool) -> Values:
        key = (model, *(row[column] for column in _shape(model).key))
        self.found[key] = row
        if in_database:
            self.in_database[key] = dict(row)
        if model is EvaluationResult:
            self.evaluations_by_generation[row["experiment_id"], row["generation_task_id"]][row["task_id"]] = row
        return row

    def write(self) -> None:
        """The created rows inserted, the changed ones updated: two statements per table at most."""
        for model in WRITE_ORDER:
            created, changed = [], []
            for key, row in self.found.items():
                if key[0] is not model or row is None:
                    continue
                if key not in self.in_database:
                    created.append(row)
                elif row != self.in_database[key]:
                    changed.append(row)
            if created:
                self.connection.execute(_upsert(self.connection.dialect.name, model), created)
            if changed:
                _update(self.connection, model, changed)


def _update(connection: Connection, model: type[SQLModel], rows: list[Values]) -> None:
    """One executemany: each row's columns other than its key, the row found by its key."""
    key = _shape(model).key
    connection.execute(
        _update_by_key(model),
        [{**{name: value for name, value in row.items() if name not in key}, **{f"key_{name}": row[name] for name in key}}
         for row in rows],
    )


@cache
def _update_by_key(model: type[SQLModel]):
    table = _shape(model).table
    return update(table).where(*(table.c[name] == bindparam(f"key_{name}") for name in _shape(model).key))


@cache
def _upsert(dialect: str, model: type[SQLModel]):
    """An insert that, should the key exist after all, updates that row to the new values."""
    shape = _shape(model)
    statement = INSERTS[dialect](shape.table)
    return statement.on_conflict_do_update(
        index_elements=list(shape.key),
        set_={name: statement.excluded[name] for name in shape.defaults if name not in shape.key},
    )


@cache
def _insert_new(dialect: str, model: type[SQLModel]):
    """An insert that leaves an existing row with the same key as it is."""
    return INSERTS[dialect](_shape(model).table).on_conflict_do_nothing(index_elements=list(_shape(model).key))


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
    def batch(self) -> Iterator[None]:
        """One transaction for every store inside it (nested batches join the outer one). An
        exception rolls the whole batch back and appends no CSV line: the events are redelivered,
        and every store is idempotent."""
        if self._open is not None:
            yield
            return
        with Session(self.engine) as session:
            self._open = batch = _Batch(session, session.connection())
            try:
                yield
                batch.write()
                self._refresh_finished(batch)
                self.layout.sync()
                session.commit()
            finally:
                self._open = None
        for stage, lines in batch.lines.items():
            self.csv_log.append(stage, list(lines.values()))

    @staticmethod
    def _refresh_finished(batch: _Batch) -> None:
        """Once per experiment the batch touched, from the rows as written."""
        finished = []
        for experiment_id in batch.experiments:
            experiment = batch.found[Experiment, experiment_id]
            assert experiment is not None
            finished_at = current_finished_at(batch.session, experiment)
            if finished_at != experiment["finished_at"]:
                finished.append({"experiment_id": experiment_id, "finished_at": finished_at})
        if finished:
            _update(batch.connection, Experiment, finished)

    def preload(self, events: Iterable[object]) -> None:
        """Looks up, inside the open batch, the rows these events' stores need in a few statements,
        so the stores find them without a query each (one each cost more than the rest of the store)."""
        batch = self._batch()
        wanted: dict[tuple[Any, str], set[str]] = defaultdict(set)
        awaiting: dict[str, set[str]] = defaultdict(set)
        for event in events:
            for model, experiment_id, task_id in _rows_looked_up(event):
                if (model, experiment_id, task_id) not in batch.found:
                    wanted[model, experiment_id].add(task_id)
            if isinstance(event, GenerationDone):
                awaiting[event.task.experiment_id].add(event.task.task_id)
        for (model, experiment_id), task_ids in wanted.items():
            for task_id in task_ids:
                batch.found[model, experiment_id, task_id] = None
            table = _shape(model).table
            for chunk in _chunks(task_ids):
                self._load(model, table.c.experiment_id == experiment_id, table.c.task_id.in_(chunk))
        for experiment_id, generation_task_ids in awaiting.items():
            for chunk in _chunks({task_id for task_id in generation_task_ids
                                  if (experiment_id, task_id) not in batch.awaiting_looked_up}):
                self._load_awaiting(experiment_id, chunk)

    def _batch(self) -> _Batch:
        assert self._open is not None, "stores run inside Rows.batch()"
        return self._open

    def _load(self, model: type[SQLModel], *conditions) -> None:
        """Keeps the rows found, unless the batch already holds them (its values are newer)."""
        batch = self._batch()
        shape = _shape(model)
        for found in batch.connection.execute(select(shape.table).where(*conditions)).mappings():
            row = {name: found[name] for name in shape.defaults}
            if batch.found.get((model, *(row[name] for name in shape.key))) is None:
                batch.keep(model, row, in_database=True)

    def _load_awaiting(self, experiment_id: str, generation_task_ids: list[str]) -> None:
        table = _shape(EvaluationResult).table
        self._load(
            EvaluationResult,
            table.c.experiment_id == experiment_id,
            table.c.generation_task_id.in_(generation_task_ids),
            table.c.generation_model.is_(None),
        )
        self._batch().awaiting_looked_up.update((experiment_id, task_id) for task_id in generation_task_ids)

    def _row(self, model: type[SQLModel], *key: str) -> Values | None:
        batch = self._batch()
        if (model, *key) not in batch.found:
            batch.found[model, *key] = None
            table = _shape(model).table
            self._load(model, *(table.c[name] == value for name, value in zip(_shape(model).key, key, strict=True)))
        return batch.found[model, *key]

    def _updated(self, model: type[SQLModel], row: Values | None, values: Values) -> Values:
        """The row with these values, created (and kept for the batch) if there was none."""
        if row is None:
            return self._batch().keep(model, {**_shape(model).defaults, **values}, in_database=False)
        row.update(values)
        return row

    def _touched(self, experiment: Values, *stages_and_lines: tuple[str, list[Values]]) -> None:
        batch = self._batch()
        batch.experiments.add(experiment["experiment_id"])
        for stage, lines in stages_and_lines:
            for line in lines:
                batch.lines[stage][line["experiment_id"], line["task_id"], line["revision"]] = line

    def store_requested(self, event: ExperimentRequested) -> None:
        spec = event.spec
        with self.batch():
            experiment = self._experiment(spec.experiment_id)
            experiment.update(
                name=spec.name,
                k_max=spec.k_max,
                description_level=spec.description_level,
                replicates=spec.replicates,
                evaluate_truncated=spec.evaluate_truncated,
                snapshot_path=self.layout.relative(self.layout.experiment_dir(spec.experiment_id)),
                requested_at=_earliest(experiment["requested_at"], as_utc(event.emitted_at)),
            )
            self._touched(experiment)

    def store_planned(self, event: ExperimentPlanned) -> None:
        planned_at = as_utc(event.emitted_at)
        with self.batch():
            experiment = self._experiment(event.experiment_id)
            if experiment["planned_at"] is None or planned_at >= experiment["planned_at"]:
                experiment.update(
                    name=experiment["name"] or event.name,
                    k_max=experiment["k_max"] or event.k_max,
                    description_level=experiment["description_level"] or event.description_level,
                    replicates=experiment["replicates"] or event.replicates,
                    generation_tasks_planned=event.generation_tasks,
                    evaluation_tasks_planned=event.evaluation_tasks,
                    tasks_by_tier=event.tasks_by_tier,
                    planned_at=planned_at,
                )
            self._add_combo_mappings([
                dict(
                    combo_id=combo.combo_id,
                    concept_id=concept_id,
                    description_level=event.description_level,
                    k_max=event.k_max,
                    version=COMBO_ID_VERSION,
                    created_at=planned_at,
                )
                for combo in event.combos
                for concept_id in combo.concept_ids
            ])
            self._touched(experiment)

    def store_combo_mappings(self, mappings: list[ComboMapping]) -> None:
        with self.batch():
            self._add_combo_mappings([mapping.model_dump(exclude={"id"}) for mapping in mappings])

    def store_generation(self, task: GenerationTask, call: CallRecord, files: ResultFiles) -> None:
        with self.batch():
            row = self._row(GenerationResult, task.experiment_id, task.task_id)
            named: list[Values] = []
            if row is None or as_utc(call.finished_at) > row["finished_at"]:
                before = complete_line("generation", row)
                row = self._updated(GenerationResult, row, dict(
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
                ))
                revise("generation", row, before)
                self._store_call(task, call)
                named = self._name_generation_model(row)
            experiment = self._after_success(task.experiment_id, task.task_id, as_utc(call.started_at))
            self._touched(experiment, ("generation", owed_csv_lines("generation", [row])),
                          ("evaluation", owed_csv_lines("evaluation", named)))

    def store_evaluation(self, task: EvaluationTask, call: CallRecord, files: ResultFiles) -> None:
        with self.batch():
            row = self._evaluation_row(task)
            if row["finished_at"] is None or as_utc(call.finished_at) > row["finished_at"]:
                before = complete_line("evaluation", row)
                row.update(has_response=True, **_call_values(call, files))
                row["status"] = _evaluation_status(row)
                revise("evaluation", row, before)
                self._store_call(task, call)
            experiment = self._after_success(task.experiment_id, task.task_id, as_utc(call.started_at))
            self._touched(experiment, ("evaluation", owed_csv_lines("evaluation", [row])))

    def store_score(self, event: EvaluationScored, score_path: str) -> None:
        task = event.task
        scored_at = as_utc(event.emitted_at)
        with self.batch():
            row = self._evaluation_row(task)
            if row["scored_at"] is None or scored_at > row["scored_at"]:
                before = complete_line("evaluation", row)
                row.update(
                    has_score=True,
                    score=event.score,
                    parse_error=event.parse_error,
                    parser=event.parser,
                    candidates=list(event.candidates),
                    score_path=score_path,
                    scored_at=scored_at,
                )
                row["status"] = _evaluation_status(row)
                revise("evaluation", row, before)
            experiment = self._after_success(task.experiment_id, task.task_id, None)
            self._touched(experiment, ("evaluation", owed_csv_lines("evaluation", [row])))

    def store_failure(self, event: TaskFailed, failure_path: str) -> None:
        failed_at = as_utc(event.emitted_at)
        with self.batch():
            experiment = self._experiment(event.experiment_id)
            row = self._row(Failure, event.experiment_id, event.task_id)
            if row is None or failed_at > row["failed_at"]:
                row = self._updated(Failure, row, dict(
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
                ))
            row["resolved"] = self._succeeded(event.experiment_id, event.task_id)
            self._touched(experiment)

    def _experiment(self, experiment_id: str) -> Values:
        experiment = self._row(Experiment, experiment_id)
        return experiment or self._updated(Experiment, None, {"experiment_id": experiment_id})

    def _evaluation_row(self, task: TaskCreated) -> Values:
        row = self._row(EvaluationResult, task.experiment_id, task.task_id)
        if row is not None:
            return row
        if not isinstance(task, EvaluationTask):
            raise TypeError(f"{task.task_id} is a {task.stage} task, not an evaluation")
        generation = self._row(GenerationResult, task.experiment_id, task.generation_task_id)
        return self._updated(EvaluationResult, None, dict(
            experiment_id=task.experiment_id,
            task_id=task.task_id,
            generation_task_id=task.generation_task_id,
            combo_id=task.combo_id,
            generation_template_id=task.generation_template_id,
            generation_model_id=task.generation_model_id,
            generation_model=generation["generation_model"] if generation is not None else None,
            evaluation_template_id=task.evaluation_template_id or "",
            evaluation_model_id=task.evaluation_model_id or task.model.id,
            evaluation_model=task.model.model,
            tier=task.tier.tier,
            replicate=task.replicate,
            max_score=task.max_score,
            generation_truncated=task.generation_truncated,
            status="pending",
        ))

    def _name_generation_model(self, generation: Values) -> list[Values]:
        """Evaluations recorded before their generation learn its model's name; returns them, as
        some may now be complete and owed their first CSV line."""
        batch = self._batch()
        key = (generation["experiment_id"], generation["task_id"])
        if key not in batch.awaiting_looked_up:
            self._load_awaiting(generation["experiment_id"], [generation["task_id"]])
        waiting = [row for row in batch.evaluations_by_generation[key].values() if row["generation_model"] is None]
        for evaluation in waiting:
            evaluation["generation_model"] = generation["generation_model"]
            revise("evaluation", evaluation, None)
        return waiting

    def verdict_recorded(self, event: EvaluationScored) -> bool:
        with self.batch():
            row = self._row(EvaluationResult, event.task.experiment_id, event.task.task_id)
            return row is not None and row["has_score"] and _verdict(
                row["score"], row["parse_error"], row["parser"], row["candidates"]
            ) == _verdict(event.score, event.parse_error, event.parser, event.candidates)

    def _store_call(self, task: TaskCreated, call: CallRecord) -> None:
        row = self._row(LlmCall, task.experiment_id, task.task_id)
        self._updated(LlmCall, row, dict(
            experiment_id=task.experiment_id,
            task_id=task.task_id,
            stage=task.stage,
            model_id=task.model.id,
            model=task.model.model,
            tier=task.tier.tier,
            **call.model_dump(exclude={"text", "started_at", "finished_at"}),
            started_at=as_utc(call.started_at),
            finished_at=as_utc(call.finished_at),
        ))

    def _after_success(self, experiment_id: str, task_id: str, started_at: datetime | None) -> Values:
        """Ensures the experiment row (results may arrive before the request) and returns it."""
        experiment = self._experiment(experiment_id)
        experiment["started_at"] = _earliest(experiment["started_at"], started_at)
        failure = self._row(Failure, experiment_id, task_id)
        if failure is not None:
            failure["resolved"] = True
        return experiment

    def _succeeded(self, experiment_id: str, task_id: str) -> bool:
        if self._row(GenerationResult, experiment_id, task_id) is not None:
            return True
        evaluation = self._row(EvaluationResult, experiment_id, task_id)
        return evaluation is not None and bool(evaluation["has_response"] or evaluation["has_score"])

    def _add_combo_mappings(self, mappings: list[Values]) -> None:
        if mappings:
            connection = self._batch().connection
            connection.execute(_insert_new(connection.dialect.name, ComboMapping), mappings)


def _rows_looked_up(event: object) -> list[tuple[Any, str, str]]:
    """The (model, experiment_id, task_id) an event's store looks up, for `Rows.preload`."""
    if isinstance(event, TaskFailed):
        return [(model, event.experiment_id, event.task_id) for model in (Failure, GenerationResult, EvaluationResult)]
    task: TaskCreated | None = getattr(event, "task", None)
    if task is None:
        return []
    own = (GenerationResult, EvaluationResult, LlmCall, Failure)
    return [
        *((model, task.experiment_id, task.task_id) for model in own),
        (GenerationResult, task.experiment_id, task.generation_task_id),
    ]


def _chunks(task_ids: set[str]) -> Iterator[list[str]]:
    ordered = sorted(task_ids)
    for start in range(0, len(ordered), PRELOAD_CHUNK):
        yield ordered[start:start + PRELOAD_CHUNK]


def _call_values(call: CallRecord, files: ResultFiles) -> Values:
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


def _verdict(score: float | None, parse_error: str | None, parser: str | None, candidates) -> tuple:
    return score, parse_error, parser, tuple(candidates or ())


def _evaluation_status(row: Values) -> str:
    if not row["has_score"]:
        return "awaiting_score"
    if not row["has_response"]:
        return "awaiting_response"
    return "scored" if row["score"] is not None else "parse_error"
