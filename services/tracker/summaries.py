"""Results tables computed from the evaluation rows: parsed scores, grouped statistics, a pivot
of scores per generation, evaluator agreement, and the top generations.

Scales. Scores are reported raw, on their evaluation template's own scale, and never averaged
across scales: every statistic, agreement row and ranked entry belongs to one evaluation template
and max_score (the `evaluation_template_id` and `max_score` columns), so a judge asked for 0-9 and
one asked for 0-100 are compared only with judges of the same rubric. A researcher comparing judges
reads numbers in the unit the judges were given; a rescaled mean would hide that.

Conventions (kept from the original pipeline's 9-point judges):
- a score is *high* when it is at least 7/9 of its template's max_score and *low* when at most 3/9
  of it; a row whose max_score is unknown is read on the 9-point scale;
- `std` is the sample standard deviation, left empty for a single score;
- agreement between a generation's evaluators of one template, by the range of their scores on the
  9-point scale: high (<= 1), moderate (<= 3), low (> 3); one evaluator is `single`;
- the top generations are ranked by their mean as a fraction of its scale's maximum, so rubrics of
  different scales can share one ranking; each entry shows its raw mean and scale.

Speed. An experiment's scored rows are read once, as rows read by position, and every table is
built from them as tuples in its columns' order: 100,000 LLM calls took 5-6 s with ORM-free rows
read by attribute, per-row dicts and a second read for the top generations.
"""

from __future__ import annotations

import csv
import heapq
import io
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from rich.table import Table
from sqlalchemy import Engine, Row
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from services.tracker.tables import ComboMapping, EvaluationResult, Experiment, GenerationResult, sa_table
from shared.files import atomic_write_text

NINE_POINT_SCALE = 9
HIGH_SCORE = 7
LOW_SCORE = 3
HIGH_AGREEMENT_RANGE = 1
MODERATE_AGREEMENT_RANGE = 3
ALL_EXPERIMENTS_DIR = "all_experiments"
"""Under 5_parsing/ and 6_summary/: where `results --all` writes, beside one experiment's tables."""

PARSED_SCORES_COLUMNS = (
    "experiment_id",
    "task_id",
    "generation_task_id",
    "combo_id",
    "generation_template_id",
    "generation_model_id",
    "generation_model",
    "evaluation_template_id",
    "evaluation_model_id",
    "evaluation_model",
    "replicate",
    "status",
    "score",
    "max_score",
    "parse_error",
    "parser",
    "score_path",
)
"""parsed_scores.csv, one scored evaluation (parse errors included) a line: the evaluation columns
every summary reads, by their position here."""
ScoredRow = Row[Any]
"""One line of parsed_scores.csv as read, its values in `PARSED_SCORES_COLUMNS` order."""
_POSITION = {column: position for position, column in enumerate(PARSED_SCORES_COLUMNS)}
_EXPERIMENT, _GENERATION_TASK, _TEMPLATE, _JUDGE_MODEL, _SCORE, _MAX_SCORE = (
    _POSITION[column] for column in (
        "experiment_id", "generation_task_id", "evaluation_template_id", "evaluation_model_id", "score", "max_score",
    )
)  # fmt: skip


class GenerationScore(NamedTuple):
    """The scores one generation got from the judges of one evaluation template. Its fields but
    `scores` are the generation's and the scale's columns of the tables (`GENERATION_COLUMNS`,
    `SCALE_COLUMNS`)."""

    experiment_id: str
    generation_task_id: str
    combo_id: str
    generation_template_id: str
    generation_model_id: str
    evaluation_template_id: str
    max_score: int | None
    scores: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores)

    @property
    def mean_fraction(self) -> float:
        """The mean as a fraction of the scale's maximum: what ranks generations across rubrics."""
        return self.mean / (self.max_score or NINE_POINT_SCALE)


