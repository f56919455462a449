"""`daydream rescore`: read an experiment's stored judge answers again with the current parser (or
another one) and record the verdicts that changed.

A changed verdict is recorded as the parser service's would be: an `EvaluationScored` given to the
tracker's own `record_score`, which writes a new score file and gives the row its next revision and
its CSV line, so `check` and `rebuild` agree with the result. Answers are read from the call records,
which carry the task (its scale, its parser) and the text; no LLM is called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from daydream import options
from daydream.results_cmd import JSON, experiment_or_exit, open_database
from daydream.stack import stack_running
from services.parser.scoring import find_parser, parse_score
from services.tracker.artifacts import task_from_kept_fields
from services.tracker.recorder import Tracker
from services.tracker.tables import EvaluationResult, sa_table
from shared.events import CallRecord, EvaluationScored, EvaluationTask

console = Console()


@dataclass(frozen=True)
class Change:
    """One evaluation whose verdict the parser now reads differently."""

    task_id: str
    generation_task_id: str
    evaluation_model_id: str
    before_score: float | None
    before_error: str | None
    after: EvaluationScored

    def as_json(self) -> dict:
        return {
            "task_id": self.task_id,
            "generation_task_id": self.generation_task_id,
            "evaluation_model_id": self.evaluation_model_id,
            "before": {"score": self.before_score, "parse_error": self.before_error},
            "after": {"score": self.after.score, "parse_error": self.after.parse_error, "parser": self.after.parser},
        }


@dataclass(frozen=True)
class Rescore:
    examined: int
    changes: list[Change]


def rescore_experiment(tracker: Tracker, experiment_id: str, parser: str | None = None) -> Rescore:
    """Parses every stored answer of the experiment with `parser` (default: the one its task names)
    and records each verdict (score or parse error) that differs from the recorded one. Raises
    ValueError, before recording anything, when a parser is unknown or a call record unreadable
    (OSError when it is missing)."""
    table = sa_table(EvaluationResult)
    query = select(
        table.c.task_id, table.c.generation_task_id, table.c.evaluation_model_id, table.c.call_path,
        table.c.score, table.c.parse_error,
    ).where(table.c.experiment_id == experiment_id, table.c.has_response == True)  # noqa: E712
    with tracker.engine.connect() as connection:
        rows = connection.execute(query.order_by(table.c.task_id)).all()
    answers = []
    for row in rows:
        record = json.loads(tracker.layout.absolute(row.call_path).read_text(encoding="utf-8"))
        task = task_from_kept_fields(record["task"])
        assert isinstance(task, EvaluationTask), row.call_path
        answers.append((row, task, CallRecord.model_validate(record["call"]).text))
    for name in sorted({parser or task.parser for _, task, _ in answers}):
        find_parser(name)
    changes = []
    for row, task, text in answers:
        name = parser or task.parser
        result = parse_score(text, parser=name, max_score=task.max_score, allow_decimals=task.allow_decimals)
        if (result.score, result.error) == (row.score, row.parse_error):
            continue
        event = EvaluationScored(
            task=task,
            parser=name,
            score=result.score,
            parse_error=result.error,
            candidates=list(result.candidates),
            lines_examined=list(result.lines_examined),
        )
        tracker.record_score(event)
        changes.append(Change(row.task_id, row.generation_task_id, row.evaluation_model_id, row.score,
                              row.parse_error, event))
    return Rescore(examined=len(answers), changes=changes)


def _verdict(score: float | None, error: str | None) -> str:
    return f"{score:g}" if score is not None else f"error: {error}"


def render_changes(experiment_id: str, rescored: Rescore) -> Table:
    table = Table(title=f"{experiment_id}: {len(rescored.changes)} of {rescored.examined} verdicts changed")
    for header in ("evaluation task", "judge", "before", "after", "parser"):
        table.add_column(header)
    for change in rescored.changes:
        table.add_row(
            change.task_id,
            change.evaluation_model_id,
            _verdict(change.before_score, change.before_error),
            _verdict(change.after.score, change.after.parse_error),
            change.after.parser,
        )
    return table


def rescore(
    experiment_id: str | None = options.EXPERIMENT_ARGUMENT,
    parser: str | None = typer.Option(None, "--parser", help="Parser to use (default: the one each task names)."),
    as_json: bool = JSON,
    data: Path = options.RECORDED_DATA,
) -> None:
    """Re-read the stored judge answers with the current parser (or --parser) and record new
    revisions where a verdict changed; prints what changed. Calls no LLM."""
    if stack_running(data):
        console.print(f"[red]A stack is running for {data}[/red]: its tracker is the single writer of the records. "
                      f"Let it finish, or `daydream down --data {data}`, then rescore.")
        raise typer.Exit(1)
    data_dir, engine = open_database(data)
    chosen = experiment_or_exit(data_dir, engine, experiment_id)
    try:
        rescored = rescore_experiment(Tracker(data_dir, engine), chosen, parser)
    except OSError as error:
        console.print(f"{error}: `daydream check --data {data}` lists what is missing", style="red", markup=False)
        raise typer.Exit(2) from error
    except ValueError as error:
        console.print(str(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from error
    if as_json:
        typer.echo(json.dumps({"experiment_id": chosen, "examined": rescored.examined,
                               "changed": [change.as_json() for change in rescored.changes]}, indent=2))
        return
    console.print(render_changes(chosen, rescored))
    if rescored.changes:
        console.print(f"summaries are now stale: `daydream results {chosen} --data {data}` rewrites them")
