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
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol, cast

from rich.table import Table
from sqlalchemy import Engine, Row
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from services.tracker.artifacts import write_csv
from services.tracker.tables import ComboMapping, EvaluationResult, Experiment, GenerationResult, sa_table

ScoreRow = Row[Any]
"""One scored evaluation's parsed-scores columns (`evaluation_rows`), read by attribute name."""
NINE_POINT_SCALE = 9
HIGH_SCORE = 7
LOW_SCORE = 3
HIGH_AGREEMENT_RANGE = 1
MODERATE_AGREEMENT_RANGE = 3

STATISTICS_COLUMNS = ("count", "mean", "std", "min", "max", "high_count", "low_count")
SCALE_COLUMNS = ("evaluation_template_id", "max_score")
FINAL_RESULTS_COLUMNS = ("experiment_id", *SCALE_COLUMNS, "group_by", "group", *STATISTICS_COLUMNS)
ALL_EXPERIMENTS_DIR = "all_experiments"
"""Under 5_parsing/ and 6_summary/: where `results --all` writes, beside one experiment's tables."""
GENERATION_COLUMNS = (
    "experiment_id",
    "generation_task_id",
    "combo_id",
    "generation_template_id",
    "generation_model_id",
)
AGREEMENT_COLUMNS = (
    *GENERATION_COLUMNS, *SCALE_COLUMNS, "evaluators", "mean", "std", "min", "max", "range", "agreement",
)  # fmt: skip

GROUPINGS: dict[str, tuple[str, ...]] = {
    "generation_template": ("generation_template_id",),
    "generation_model": ("generation_model_id",),
    "evaluation_model": ("evaluation_model_id",),
    "combo": ("combo_id",),
    "generation_template_x_generation_model": ("generation_template_id", "generation_model_id"),
    "generation_model_x_evaluation_model": ("generation_model_id", "evaluation_model_id"),
    "overall": (),
}


class ScoredRow(Protocol):
    """A row of parsed_scores.csv, the evaluation columns every summary reads, in its column order
    (SQLAlchemy's `Row`, whose columns are attributes only at run time)."""

    experiment_id: str
    task_id: str
    generation_task_id: str
    combo_id: str
    generation_template_id: str
    generation_model_id: str
    generation_model: str | None
    evaluation_template_id: str
    evaluation_model_id: str
    evaluation_model: str
    replicate: int
    status: str
    score: float | None
    max_score: int | None
    parse_error: str | None
    parser: str | None
    score_path: str | None

    def _asdict(self) -> dict[str, Any]: ...


PARSED_SCORES_COLUMNS = tuple(ScoredRow.__annotations__)


@dataclass(frozen=True)
class GenerationScore:
    """The scores one generation got from the judges of one evaluation template."""

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


def on_nine_point_scale(value: float, max_score: int | None) -> float:
    return value * NINE_POINT_SCALE / (max_score or NINE_POINT_SCALE)


def _scale(row: ScoredRow) -> tuple[str, int | None]:
    return row.evaluation_template_id, row.max_score


def _scale_key(scale: tuple[str, int | None]) -> tuple[str, int]:
    """Sorts scales with an unknown max_score (None) among the known ones."""
    template, maximum = scale
    return template, maximum or 0


def latest_experiment_id(engine: Engine) -> str | None:
    """The most recently requested experiment (or, lacking requests, the last id known)."""
    with Session(engine) as session:
        experiments = session.exec(select(Experiment.experiment_id, Experiment.requested_at)).all()
    if not experiments:
        return None
    latest, _ = max(experiments, key=lambda e: (e[1] is not None, e[1], e[0]))
    return latest


