"""`daydream export`: the evaluations of one or more experiments, with their generations, as a file."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from daydream import options
from daydream.export import (
    PARQUET_EXTRA,
    MissingExtra,
    export_columns,
    require_extra,
    write_csv,
    write_jsonl,
    write_parquet,
)
from daydream.results_cmd import experiment_or_exit, open_database

console = Console(stderr=True)


class Format(StrEnum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


TEXT_WRITERS = {Format.csv: write_csv, Format.jsonl: write_jsonl}


def export(
    experiment_ids: list[str] = typer.Argument(
        None, callback=options.safe_ids, help="Experiment ids (default: the latest)."
    ),
    all_: bool = typer.Option(False, "--all", help="Every recorded experiment."),
    format_: Format = typer.Option(Format.csv, "--format", help="File format."),
    texts: bool = typer.Option(True, "--texts/--no-texts", help="Include prompts, texts and judge answers."),
    out: Path | None = typer.Option(None, "--out", help="File to write; default: standard output (csv, jsonl)."),
    data: Path = options.RECORDED_DATA,
) -> None:
    """One row per evaluation with its generation: ids, concepts, templates, models, texts, score
    or parse error, tokens, cost, latency and provider of both calls; current results only."""
    if all_ and experiment_ids:
        raise typer.BadParameter("name experiments or pass --all, not both")
    if format_ is Format.parquet and out is None:
        raise typer.BadParameter("parquet is binary: pass --out FILE", param_hint="--out")
    if format_ is Format.parquet:
        try:
            require_extra(*PARQUET_EXTRA)
        except MissingExtra as error:
            console.print(str(error), style="red", markup=False, soft_wrap=True)
            raise typer.Exit(2) from error
    data_dir, engine = open_database(data)
    named: list[str | None] = list(experiment_ids or []) or [None]
    chosen = None if all_ else [experiment_or_exit(data_dir, engine, experiment_id) for experiment_id in named]
    columns = export_columns(data_dir, engine, chosen, texts=texts)
    if out is None:
        TEXT_WRITERS[format_](columns, sys.stdout)
    elif format_ is Format.parquet:
        write_parquet(columns, out)
    else:
        with out.open("w", encoding="utf-8", newline="") as stream:
            TEXT_WRITERS[format_](columns, stream)
    what = ", ".join(chosen) if chosen else "every experiment"
    console.print(f"exported {len(columns['experiment_id'])} evaluations of {what}" + (f" to {out}" if out else ""))