GENERATION_COLUMNS = GenerationScore._fields[:5]
SCALE_COLUMNS = GenerationScore._fields[5:7]
STATISTICS_COLUMNS = ("count", "mean", "std", "min", "max", "high_count", "low_count")
FINAL_RESULTS_COLUMNS = ("experiment_id", *SCALE_COLUMNS, "group_by", "group", *STATISTICS_COLUMNS)
AGREEMENT_COLUMNS = (*GENERATION_COLUMNS, *SCALE_COLUMNS, "evaluators", "mean", "std", "min", "max", "range", "agreement")
_GENERATION_FIELDS = itemgetter(*(_POSITION[column] for column in GENERATION_COLUMNS))

GROUPINGS: dict[str, tuple[str, ...]] = {
    "generation_template": ("generation_template_id",),
    "generation_model": ("generation_model_id",),
    "evaluation_model": ("evaluation_model_id",),
    "combo": ("combo_id",),
    "generation_template_x_generation_model": ("generation_template_id", "generation_model_id"),
    "generation_model_x_evaluation_model": ("generation_model_id", "evaluation_model_id"),
    "overall": (),
}


def on_nine_point_scale(value: float, max_score: int | None) -> float:
    return value * NINE_POINT_SCALE / (max_score or NINE_POINT_SCALE)


def latest_experiment_id(engine: Engine) -> str | None:
    """The most recently requested experiment (or, lacking requests, the last id known)."""
    with Session(engine) as session:
        experiments = session.exec(select(Experiment.experiment_id, Experiment.requested_at)).all()
    if not experiments:
        return None
    latest, _ = max(experiments, key=lambda e: (e[1] is not None, e[1], e[0]))
    return latest


def evaluation_rows(engine: Engine, experiment_id: str | None) -> Sequence[ScoredRow]:
    """Scored evaluations (parse errors included) of one experiment, or of all when id is None.
    Plain rows of the parsed-scores columns (every summary reads only those), not
    `EvaluationResult`s: loading 64,000 whole ORM objects took 12 s."""
    table = sa_table(EvaluationResult)
    query = sa_select(*(table.c[column] for column in PARSED_SCORES_COLUMNS)).where(table.c.has_score == True)  # noqa: E712
    if experiment_id is not None:
        query = query.where(table.c.experiment_id == experiment_id)
    with engine.connect() as connection:
        return connection.execute(query.order_by(table.c.experiment_id, table.c.task_id)).all()


def _sample_stdev(scores: Sequence[float]) -> float | None:
    """`statistics.stdev` in floats, rounded as the tables print it: the exact version (fractions)
    took a second per 16,000 groups."""
    if len(scores) < 2:
        return None
    mean = statistics.fmean(scores)
    return round(math.sqrt(sum((score - mean) ** 2 for score in scores) / (len(scores) - 1)), 4)


def describe(scores: list[float], max_score: int | None) -> tuple[float | int | None, ...]:
    """Statistics of scores that share one scale, in `STATISTICS_COLUMNS` order. High and low are
    decided once per distinct score: judges repeat a few values thousands of times."""
    counts = Counter(scores)
    return (
        len(scores),
        round(statistics.fmean(scores), 4),
        _sample_stdev(scores),
        min(counts),
        max(counts),
        sum(n for score, n in counts.items() if on_nine_point_scale(score, max_score) >= HIGH_SCORE),
        sum(n for score, n in counts.items() if on_nine_point_scale(score, max_score) <= LOW_SCORE),
    )


def final_results(scored: Sequence[ScoredRow]) -> list[tuple]:
    """One long table: per experiment and scale (evaluation template and max_score), a block of rows
    per grouping, each row a group's statistics. Experiments are never pooled: they may differ in
    concepts, k and judges. Each group keeps its scores in row order, as the sample deviation's sum
    is rounded in that order."""
    scale_of = itemgetter(_EXPERIMENT, _TEMPLATE, _MAX_SCORE)
    groups: dict[tuple, dict[str, dict[str, list[float]]]] = {
        scale: {group_by: defaultdict(list) for group_by in GROUPINGS} for scale in dict.fromkeys(map(scale_of, scored))
    }
    for group_by, fields in GROUPINGS.items():
        key_of = itemgetter(_EXPERIMENT, _TEMPLATE, _MAX_SCORE, *(_POSITION[field] for field in fields))
        by_key: dict[tuple, list[float]] = defaultdict(list)
        for row in scored:
            by_key[key_of(row)].append(row[_SCORE])
        for key, scores in by_key.items():  # grouped by value first: joining per row cost seconds
            groups[key[:3]][group_by][" x ".join(key[3:]) or "all"].extend(scores)
    return [
        (*scale, group_by, group, *describe(scores, scale[2]))
        for scale, blocks in sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or 0))
        for group_by, block in blocks.items()
        for group, scores in sorted(block.items())
    ]


