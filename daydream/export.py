"""One row per evaluation with its generation, for analysis outside DayDream: the query behind
`daydream export` and `daydream.load`.

Rows are the database's, which hold each result's current state (the highest revision of its
cross-experiment CSV lines), and only complete evaluations: the judge answered and the answer was
parsed, to a score or to a parse error. Read with one SQLAlchemy Core select of plain columns
(whole ORM rows took 12 s for 64,000, see `services.tracker.summaries`); the texts come from
the artifact files the rows name, each generation's read once however many judges it had.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, and_, select

from services.tracker.artifacts import Layout
from services.tracker.db import engine_for, init_db
from services.tracker.tables import (
    CALL_USAGE_COLUMNS,
    ComboMapping,
    EvaluationResult,
    GenerationResult,
    LlmCall,
    sa_table,
)
from services.tracker.views import Views
from shared.events import ExperimentRequested
from shared.settings import Settings

FRAMES = ("pandas", "polars")
CALL_COLUMNS = ("latency_s", "provider", "resolved_model")
"""Of `llm_calls`: what the result tables do not carry of a call."""
TEXT_COLUMNS = ("generation_prompt", "generation_text", "evaluation_text")
LIST_COLUMNS = ("concept_ids", "concepts")
"""Lists in JSON lines, Parquet and frames; joined with `LIST_SEPARATOR` in CSV."""
LIST_SEPARATOR = "; "

_evaluation = sa_table(EvaluationResult)
_generation = sa_table(GenerationResult)
_generation_call = sa_table(LlmCall).alias("generation_call")
_evaluation_call = sa_table(LlmCall).alias("evaluation_call")


def _usage(stage: str, result, call) -> list:
    return [result.c[column].label(f"{stage}_{column}") for column in CALL_USAGE_COLUMNS] + [
        call.c[column].label(f"{stage}_{column}") for column in CALL_COLUMNS
    ]


_SELECTED = (
    _evaluation.c.experiment_id,
    _evaluation.c.task_id.label("evaluation_task_id"),
    _evaluation.c.generation_task_id,
    _evaluation.c.combo_id,
    _evaluation.c.generation_template_id,
    _evaluation.c.generation_model_id,
    _evaluation.c.generation_model,
    _evaluation.c.evaluation_template_id,
    _evaluation.c.evaluation_model_id,
    _evaluation.c.evaluation_model,
    _evaluation.c.replicate,
    _evaluation.c.revision,
    _evaluation.c.status,
    _evaluation.c.score,
    _evaluation.c.max_score,
    _evaluation.c.parse_error,
    _evaluation.c.parser,
    *_usage("generation", _generation, _generation_call),
    *_usage("evaluation", _evaluation, _evaluation_call),
)
_PATHS = (
    _generation.c.prompt_path.label("generation_prompt_path"),
    _generation.c.response_path.label("generation_response_path"),
    _evaluation.c.response_path.label("evaluation_response_path"),
)


def _same_task(table, task_id):
    return and_(table.c.experiment_id == _evaluation.c.experiment_id, table.c.task_id == task_id)


_JOINED = (
    _evaluation.outerjoin(_generation, _same_task(_generation, _evaluation.c.generation_task_id))
    .outerjoin(_generation_call, _same_task(_generation_call, _evaluation.c.generation_task_id))
    .outerjoin(_evaluation_call, _same_task(_evaluation_call, _evaluation.c.task_id))
)

_PATH_NAMES = tuple(column.name for column in _PATHS)
_FIRST_COLUMNS = tuple(column.name for column in _SELECTED[:4])
COLUMNS = (*_FIRST_COLUMNS, *LIST_COLUMNS, *(column.name for column in _SELECTED[4:]), *TEXT_COLUMNS)
"""Every exported column, in order; `--no-texts` leaves out `TEXT_COLUMNS`."""


def export_columns(data_dir: Path, engine: Engine, experiment_ids: Sequence[str] | None, texts: bool = True) -> dict[str, list]:
    """The export of these experiments (all when None) as columns of equal length, in
    (experiment, evaluation task) order."""
    query = select(*_SELECTED, *_PATHS).select_from(_JOINED).where(
        _evaluation.c.has_response == True,  # noqa: E712
        _evaluation.c.has_score == True,  # noqa: E712
    )
    if experiment_ids is not None:
        query = query.where(_evaluation.c.experiment_id.in_(list(experiment_ids)))
    with engine.connect() as connection:
        result = connection.execute(query.order_by(_evaluation.c.experiment_id, _evaluation.c.task_id))
        keys = list(result.keys())
        selected = dict(zip(keys, list(zip(*result.all(), strict=True)) or [()] * len(keys), strict=True))
        mappings = connection.execute(select(sa_table(ComboMapping).c.combo_id, sa_table(ComboMapping).c.concept_id)).all()
    members: dict[str, list[str]] = defaultdict(list)
    for combo_id, concept_id in mappings:
        members[combo_id].append(concept_id)
    experiments = selected["experiment_id"]
    names = _concept_names(Layout(data_dir), set(experiments))
    concept_ids = [sorted(members.get(combo_id, [])) for combo_id in selected["combo_id"]]
    columns: dict[str, list] = {
        **{name: list(values) for name, values in selected.items() if name not in _PATH_NAMES},
        "concept_ids": concept_ids,
        "concepts": [
            [names[experiment].get(concept, concept) for concept in concepts]
            for experiment, concepts in zip(experiments, concept_ids, strict=True)
        ],
    }
    if texts:
        read = _TextReader(data_dir)
        columns["generation_prompt"] = [read(path, cache=True) for path in selected["generation_prompt_path"]]
        columns["generation_text"] = [read(path, cache=True) for path in selected["generation_response_path"]]
        columns["evaluation_text"] = [read(path) for path in selected["evaluation_response_path"]]
    return {name: columns[name] for name in COLUMNS if name in columns}


def _concept_names(layout: Layout, experiment_ids: set[str]) -> dict[str, dict[str, str]]:
    """Concept id -> name, per experiment, from its request (the tables keep only ids); an
    experiment whose request file is gone shows ids."""
    names: dict[str, dict[str, str]] = {}
    for experiment_id in experiment_ids:
        path = layout.events_dir(experiment_id) / "requested.json"
        try:
            spec = ExperimentRequested.model_validate_json(path.read_text(encoding="utf-8")).spec
        except (OSError, ValueError):
            names[experiment_id] = {}
            continue
        names[experiment_id] = {concept.concept_id: concept.name for concept in spec.concepts}
    return names


class _TextReader:
    """An artifact's text, or None when the row names none or the file is gone (`check` reports it)."""

    def __init__(self, data_dir: Path) -> None:
        self.layout = Layout(data_dir)
        self.cached: dict[str, str | None] = {}

    def __call__(self, relative: str | None, cache: bool = False) -> str | None:
        if relative is None:
            return None
        if relative in self.cached:
            return self.cached[relative]
        try:
            text = self.layout.absolute(relative).read_text(encoding="utf-8")
        except OSError:
            text = None
        if cache:
            self.cached[relative] = text
        return text


