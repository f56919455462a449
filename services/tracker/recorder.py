"""The tracker: turns events into artifact files, table rows and cross-experiment CSV lines.

Events arrive in any order and more than once. Every write is keyed on (experiment_id, task_id)
and compares before it changes anything: a redelivered event changes nothing; a newer call for the
same task (a rerun) replaces the row's values; a success resolves an earlier failure.

Cross-experiment CSVs are append-only logs of each result's states. A line is appended when a row
becomes complete, and again whenever a complete row's values change (a rerun's newer call, a re-score
with another verdict); each line carries the row's `revision`, 1 for its first complete state. Rule
for readers: per (experiment_id, task_id), the line with the highest revision — also the last one in
the file — is the current state; earlier lines are history. A generation is complete when recorded;
an evaluation once its answer, its score and its generation (which names the generation model) are.
A score re-emitted with the verdict already recorded changes nothing, not even `scored_at`.

`csv_appended` says the current revision's line is in the CSV; it is committed right after the
append. A crash between the two leaves the flag false with the line already written; the tracker
service calls `reconcile_csvs()` on start, which appends only the pending revisions not in the CSV
yet and sets their flags. A CSV with an earlier DayDream's header (without `revision`, and for
evaluations `generation_model`) is never appended to: the tracker refuses to start on one
(`reconcile_csvs` raises, naming the file and the fix, `daydream rebuild`, which rewrites it from the
artifacts). It is not migrated in place: its lines cannot be told apart from stale ones. Constructing
a `Tracker` writes nothing, so commands may use one for queries.

Artifacts are written before the row that names them, so a row never points at a file that was
never written, and every artifact carries what its row needs (see `rebuild`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache, partial
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, Field
from sqlalchemy import Engine, and_, bindparam, case, func, update
from sqlmodel import Session, SQLModel, select

from services.tracker.artifacts import (
    CsvHeaderMismatch,
    Layout,
    append_csv_rows,
    read_csv_header,
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
    SKIPPED_TRUNCATED_GENERATION,
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
    "experiment_id", "task_id", "revision", "combo_id", "generation_template_id", "generation_model_id",
    "generation_model", "tier", "replicate", "status", "started_at", "finished_at",
    "prompt_path", "response_path", "call_path", "prompt_chars", "response_chars",
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost_usd", "finish_reason",
    "truncated", "cached",
)  # fmt: skip
EVALUATION_CSV_COLUMNS = (
    "experiment_id", "task_id", "revision", "generation_task_id", "combo_id", "generation_template_id",
    "generation_model_id", "generation_model", "evaluation_template_id", "evaluation_model_id", "evaluation_model",
    "tier", "replicate", "status", "started_at", "finished_at", "scored_at",
    "prompt_path", "response_path", "call_path", "score_path", "prompt_chars", "response_chars",
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "cost_usd", "finish_reason",
    "truncated", "cached", "generation_truncated", "score", "max_score", "parse_error", "parser",
)  # fmt: skip
CSV_COLUMNS = {"generation": GENERATION_CSV_COLUMNS, "evaluation": EVALUATION_CSV_COLUMNS}
ADDED_CSV_COLUMNS = {"generation": ("revision",), "evaluation": ("revision", "generation_model")}
"""Columns an earlier DayDream did not write."""
EARLIER_CSV_COLUMNS = {
    stage: tuple(column for column in columns if column not in ADDED_CSV_COLUMNS[stage])
    for stage, columns in CSV_COLUMNS.items()
}
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
    """Spent: a reused (cached) response carries its first call's cost but costs nothing again."""
    cost_saved_usd: float = 0.0
    """What the reused responses cost when they were first paid for."""
    planning_error: str | None = None
    """Why the combiner refused to plan the experiment: then no task will ever come."""
    finished: bool = False
    finished_at: datetime | None = None


@dataclass(frozen=True)
class CsvHeaderProblem:
    """Why a cross-experiment CSV must not be appended to, and what to do about it."""

    kind: str
    """outdated_csv (an earlier DayDream's header) or foreign_csv."""
    detail: str
    fix: str

    def __str__(self) -> str:
        return f"{self.detail}; fix: {self.fix}"


