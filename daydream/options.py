"""Command-line options shared by several commands, declared once so they read the same."""

from pathlib import Path

import typer

from shared.ids import SAFE_ID_RULE, is_safe_id
from shared.settings import Settings


def _has_inputs(data: Path) -> Path:
    """Refuse a directory that is not a DayDream data dir before anything is read or created in it
    (e.g. `check` from inside data/ would otherwise make data/data/daydream.db)."""
    raw = data / "1_raw"
    if not raw.is_dir():
        raise typer.BadParameter(f"{raw.resolve()} does not exist: pass --data DIR, the directory that holds 1_raw/")
    return data


def _has_records(data: Path) -> Path:
    """Commands that read what was recorded need the database: refuse a directory that has neither
    inputs nor a database, rather than create an empty database in the wrong place."""
    if not (data / "1_raw").is_dir() and not (data / "daydream.db").is_file() and not Settings(data=data).database_url:
        raise typer.BadParameter(f"{data.resolve()} holds neither 1_raw/ nor daydream.db: pass --data DIR, "
                                 "the DayDream data directory")
    return data


def safe_id(value: str | None) -> str | None:
    """An id as `plan` accepts it: it becomes a file name and a NATS subject token."""
    if value is not None and not is_safe_id(value):
        raise typer.BadParameter(f"{value!r} is not a safe id: {SAFE_ID_RULE}")
    return value


def positive_usd(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not a budget: give dollars above 0, e.g. --max-cost 2.5")
    return value


def safe_ids(values: list[str] | None) -> list[str]:
    """Each id as `safe_id` accepts it; none given is an empty list."""
    for value in values or []:
        safe_id(value)
    return values or []


DATA = typer.Option(Path("data"), "--data", envvar="DAYDREAM_DATA", help="Data directory (inputs in DIR/1_raw).")
RECORDED_DATA = typer.Option(Path("data"), "--data", envvar="DAYDREAM_DATA", callback=_has_records,
                             help="Data directory (with DIR/1_raw or DIR/daydream.db).")
DATA_DIR = typer.Option(Path("data"), "--data", envvar="DAYDREAM_DATA", callback=_has_inputs,
                        help="Data directory (inputs in DIR/1_raw, which must exist).")
EXPERIMENT_ID = typer.Option(None, "--experiment-id", callback=safe_id,
                             help="Reuse an id to resume; default: name + time.")
EXPERIMENT_ARGUMENT = typer.Argument(None, callback=safe_id, help="Experiment id (default: the latest).")
K_MAX = typer.Option(None, "--k-max", help="Concepts per combination (overrides experiment.toml).")
LEVEL = typer.Option(None, "--level", help="Description level: sentence, paragraph or article.")
REPLICATES = typer.Option(None, "--replicates", help="Generations per combo, template and model.")
FRESH = typer.Option(False, "--fresh", help="Make new LLM calls even where a stored response exists.")
MAX_COST = typer.Option(None, "--max-cost", metavar="USD", callback=positive_usd,
                        help="Budget: start no new LLM call once the experiment's spend plus its calls in flight "
                             "reach it (overrides max_cost in experiment.toml).")