def evaluation_rows(engine: Engine, experiment_id: str | None) -> list[ScoredRow]:
    """Scored evaluations (parse errors included) of one experiment, or of all when id is None.
    Plain rows of the parsed-scores columns (every summary reads only those), not
    `EvaluationResult`s: loading 64,000 whole ORM objects took 12 s."""
    table = sa_table(EvaluationResult)
    query = sa_select(*(table.c[column] for column in PARSED_SCORES_COLUMNS)).where(table.c.has_score == True)  # noqa: E712
    if experiment_id is not None:
        query = query.where(table.c.experiment_id == experiment_id)
    with engine.connect() as connection:
        rows = connection.execute(query.order_by(table.c.experiment_id, table.c.task_id)).all()
    return cast(list[ScoredRow], rows)


def _sample_stdev(scores: Sequence[float]) -> float | None:
    """`statistics.stdev` in floats, rounded as the tables print it: the exact version (fractions)
    took a second per 16,000 groups."""
    if len(scores) < 2:
        return None
    mean = statistics.fmean(scores)
    return round(math.sqrt(sum((score - mean) ** 2 for score in scores) / (len(scores) - 1)), 4)


def describe(scores: list[float], max_score: int | None) -> dict[str, float | int | None]:
    """Statistics of scores that share one scale."""
    scaled = [on_nine_point_scale(score, max_score) for score in scores]
    return {
        "count": len(scores),
        "mean": round(statistics.fmean(scores), 4),
        "std": _sample_stdev(scores),
        "min": min(scores),
        "max": max(scores),
        "high_count": sum(value >= HIGH_SCORE for value in scaled),
        "low_count": sum(value <= LOW_SCORE for value in scaled),
    }


def final_results(rows: Iterable[ScoredRow]) -> list[dict]:
    """One long table: per experiment and scale (evaluation template and max_score), a block of rows
    per grouping, each row a group's statistics. Experiments are never pooled: they may differ in
    concepts, k and judges."""
    by_scale: dict[tuple[str, str, int | None], list[tuple[ScoredRow, float]]] = defaultdict(list)
    for row in rows:
        if row.score is not None:
            by_scale[(row.experiment_id, *_scale(row))].append((row, row.score))
    table = []
    for (experiment_id, template, max_score), scored in sorted(
        by_scale.items(), key=lambda item: (item[0][0], *_scale_key(item[0][1:]))
    ):
        for group_by, fields in GROUPINGS.items():
            key: Callable[[ScoredRow], object] = attrgetter(*fields) if fields else lambda row: ()
            by_key: dict[object, list[float]] = defaultdict(list)
            for row, score in scored:
                by_key[key(row)].append(score)
            groups: dict[str, list[float]] = defaultdict(list)
            for value, scores in by_key.items():  # grouped by value first: joining per row cost seconds
                groups[(" x ".join(value) if isinstance(value, tuple) else str(value)) or "all"].extend(scores)
            for group, scores in sorted(groups.items()):
                table.append(
                    {
                        "experiment_id": experiment_id,
                        "evaluation_template_id": template,
                        "max_score": max_score,
                        "group_by": group_by,
                        "group": group,
                        **describe(scores, max_score),
                    }
                )
    return table


def generation_scores(rows: Iterable[ScoredRow]) -> list[GenerationScore]:
    """Per generation and scale, in generation order."""
    first: dict[tuple[str, str, tuple[str, int]], ScoredRow] = {}
    grouped: dict[tuple[str, str, tuple[str, int]], list[float]] = defaultdict(list)
    for row in rows:
        if row.score is not None:
            key = (row.experiment_id, row.generation_task_id, _scale_key(_scale(row)))
            first.setdefault(key, row)
            grouped[key].append(row.score)
    return [
        GenerationScore(
            experiment_id=first[key].experiment_id,
            generation_task_id=first[key].generation_task_id,
            combo_id=first[key].combo_id,
            generation_template_id=first[key].generation_template_id,
            generation_model_id=first[key].generation_model_id,
            evaluation_template_id=first[key].evaluation_template_id,
            max_score=first[key].max_score,
            scores=tuple(scores),
        )
        for key, scores in sorted(grouped.items())
    ]