def csv_header_problem(path: Path, stage: str) -> CsvHeaderProblem | None:
    """None when the CSV is absent, empty or has this tracker's header."""
    if not path.exists() or not path.stat().st_size:
        return None
    header = tuple(read_csv_header(path))
    if header == CSV_COLUMNS[stage]:
        return None
    if header == EARLIER_CSV_COLUMNS[stage]:
        return CsvHeaderProblem(
            "outdated_csv",
            f"{path} was written by an earlier DayDream (it lacks {', '.join(ADDED_CSV_COLUMNS[stage])})",
            "run `daydream rebuild`: it rewrites the file from the artifacts",
        )
    return CsvHeaderProblem(
        "foreign_csv",
        f"{path} has columns this tracker did not write",
        "move it aside (it is kept as it is), then run `daydream rebuild`",
    )


@dataclass(frozen=True)
class ResultFiles:
    """Where one result's artifacts are, relative to the data directory."""

    prompt_path: str
    response_path: str
    call_path: str
    prompt_chars: int


class RecordedGeneration(NamedTuple):
    """A generation's text, read back from its response file, and whether it was cut short."""

    text: str
    truncated: bool


@dataclass(frozen=True)
class RecordedResults:
    """What `daydream rerun` needs to know of an experiment's results: each recorded generation
    (its text renders its evaluations' prompts) and the evaluations that reported and were parsed."""

    generations: dict[str, RecordedGeneration]
    evaluations: set[str]


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
        """A re-emitted score whose verdict is already recorded (the parser read the same answer
        again) writes no file and changes no row."""
        if self._verdict_recorded(event):
            return
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
            named: list[EvaluationResult] = []
            if row is None or as_utc(call.finished_at) > row.finished_at:
                before = _complete_line("generation", row)
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
                _revise("generation", row, before)
                session.add(row)
                self._store_call(session, task, call)
                named = self._name_generation_model(session, row)
            experiment = self._after_success(session, task.experiment_id, task.task_id, as_utc(call.started_at))
            _refresh_finished(session, experiment)
            generation_lines = _owed_csv_lines("generation", [row])
            evaluation_lines = _owed_csv_lines("evaluation", named)
            session.commit()
        self._append_csv_lines("generation", generation_lines)
        self._append_csv_lines("evaluation", evaluation_lines)

    def store_evaluation(self, task: TaskCreated, call: CallRecord, files: ResultFiles) -> None:
        with Session(self.engine) as session:
            row = self._evaluation_row(session, task)
            if row.finished_at is None or as_utc(call.finished_at) > row.finished_at:
                before = _complete_line("evaluation", row)
                _assign(row, {"has_response": True, **_call_values(call, files)})
                row.status = _evaluation_status(row)
                _revise("evaluation", row, before)
                session.add(row)
                self._store_call(session, task, call)
            experiment = self._after_success(session, task.experiment_id, task.task_id, as_utc(call.started_at))
            _refresh_finished(session, experiment)
            lines = _owed_csv_lines("evaluation", [row])
            session.commit()
        self._append_csv_lines("evaluation", lines)

    def store_score(self, event: EvaluationScored, score_path: str) -> None:
        task = event.task
        scored_at = as_utc(event.emitted_at)
        with Session(self.engine) as session:
            row = self._evaluation_row(session, task)
            if row.scored_at is None or scored_at > row.scored_at:
                before = _complete_line("evaluation", row)
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
                _revise("evaluation", row, before)
                session.add(row)
            experiment = self._after_success(session, task.experiment_id, task.task_id, None)
            _refresh_finished(session, experiment)
            lines = _owed_csv_lines("evaluation", [row])
            session.commit()
        self._append_csv_lines("evaluation", lines)

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

    def recorded_results(self, experiment_id: str) -> RecordedResults:
        with Session(self.engine) as session:
            generations = session.exec(
                select(GenerationResult.task_id, GenerationResult.response_path, GenerationResult.truncated).where(
                    GenerationResult.experiment_id == experiment_id
                )
            ).all()
            evaluations = session.exec(
                select(EvaluationResult.task_id).where(EvaluationResult.experiment_id == experiment_id,
                                                       EvaluationResult.has_response == True,  # noqa: E712
                                                       EvaluationResult.has_score == True)  # noqa: E712
            ).all()
        return RecordedResults(
            generations={
                task_id: RecordedGeneration(
                    text=self.layout.absolute(response_path).read_text(encoding="utf-8"), truncated=truncated
                )
                for task_id, response_path, truncated in generations
            },
            evaluations=set(evaluations),
        )

    def progress(self, experiment_id: str) -> Progress:
        with Session(self.engine) as session:
            return _progress(session, experiment_id)

    # ---- cross-experiment CSVs ---------------------------------------------------------------

    def reconcile_csvs(self) -> None:
        """Finish appends a crash interrupted: pending revisions whose line may already be written.
        Refuses, before touching anything, a CSV it must not append to (see the module docstring)."""
        for stage in CSV_COLUMNS:
            problem = csv_header_problem(self.layout.cross_experiment_csv(stage), stage)
            if problem is not None:
                raise CsvHeaderMismatch(str(problem))
        for stage in CSV_COLUMNS:
            written = {
                (line["experiment_id"], line["task_id"], line["revision"])
                for line in read_csv_rows(self.layout.cross_experiment_csv(stage))
            }
            with Session(self.engine) as session:
                pending = session.exec(_pending_csv_rows(stage)).all()
                experiment_ids = sorted({row.experiment_id for row in pending})
                for row in pending:
                    if (row.experiment_id, row.task_id, str(row.revision)) in written:
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

    def _append_csv_lines(self, stage: str, lines: list[dict[str, Any]]) -> None:
        """Called after the event's commit with the lines it owes: its own row's, and for a
        generation those of the evaluations that were waiting for its model's name. The flags are
        set after the append, so a crash in between leaves lines that `reconcile_csvs` recognises,
        never a duplicate."""
        if not lines:
            return
        append_csv_rows(self.layout.cross_experiment_csv(stage), CSV_COLUMNS[stage], lines)
        table = RESULT_TABLES[stage]
        with self.engine.begin() as connection:
            for line in lines:
                connection.execute(
                    update(table)
                    .where(
                        table.experiment_id == line["experiment_id"],
                        table.task_id == line["task_id"],
                        table.revision == line["revision"],
                    )
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
        return session.exec(_row_by_task(table), params={"experiment_id": experiment_id, "task_id": task_id}).first()

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
            generation_model=session.exec(
                select(GenerationResult.generation_model).where(
                    GenerationResult.experiment_id == task.experiment_id,
                    GenerationResult.task_id == task.generation_task_id,
                )
            ).first(),
            evaluation_template_id=task.evaluation_template_id or "",
            evaluation_model_id=task.evaluation_model_id or task.model.id,
            evaluation_model=task.model.model,
            tier=task.tier.tier,
            replicate=task.replicate,
            max_score=task.max_score,
            generation_truncated=task.generation_truncated,
            status="pending",
        )

    @staticmethod
    def _name_generation_model(session: Session, generation: GenerationResult) -> list[EvaluationResult]:
        """Evaluations recorded before their generation learn its model's name; returns them, as
        some may now be complete and owed their first CSV line."""
        waiting = session.exec(
            select(EvaluationResult).where(
                EvaluationResult.experiment_id == generation.experiment_id,
                EvaluationResult.generation_task_id == generation.task_id,
                EvaluationResult.generation_model.is_(None),
            )
        ).all()
        for evaluation in waiting:
            evaluation.generation_model = generation.generation_model
            _revise("evaluation", evaluation, None)
            session.add(evaluation)
        return list(waiting)

    def _verdict_recorded(self, event: EvaluationScored) -> bool:
        with Session(self.engine) as session:
            row = self._result_row(session, EvaluationResult, event.task.experiment_id, event.task.task_id)
        return row is not None and row.has_score and _verdict(row) == _verdict(event)

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


