"""Commands that repair the tracker's state: rebuild and check (their own module, so `status` and
`results` start without importing them)."""

from __future__ import annotations

from pathlib import Path

import typer

from daydream import options
from daydream.results_cmd import console, open_database
from services.tracker.check import check as find_problems
from services.tracker.db import engine_for
from services.tracker.rebuild import RebuildError
from services.tracker.rebuild import rebuild as rebuild_from_artifacts


def rebuild(data: Path = options.DATA) -> None:
    """Recreate the database and the cross-experiment CSVs from the artifact files alone."""
    try:
        report = rebuild_from_artifacts(data, engine_for(data))
    except RebuildError as error:
        console.print(str(error), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from error
    console.print(
        f"rebuilt from {len(report.sources)} files: {report.experiments} experiments, "
        f"{report.generations} generations, {report.evaluations} evaluations, {report.scores} scores, "
        f"{report.failures} failures, {report.combo_mappings} combo mapping rows"
    )


def check(data: Path = options.RECORDED_DATA) -> None:
    """Find orphans, duplicates and missing files; exit 1 when anything needs fixing."""
    data_dir, engine = open_database(data)
    problems = find_problems(data_dir, engine)
    for problem in problems:
        console.print(str(problem), markup=False, soft_wrap=True)
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/red]")
        raise typer.Exit(1)
    console.print("[green]clean[/green]: database, artifacts and cross-experiment CSVs agree")