def score_pivot(rows: Iterable[ScoredRow]) -> tuple[list[str], list[dict]]:
    """A row per generation, a column `<evaluation template>__<evaluation model>` per judge setup,
    holding that setup's mean score for the generation (one setup is one scale)."""
    generations: dict[tuple[str, str], dict] = {}
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.score is None:
            continue
        key = (row.experiment_id, row.generation_task_id)
        if key not in generations:
            generations[key] = {column: getattr(row, column) for column in GENERATION_COLUMNS}
        cells[key][f"{row.evaluation_template_id}__{row.evaluation_model_id}"].append(row.score)
    judge_columns = sorted({column for generation in cells.values() for column in generation})
    table = [
        {**fields, **{column: round(statistics.fmean(scores), 4) for column, scores in cells[key].items()}}
        for key, fields in sorted(generations.items())
    ]
    return [*GENERATION_COLUMNS, *judge_columns], table


def agreement_class(evaluators: int, score_range: float, max_score: int | None) -> str:
    if evaluators < 2:
        return "single"
    nine_point_range = on_nine_point_scale(score_range, max_score)
    if nine_point_range <= HIGH_AGREEMENT_RANGE:
        return "high"
    return "moderate" if nine_point_range <= MODERATE_AGREEMENT_RANGE else "low"


def evaluator_agreement(rows: Iterable[ScoredRow]) -> list[dict]:
    table = []
    for generation in generation_scores(rows):
        scores = generation.scores
        score_range = max(scores) - min(scores)
        table.append(
            {
                **{column: getattr(generation, column) for column in (*GENERATION_COLUMNS, *SCALE_COLUMNS)},
                "evaluators": len(scores),
                "mean": round(generation.mean, 4),
                "std": _sample_stdev(scores),
                "min": min(scores),
                "max": max(scores),
                "range": score_range,
                "agreement": agreement_class(len(scores), score_range, generation.max_score),
            }
        )
    return table


def write_results(engine: Engine, data_dir: Path, experiment_id: str | None) -> list[Path]:
    """Write the result tables of one experiment, or of all (when None) into `ALL_EXPERIMENTS_DIR`;
    returns the files written."""
    rows = evaluation_rows(engine, experiment_id)
    subdirectory = ALL_EXPERIMENTS_DIR if experiment_id is None else ""
    parsed = data_dir / "5_parsing" / subdirectory / "parsed_scores.csv"
    summary_dir = data_dir / "6_summary" / subdirectory
    write_csv(parsed, PARSED_SCORES_COLUMNS, [row._asdict() for row in rows])
    write_csv(summary_dir / "final_results.csv", FINAL_RESULTS_COLUMNS, final_results(rows))
    pivot_columns, pivot_rows = score_pivot(rows)
    write_csv(summary_dir / "generation_scores_pivot.csv", pivot_columns, pivot_rows)
    write_csv(summary_dir / "evaluator_agreement.csv", AGREEMENT_COLUMNS, evaluator_agreement(rows))
    return [
        parsed,
        summary_dir / "final_results.csv",
        summary_dir / "generation_scores_pivot.csv",
        summary_dir / "evaluator_agreement.csv",
    ]


def top_generations(engine: Engine, experiment_id: str | None, limit: int = 10) -> list[GenerationScore]:
    ranked = sorted(
        generation_scores(evaluation_rows(engine, experiment_id)),
        key=lambda g: (-g.mean_fraction, -len(g.scores), g.experiment_id, g.generation_task_id),
    )
    return ranked[:limit]


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


def render_results_table(engine: Engine, experiment_id: str | None, limit: int = 10) -> Table:
    """The top generations by mean judge score (per rubric), with the concepts they combined."""
    top = top_generations(engine, experiment_id, limit)
    concepts = combo_concepts(engine, (g.combo_id for g in top))
    models = generation_models(engine, top)
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