def _verdict(scored: EvaluationResult | EvaluationScored) -> tuple:
    return scored.score, scored.parse_error, scored.parser, tuple(scored.candidates or ())


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


def _is_complete(stage: str, row: GenerationResult | EvaluationResult) -> bool:
    """Whether the row has a CSV line; `_pending_csv_rows` asks the same in SQL."""
    return stage == "generation" or (row.has_response and row.has_score and row.generation_model is not None)


def _complete_line(stage: str, row: GenerationResult | EvaluationResult | None) -> dict[str, Any] | None:
    """The row's CSV line as it stands, or None while it is not complete: taken before an update."""
    return csv_line(row, CSV_COLUMNS[stage]) if row is not None and _is_complete(stage, row) else None


def _revise(stage: str, row: GenerationResult | EvaluationResult, before: dict[str, Any] | None) -> None:
    """After an update: a complete row whose line differs from its last complete state's takes
    the next revision, whose line the CSV is then owed."""
    if _is_complete(stage, row) and csv_line(row, CSV_COLUMNS[stage]) != before:
        row.revision += 1
        row.csv_appended = False


def _owed_csv_lines(stage: str, rows: list[GenerationResult] | list[EvaluationResult]) -> list[dict[str, Any]]:
    """The lines of those rows that are complete and not yet appended; taken before the commit
    expires the rows' attributes."""
    return [csv_line(row, CSV_COLUMNS[stage]) for row in rows if not row.csv_appended and _is_complete(stage, row)]


