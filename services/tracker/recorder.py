"""The tracker: turns events into artifact files, table rows and cross-experiment CSV lines.

Events arrive in any order and more than once; `rows` says how each write stays idempotent and
`csv_log` how the cross-experiment CSVs are kept. Artifacts are written before the row that names
them, so a row never points at a file that was never written, and every artifact carries what its
row needs (see `rebuild`). A file that cannot be written (a name too long for the file system,
permission denied) becomes the task's recorded failure, so the event is consumed, not redelivered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine

from services.tracker.artifacts import write_event_file, write_failure_file, write_result_files, write_score_file
from services.tracker.db import init_db
from services.tracker.rows import Rows
from services.tracker.views import Views
from shared.events import (
    EvaluationDone,
    EvaluationScored,
    ExperimentPlanned,
    ExperimentRequested,
    GenerationDone,
    TaskCreated,
    TaskFailed,
)

UNWRITABLE_ARTIFACT = "unwritable_artifact"
"""The `Failure.reason` of a result whose file the tracker could not write."""

Written = TypeVar("Written")


class Tracker(Views):
    """The single writer of durable state; its queries are those of `Views`."""

    def __init__(self, data_dir: Path, engine: Engine) -> None:
        super().__init__(data_dir, engine)
        init_db(engine)
        self.rows = Rows(self.layout, engine)

    def reconcile_csvs(self) -> None:
        self.rows.csv_log.reconcile()

    def record(self, event: Recorded) -> None:
        RECORDERS[type(event)](self, event)

    def record_batch(self, events: Sequence[Recorded]) -> None:
        """Every event in one transaction, its files made durable once before the commit and its
        CSV lines appended at once after it; an error rolls the whole batch back (see
        `Rows.batch`), and each event's store is idempotent, so the batch can be redelivered."""
        with self.rows.batch():
            self.rows.preload(events)
            for event in events:
                self.record(event)

    def record_requested(self, event: ExperimentRequested) -> None:
        write_event_file(self.layout, event.spec.experiment_id, "requested.json", event)
        self.rows.store_requested(event)

    def record_planned(self, event: ExperimentPlanned) -> None:
        write_event_file(self.layout, event.experiment_id, "planned.json", event)
        self.rows.store_planned(event)

    def record_generation(self, event: GenerationDone) -> None:
        files = self._write_or_fail(event.task, "generation", write_result_files, "generation", event.task, event.call)
        if files is not None:
            self.rows.store_generation(event.task, event.call, files)

    def record_evaluation(self, event: EvaluationDone) -> None:
        files = self._write_or_fail(event.task, "evaluation", write_result_files, "evaluation", event.task, event.call)
        if files is not None:
            self.rows.store_evaluation(event.task, event.call, files)

    def record_score(self, event: EvaluationScored) -> None:
        """A re-emitted score whose verdict is already recorded (the parser read the same answer
        again) writes no file and changes no row."""
        if self.rows.verdict_recorded(event):
            return
        path = self._write_or_fail(event.task, "scoring", write_score_file, event)
        if path is not None:
            self.rows.store_score(event, self.layout.relative(path))

    def record_failure(self, event: TaskFailed) -> None:
        """A failure file that cannot be written leaves the failure in the table alone (an empty
        `failure_path`): `rebuild` cannot restore it, but the run does not hang on it."""
        try:
            failure_path = self.layout.relative(write_failure_file(self.layout, event))
        except OSError:
            failure_path = ""
        self.rows.store_failure(event, failure_path)

    def _write_or_fail(
        self, task: TaskCreated, stage: str, write: Callable[..., Written], *args: object
    ) -> Written | None:
        """The files written, or None after recording why they could not be: redelivering the
        event would fail the same way forever."""
        try:
            return write(self.layout, *args)
        except OSError as error:
            self.record_failure(
                TaskFailed(
                    stage=stage,
                    experiment_id=task.experiment_id,
                    task_id=task.task_id,
                    reason=UNWRITABLE_ARTIFACT,
                    message=f"the tracker cannot write {error.filename}: {error.strerror or error}",
                    attempts=1,
                    tier=task.tier.tier,
                    model_id=task.model.id,
                    task=task,
                )
            )
            return None


Recorded = ExperimentRequested | ExperimentPlanned | GenerationDone | EvaluationDone | EvaluationScored | TaskFailed
RECORDERS: dict[type[Any], Callable[[Tracker, Any], None]] = {
    ExperimentRequested: Tracker.record_requested,
    ExperimentPlanned: Tracker.record_planned,
    GenerationDone: Tracker.record_generation,
    EvaluationDone: Tracker.record_evaluation,
    EvaluationScored: Tracker.record_score,
    TaskFailed: Tracker.record_failure,
}
