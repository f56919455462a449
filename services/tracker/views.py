"""The read side: what the CLI, dashboards and `rerun` ask of the tables. Queries select plain
columns, never whole ORM rows, so they stay fast on large experiments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import Engine, func
from sqlmodel import Session, select

from services.tracker import progress as progress_counts
from services.tracker.artifacts import Layout
from services.tracker.progress import Progress
from services.tracker.tables import EvaluationResult, Experiment, Failure, GenerationResult, LlmCall
from shared.events import TASK_CREATED, TaskCreated
from shared.spend import Spend


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


class Views:
    """Read-only queries over one data directory's tables; constructing one writes nothing."""

    def __init__(self, data_dir: Path, engine: Engine) -> None:
        self.layout = Layout(data_dir)
        self.engine = engine

    def experiment_ids(self) -> list[str]:
        """Oldest request first; experiments known only from their results sort last."""
        with Session(self.engine) as session:
            experiments = session.exec(select(Experiment.experiment_id, Experiment.requested_at)).all()
        ordered = sorted(
            experiments,
            key=lambda e: (e[1] is None, e[1] or datetime.min.replace(tzinfo=UTC), e[0]),
        )
        return [experiment_id for experiment_id, _ in ordered]

    def finished_at_by_experiment(self) -> dict[str, datetime | None]:
        """Every experiment's `finished_at`, one narrow query: lets a poller tell which
        experiments' progress can have changed without computing any progress."""
        with Session(self.engine) as session:
            return dict(session.exec(select(Experiment.experiment_id, Experiment.finished_at)).all())

    def failed_tasks(self, experiment_id: str) -> list[TaskCreated]:
        """What `rerun --failed` republishes: unresolved failures that carried their task."""
        with Session(self.engine) as session:
            tasks = session.exec(
                select(Failure.task)
                .where(Failure.experiment_id == experiment_id, Failure.resolved == False)  # noqa: E712
                .order_by(Failure.task_id)
            ).all()
        return [TASK_CREATED.validate_python(task) for task in tasks if task is not None]

    def failure_examples(self, experiment_id: str) -> dict[str, str]:
        """One message per failure reason, the first recorded: what `run` shows so a stopped tier
        or a refused key is read on screen, with the provider's words and the fix."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(Failure.reason, Failure.message)
                .where(Failure.experiment_id == experiment_id, Failure.resolved == False)  # noqa: E712
                .order_by(Failure.task_id)
            ).all()
        examples: dict[str, str] = {}
        for reason, message in rows:
            examples.setdefault(reason, message)
        return examples

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
                    text=self.layout.absolute(response_path).read_text(encoding="utf-8"), truncated=bool(truncated)
                )
                for task_id, response_path, truncated in generations
            },
            evaluations=set(evaluations),
        )

    def progress(self, experiment_id: str) -> Progress:
        with Session(self.engine) as session:
            return progress_counts.progress(session, experiment_id)

    def spend(self, experiment_id: str) -> Spend:
        """What the experiment's paid calls cost: a reused response costs nothing again."""
        with Session(self.engine) as session:
            by_stage = session.exec(
                select(LlmCall.stage, func.coalesce(func.sum(LlmCall.cost_usd), 0.0), func.count())
                .where(LlmCall.experiment_id == experiment_id, LlmCall.cached == False)  # noqa: E712
                .group_by(LlmCall.stage)
            ).all()
        return Spend(cost_usd=float(sum(cost or 0.0 for _, cost, _ in by_stage)), calls=sum(calls for *_, calls in by_stage),
                     calls_by_stage={stage: calls for stage, _, calls in by_stage})