def _pending_csv_rows(stage: str):
    table = RESULT_TABLES[stage]
    query = select(table).where(table.csv_appended == False)  # noqa: E712
    if stage == "evaluation":
        query = query.where(
            table.has_response == True,  # noqa: E712
            table.has_score == True,  # noqa: E712
            table.generation_model.is_not(None),
        )
    return query.order_by(table.finished_at, table.task_id)


def csv_line(row: SQLModel, columns: tuple[str, ...]) -> dict[str, Any]:
    values = {column: getattr(row, column) for column in columns}
    return {column: value.isoformat() if isinstance(value, datetime) else value for column, value in values.items()}


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
"""Run after every event; built once, like `_row_by_task`."""


def _may_be_finished(session: Session, experiment: Experiment) -> bool:
    """False only when the experiment certainly is not finished: scores, plus every unresolved
    failure (a skipped evaluation among them) counted as if it skipped a whole generation's
    evaluations, still fall short of the planned evaluations. Two indexed counts, against the
    seven aggregate queries of `_progress`, which decides whenever this says True."""
    generations_planned = experiment.generation_tasks_planned
    evaluations_planned = experiment.evaluation_tasks_planned
    if generations_planned is None or evaluations_planned is None:
        return False
    if not generations_planned or not evaluations_planned:
        return True
    evaluations_per_generation = evaluations_planned // generations_planned
    scored, failures = session.exec(_SCORED_AND_FAILED, params={"experiment_id": experiment.experiment_id}).one()
    return scored + failures * max(evaluations_per_generation, 1) >= evaluations_planned


def _progress(session: Session, experiment_id: str) -> Progress:
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
    skipped_by_choice = 0  # evaluations of truncated generations left unjudged; the fan-out records each
    for stage, tier, reason, count in failures:
        failures_by_reason[reason] += count
        if stage not in PROGRESS_STAGES:
            continue
        if reason == SKIPPED_TRUNCATED_GENERATION:
            skipped_by_choice += count
        else:
            failed_by_stage[stage] += count
            failed[stage, tier or "?"] += count
    planning_error = session.exec(
        select(Failure.message).where(Failure.experiment_id == experiment_id, Failure.stage == "planning",
                                      Failure.resolved == False)  # noqa: E712
    ).first()

    prompt_tokens, completion_tokens, spent, saved = session.exec(
        select(
            func.coalesce(func.sum(LlmCall.prompt_tokens), 0),
            func.coalesce(func.sum(LlmCall.completion_tokens), 0),
            func.coalesce(func.sum(case((LlmCall.cached == False, LlmCall.cost_usd), else_=0.0)), 0.0),  # noqa: E712
            func.coalesce(func.sum(case((LlmCall.cached == True, LlmCall.cost_usd), else_=0.0)), 0.0),  # noqa: E712
        ).where(LlmCall.experiment_id == experiment_id)
    ).one()

    generations_planned = experiment.generation_tasks_planned
    evaluations_planned = experiment.evaluation_tasks_planned
    evaluations_per_generation = evaluations_planned // generations_planned if generations_planned else 0
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