def generation_scores(scored: Iterable[ScoredRow]) -> list[GenerationScore]:
    """Per generation and scale, in generation order (an unknown max_score sorts as 0)."""
    first: dict[tuple, ScoredRow] = {}
    grouped: dict[tuple, list[float]] = defaultdict(list)
    for row in scored:
        key = (row[_EXPERIMENT], row[_GENERATION_TASK], row[_TEMPLATE], row[_MAX_SCORE] or 0)
        if key not in first:
            first[key] = row
        grouped[key].append(row[_SCORE])
    return [
        GenerationScore._make((*_GENERATION_FIELDS(first[key]), first[key][_TEMPLATE], first[key][_MAX_SCORE], tuple(scores)))
        for key, scores in sorted(grouped.items())
    ]


def score_pivot(scored: Iterable[ScoredRow]) -> tuple[tuple[str, ...], list[tuple]]:
    """A row per generation, a column `<evaluation template>__<evaluation model>` per judge setup,
    holding that setup's mean score for the generation (one setup is one scale); empty where the
    setup did not score it."""
    generations: dict[tuple[str, str], tuple] = {}
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in scored:
        key = (row[_EXPERIMENT], row[_GENERATION_TASK])
        if key not in generations:
            generations[key] = _GENERATION_FIELDS(row)
        cells[key][f"{row[_TEMPLATE]}__{row[_JUDGE_MODEL]}"].append(row[_SCORE])
    judge_columns = sorted({column for generation in cells.values() for column in generation})
    table = []
    for key, fields in sorted(generations.items()):
        means = {column: round(statistics.fmean(scores), 4) for column, scores in cells[key].items()}
        table.append((*fields, *(means.get(column) for column in judge_columns)))
    return (*GENERATION_COLUMNS, *judge_columns), table


def agreement_class(evaluators: int, score_range: float, max_score: int | None) -> str:
    if evaluators < 2:
        return "single"
    nine_point_range = on_nine_point_scale(score_range, max_score)
    if nine_point_range <= HIGH_AGREEMENT_RANGE:
        return "high"
    return "moderate" if nine_point_range <= MODERATE_AGREEMENT_RANGE else "low"


def evaluator_agreement(generations: Iterable[GenerationScore]) -> list[tuple]:
    table = []
    for generation in generations:
        scores = generation.scores
        lowest, highest = min(scores), max(scores)
        table.append((
            *generation[:-1], len(scores), round(generation.mean, 4), _sample_stdev(scores), lowest, highest,
            highest - lowest, agreement_class(len(scores), highest - lowest, generation.max_score),
        ))  # fmt: skip
    return table


@dataclass(frozen=True)
class Results:
    """Every results table of one experiment (or of all, when `experiment_id` is None), built
    from one read of its scored rows; each table's rows are tuples in its columns' order."""

    experiment_id: str | None
    parsed_scores: Sequence[ScoredRow]
    final_results: list[tuple]
    pivot_columns: tuple[str, ...]
    pivot: list[tuple]
    agreement: list[tuple]
    generations: list[GenerationScore]


def read_results(engine: Engine, experiment_id: str | None) -> Results:
    rows = evaluation_rows(engine, experiment_id)
    scored = [row for row in rows if row[_SCORE] is not None]
    generations = generation_scores(scored)
    pivot_columns, pivot = score_pivot(scored)
    return Results(
        experiment_id=experiment_id,
        parsed_scores=rows,
        final_results=final_results(scored),
        pivot_columns=pivot_columns,
        pivot=pivot,
        agreement=evaluator_agreement(generations),
        generations=generations,
    )


