"""The tracker: turns events into artifact files, table rows and cross-experiment CSV lines.

Events arrive in any order and more than once; `rows` says how each write stays idempotent and
`csv_log` how the cross-experiment CSVs are kept. Artifacts are written before the row that names
them, so a row never points at a file that was never written, and every artifact carries what its
row needs (see `rebuild`). A file that cannot be written (a name too long for the file system,
permission denied) becomes the task's recorded failure, so the event is consumed, not redelivered.
"""

from __future__ import annotations

from pathlib import Path

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
    TaskFailed,
)


class Tracker(Views):
    """The single writer of durable state; its queries are those of `Views`."""

    def __init__(self, data_dir: Path, engine: Engine) -> None:
        super().__init__(data_dir, engine)
        init_db(engine)
        self.rows = Rows(self.layout, engine)

    def reconcile_csvs(self) -> None:
        self.rows.csv_log.reconcile()

    def record_requested(self, event: ExperimentRequested) -> None:
        write_event_file(self.layout, event.spec.experiment_id, "requested.json", event)
        self.rows.store_requested(event)

    def record_planned(self, event: ExperimentPlanned) -> None:
        write_event_file(self.layout, event.experiment_id, "planned.json", event)
        self.rows.store_planned(event)

    def record_generation(self, event: GenerationDone) -> None:
        files = write_result_files(self.layout, "generation", event.task, event.call)
        self.rows.store_generation(event.task, event.call, files)

    def record_evaluation(self, event: EvaluationDone) -> None:
        files = write_result_files(self.layout, "evaluation", event.task, event.call)
        self.rows.store_evaluation(event.task, event.call, files)

    def record_score(self, event: EvaluationScored) -> None:
        """A re-emitted score whose verdict is already recorded (the parser read the same answer
        again) writes no file and changes no row."""
        if self.rows.verdict_recorded(event):
            return
        path = write_score_file(self.layout, event)
        self.rows.store_score(event, self.layout.relative(path))

    def record_failure(self, event: TaskFailed) -> None:
        path = write_failure_file(self.layout, event)
        self.rows.store_failure(event, self.layout.relative(path))
