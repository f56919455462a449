"""Command-line options shared by several commands, declared once so they read the same."""

from pathlib import Path

import typer

DATA = typer.Option(Path("data"), "--data", envvar="DAYDREAM_DATA", help="Data directory (inputs in DIR/1_raw).")
EXPERIMENT_ID = typer.Option(None, "--experiment-id", help="Reuse an id to resume; default: name + time.")
K_MAX = typer.Option(None, "--k-max", help="Concepts per combination (overrides experiment.toml).")
LEVEL = typer.Option(None, "--level", help="Description level: sentence, paragraph or article.")
REPLICATES = typer.Option(None, "--replicates", help="Generations per combo, template and model.")
FRESH = typer.Option(False, "--fresh", help="Make new LLM calls even where a stored response exists.")
