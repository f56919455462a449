"""The viewer's read queries over the tracker's tables (plain columns, current rows only)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

from sqlalchemy import Engine, Executable, Row
from sqlalchemy import select as sa_select
from sqlmodel import Session, select

from daydream.viewer.stats import Estimate, difference_ci, krippendorff_alpha, mean_ci, spearman_ci
from services.tracker.tables import ComboMapping, EvaluationResult, GenerationResult, sa_table


@dataclass(frozen=True)
class Score:
    generation_task_id: str
    template: str
    model: str
    rubric: str
    judge: str
    judge_model: str
    score: float | None
    parse_error: str | None


def scores(engine: Engine, experiment_id: str) -> list[Score]:
    """Every answered evaluation of the experiment: its score or its parse error."""
    e = sa_table(EvaluationResult).c
    rows = _rows(engine, sa_select(e.generation_task_id, e.generation_template_id, e.generation_model,
                                   e.evaluation_template_id, e.evaluation_model_id, e.evaluation_model, e.score,
                                   e.parse_error).where(e.experiment_id == experiment_id, e.has_score == True))  # noqa: E712
    return [Score(*row) for row in rows]


def _rows(engine: Engine, query: Executable) -> list[Row]:
    """Plain rows of more columns than SQLModel's `select` is typed for."""
    with engine.connect() as connection:
        return list(connection.execute(query).all())


def _grouped(rows: list[Score]) -> dict[tuple[str, str, str], list[float]]:
    """Scores per (rubric, template, model)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row.score is not None:
            groups[(row.rubric, row.template, row.model or "?")].append(row.score)
    return groups


def leaderboard(rows: list[Score]) -> dict[str, list[tuple[str, str, Estimate]]]:
    """Per rubric, (template, model, mean with 95 % CI and n), best mean first."""
    groups = _grouped(rows)
    board: dict[str, list[tuple[str, str, Estimate]]] = defaultdict(list)
    for (rubric, template, model), values in sorted(groups.items()):
        board[rubric].append((template, model, mean_ci(values)))
    for entries in board.values():
        entries.sort(key=lambda entry: -(entry[2].value or 0))
    return dict(board)


def parse_failure_rate(rows: list[Score]) -> float | None:
    return sum(row.parse_error is not None for row in rows) / len(rows) if rows else None


@dataclass(frozen=True)
class PairAgreement:
    judge_a: str
    judge_b: str
    rho: Estimate
    points: list[tuple[float, float]]


def agreement(rows: list[Score]) -> tuple[float | None, list[PairAgreement]]:
    """Ordinal alpha over all judges (a judge is rubric + model) and Spearman per judge pair."""
    by_unit: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row.score is not None:
            by_unit[row.generation_task_id][f"{row.rubric}/{row.judge}"] = row.score
    judges = sorted({judge for unit in by_unit.values() for judge in unit})
    alpha = krippendorff_alpha([[unit.get(judge) for judge in judges] for unit in by_unit.values()])
    pairs = []
    for a, b in combinations(judges, 2):
        points = [(unit[a], unit[b]) for unit in by_unit.values() if a in unit and b in unit]
        rho = spearman_ci([p[0] for p in points], [p[1] for p in points])
        pairs.append(PairAgreement(a, b, rho, points))
    return alpha, pairs


def self_judged(rows: list[Score]) -> set[tuple[str, str]]:
    """(judge model, rubric) pairs that graded text written by their own model."""
    return {(row.judge_model, row.rubric) for row in rows if row.judge_model == row.model}


@dataclass(frozen=True)
class Generation:
    task_id: str
    combo_id: str
    template: str
    model: str
    prompt_path: str
    response_path: str


def generations(engine: Engine, experiment_id: str) -> list[Generation]:
    g = sa_table(GenerationResult).c
    rows = _rows(engine, sa_select(g.task_id, g.combo_id, g.generation_template_id, g.generation_model, g.prompt_path,
                                   g.response_path).where(g.experiment_id == experiment_id).order_by(g.task_id))
    return [Generation(*row) for row in rows]


def concepts_by_combo(engine: Engine) -> dict[str, list[str]]:
    with Session(engine) as session:
        rows = session.exec(select(ComboMapping.combo_id, ComboMapping.concept_id)).all()
    members: dict[str, list[str]] = defaultdict(list)
    for combo_id, concept_id in rows:
        members[combo_id].append(concept_id)
    return {combo: sorted(concepts) for combo, concepts in members.items()}


def judge_answers(engine: Engine, experiment_id: str, generation_task_id: str) -> list[tuple]:
    """(rubric, judge model, score, parse error, response path, score path) of one generation."""
    e = sa_table(EvaluationResult).c
    return [tuple(row) for row in _rows(
        engine, sa_select(e.evaluation_template_id, e.evaluation_model, e.score, e.parse_error, e.response_path,
                          e.score_path).where(e.experiment_id == experiment_id, e.generation_task_id == generation_task_id)
        .order_by(e.task_id))]


def compare(before: list[Score], after: list[Score]) -> list[tuple[str, str, str, Estimate]]:
    """Per (rubric, template, model) in both experiments: mean(after) - mean(before) with its interval."""
    a, b = _grouped(before), _grouped(after)
    return [(*key, difference_ci(a[key], b[key])) for key in sorted(a.keys() & b.keys())]