def _rows(columns: dict[str, list]) -> Iterator[dict[str, Any]]:
    names = list(columns)
    for values in zip(*columns.values(), strict=True):
        yield dict(zip(names, values, strict=True))


def write_csv(columns: dict[str, list], stream: TextIO) -> None:
    flat = {name: [LIST_SEPARATOR.join(value) for value in values] if name in LIST_COLUMNS else values
            for name, values in columns.items()}
    writer = csv.writer(stream)
    writer.writerow(flat)
    writer.writerows(zip(*flat.values(), strict=True))


def write_jsonl(columns: dict[str, list], stream: TextIO) -> None:
    for row in _rows(columns):
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")


class MissingExtra(RuntimeError):
    """An optional dependency a format needs is not installed; the message says how to add it."""


def require_extra(module: str, extra: str, purpose: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise MissingExtra(
            f"{purpose} needs {module}, which is not installed: `uv sync --extra {extra}` in a checkout, "
            f"or `pip install 'daydream[{extra}]'`"
        ) from error


PARQUET_EXTRA = ("pyarrow", "parquet", "--format parquet")


def write_parquet(columns: dict[str, list], path: Path) -> None:
    require_extra(*PARQUET_EXTRA)
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table(columns), path)


def open_records(data: Path) -> Engine:
    """The data directory's database, migrated; refuses a directory that has none rather than
    creating an empty one."""
    if not Settings(data=data).database_url and not (data / "daydream.db").is_file():
        raise FileNotFoundError(f"{data.resolve()} has no daydream.db (and DAYDREAM_DATABASE_URL is not set)")
    engine = engine_for(data)
    init_db(engine)
    return engine


def unknown_experiments(data: Path, engine: Engine, experiment_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(asked for but not recorded, every recorded id)."""
    known = Views(data, engine).experiment_ids()
    return [experiment_id for experiment_id in experiment_ids if experiment_id not in known], known


def load(*experiment_ids: str, data: str | Path = "data", texts: bool = True, frame: str = "pandas"):
    """The export of these experiments (every one when none is named) as a pandas or polars
    DataFrame: `daydream.load("exp1", data="data")`. Needs the `pandas` (or `polars`) extra."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, not {frame!r}")
    library = require_extra(frame, frame, "daydream.load")
    data = Path(data)
    engine = open_records(data)
    try:
        unknown, known = unknown_experiments(data, engine, experiment_ids)
        if unknown:
            raise ValueError(f"unknown experiment(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}")
        columns = export_columns(data, engine, experiment_ids or None, texts=texts)
    finally:
        engine.dispose()
    return library.DataFrame(columns)
