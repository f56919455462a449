"""The viewer's pages over rows written with the tracker's own tables: the numbers shown are the
database's, agreement is computed, self-judging is flagged."""

from datetime import datetime, timezone
from pathlib import Path

from sqlmodel import Session
from starlette.testclient import TestClient

from daydream.viewer.app import create_app
from daydream.viewer.stats import mean_ci
from services.tracker.db import engine_for, init_db
from services.tracker.tables import EvaluationResult, Experiment

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _evaluation(gen: str, judge: str, score: float | None, model: str = "writer") -> EvaluationResult:
    return EvaluationResult(
        experiment_id="exp", task_id=f"{gen}_{judge}", generation_task_id=gen, combo_id="c",
        generation_template_id="t1", generation_model_id=model, generation_model=model,
        evaluation_template_id="rubric", evaluation_model_id=judge, evaluation_model=judge, tier="free",
        replicate=0, status="scored" if score is not None else "parse_error", has_response=True, has_score=True,
        score=score, parse_error=None if score is not None else "no_score_found")


def test_experiment_page_shows_the_databases_means_and_agreement(tmp_path: Path) -> None:
    engine = engine_for(tmp_path)
    init_db(engine)
    a_scores, b_scores = [3, 5, 7, 8], [2, 6, 6, 9]
    with Session(engine) as session:
        session.add(Experiment(experiment_id="exp", requested_at=NOW))
        for i, (a, b) in enumerate(zip(a_scores, b_scores)):
            session.add(_evaluation(f"g{i}", "judge-a", a))
            session.add(_evaluation(f"g{i}", "writer", b))
        session.add(_evaluation("g9", "judge-a", None))
        session.commit()
    client = TestClient(create_app(tmp_path))
    assert "/experiment/exp" in client.get("/").text
    page = client.get("/experiment/exp").text
    assert f"{mean_ci(a_scores + b_scores).value:.3f}" in page
    assert "parse-failure rate: 0.111 of 9" in page
    assert "Krippendorff" in page and "Spearman rho" in page
    assert "writer judged its own text" in page
    assert client.get("/experiment/nope").status_code == 404
