"""The parser service's one function: a judge's answer to `EvaluationScored`, parsed as the
evaluation template says (its parser, its scale, whether its scale has decimals)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.parser.evaluation import score_evaluation
from shared.events import CallRecord, EvaluationDone
from shared.inputs import load_experiment
from shared.tasks import evaluation_tasks, generation_tasks

DECIMAL = "Solid but derivative.\n\nScore: 6.5/9"


def judged(raw: Path, text: str) -> EvaluationDone:
    generation = generation_tasks(load_experiment(raw, experiment_id="exp-1").spec)[0]
    task = evaluation_tasks(generation, "An essay.", truncated=False)[0]
    now = datetime.now(UTC)
    return EvaluationDone(task=task, call=CallRecord(text=text, request_hash="h", started_at=now, finished_at=now))


def with_judges(tmp_path: Path, example_raw: Path, parser: str, allow_decimals: str | None) -> Path:
    """The example inputs, every evaluation template read by `parser`, with or without the column."""
    raw = Path(shutil.copytree(example_raw, tmp_path / "1_raw"))
    csv_path = raw / "evaluation_templates.csv"
    header, *rows = csv_path.read_text(encoding="utf-8").splitlines()
    rows = [row.replace(",in_last_line,", f",{parser},") for row in rows]
    if allow_decimals is not None:
        header, rows = header + ",allow_decimals", [row + f",{allow_decimals}" for row in rows]
    csv_path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return raw


@pytest.mark.parametrize(("allow_decimals", "verdict"), [(None, None), ("", None), ("false", None), ("true", 6.5)])
def test_the_templates_allow_decimals_column_decides_whether_a_decimal_is_a_score(
    tmp_path: Path, example_raw: Path, allow_decimals: str | None, verdict: float | None
) -> None:
    raw = with_judges(tmp_path, example_raw, "final_verdict", allow_decimals)
    scored = score_evaluation(judged(raw, DECIMAL))
    assert (scored.parser, scored.score) == ("final_verdict", verdict)
    assert (scored.parse_error is None) == (verdict is not None)


def test_an_answer_without_a_score_is_a_parse_error_not_a_score(tmp_path: Path, example_raw: Path) -> None:
    raw = with_judges(tmp_path, example_raw, "final_verdict", None)
    scored = score_evaluation(judged(raw, "The essay names 3 of the 4 concepts."))
    assert scored.score is None
    assert scored.parse_error.startswith("no_score_found")


def test_the_example_judges_keep_the_original_strict_last_line_rule(example_raw: Path) -> None:
    scored = score_evaluation(judged(example_raw, "Clear and well argued.\nSCORE: 8"))
    assert (scored.parser, scored.score) == ("in_last_line", 8.0)