def write_table(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A whole derived table from rows in its columns' order, replaced atomically; the same bytes
    as `artifacts.write_csv` writes from dicts, whose per-cell lookups cost a second per 100,000
    rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def write_results(results: Results, data_dir: Path) -> list[Path]:
    """Write the result tables of one experiment, or of all into `ALL_EXPERIMENTS_DIR`; returns the
    files written."""
    subdirectory = ALL_EXPERIMENTS_DIR if results.experiment_id is None else ""
    summary_dir = data_dir / "6_summary" / subdirectory
    tables = (
        (data_dir / "5_parsing" / subdirectory / "parsed_scores.csv", PARSED_SCORES_COLUMNS, results.parsed_scores),
        (summary_dir / "final_results.csv", FINAL_RESULTS_COLUMNS, results.final_results),
        (summary_dir / "generation_scores_pivot.csv", results.pivot_columns, results.pivot),
        (summary_dir / "evaluator_agreement.csv", AGREEMENT_COLUMNS, results.agreement),
    )
    for path, columns, rows in tables:
        write_table(path, columns, rows)
    return [path for path, _, _ in tables]


def top_generations(results: Results, limit: int = 10) -> list[GenerationScore]:
    return heapq.nsmallest(
        limit,
        results.generations,
        key=lambda g: (-g.mean_fraction, -len(g.scores), g.experiment_id, g.generation_task_id),
    )


def combo_concepts(engine: Engine, combo_ids: Iterable[str]) -> dict[str, list[str]]:
    with Session(engine) as session:
        mappings = session.exec(select(ComboMapping).where(col(ComboMapping.combo_id).in_(set(combo_ids)))).all()
    concepts: dict[str, list[str]] = defaultdict(list)
    for mapping in mappings:
        concepts[mapping.combo_id].append(mapping.concept_id)
    return {combo_id: sorted(members) for combo_id, members in concepts.items()}


def generation_models(engine: Engine, generations: Iterable[GenerationScore]) -> dict[tuple[str, str], str]:
    """The model name behind each generation, for display."""
    keys = {(g.experiment_id, g.generation_task_id) for g in generations}
    with Session(engine) as session:
        rows = session.exec(
            select(GenerationResult.experiment_id, GenerationResult.task_id, GenerationResult.generation_model).where(
                col(GenerationResult.experiment_id).in_({experiment for experiment, _ in keys})
            )
        ).all()
    return {(experiment, task): model for experiment, task, model in rows if (experiment, task) in keys}


def render_results_table(engine: Engine, results: Results, limit: int = 10) -> Table:
    """The top generations by mean judge score (per rubric), with the concepts they combined."""
    top = top_generations(results, limit)
    concepts = combo_concepts(engine, (g.combo_id for g in top))
    models = generation_models(engine, top)
    experiment_id = results.experiment_id
    title = f"Top {len(top)} generations" + (f" of {experiment_id}" if experiment_id else " across experiments")
    table = Table(title=title)
    columns: list[tuple[str, Callable[[GenerationScore], str]]] = [
        ("#", lambda g: str(top.index(g) + 1)),
        *([("experiment", lambda g: g.experiment_id)] if experiment_id is None else []),
        ("concepts", lambda g: ", ".join(concepts.get(g.combo_id, [g.combo_id]))),
        ("template", lambda g: g.generation_template_id),
        ("model", lambda g: models.get((g.experiment_id, g.generation_task_id), g.generation_model_id)),
        ("rubric", lambda g: g.evaluation_template_id),
        ("mean", lambda g: f"{g.mean:.2f} / {g.max_score or NINE_POINT_SCALE}"),
        ("judges", lambda g: str(len(g.scores))),
        ("generation task", lambda g: g.generation_task_id),
    ]
    for header, _ in columns:
        table.add_column(header, justify="right" if header in ("#", "mean", "judges") else "left")
    for generation in top:
        table.add_row(*(cell(generation) for _, cell in columns))
    return table
