"""The viewer's pages over rows written with the tracker's own tables: the numbers shown are the
database's, agreement is computed, self-judging is flagged."""

from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session
from starlette.testclient import TestClient

from daydream.viewer.app import create_app
from daydream.viewer.stats import mean_ci
from services.tracker.db import engine_for, init_db
from services.tracker.tables import EvaluationResult, Experiment, GenerationResult

NOW = datetime(2026, 1, 1, tzinfo=UTC)


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
        for i, (a, b) in enumerate(zip(a_scores, b_scores, strict=True)):
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
    assert "class='heatmap'" in page and page.count("class='histogram'") == 2
    assert "writer judged its own text" in page
    assert client.get("/experiment/nope").status_code == 404


def _generation(data_dir: Path, task_id: str, template: str, text: str) -> GenerationResult:
    (data_dir / f"{task_id}.txt").write_text(text, encoding="utf-8")
    (data_dir / f"{task_id}.prompt.txt").write_text(f"prompt of {task_id}", encoding="utf-8")
    return GenerationResult(
        experiment_id="exp", task_id=task_id, combo_id="c", generation_template_id=template,
        generation_model_id="writer", generation_model="writer", tier="free", replicate=0, status="done",
        started_at=NOW, finished_at=NOW, prompt_path=f"{task_id}.prompt.txt", response_path=f"{task_id}.txt",
        call_path="", prompt_chars=1, response_chars=len(text))


def test_generation_filters_search_and_detail(tmp_path: Path) -> None:
    engine = engine_for(tmp_path)
    init_db(engine)
    with Session(engine) as session:
        session.add(Experiment(experiment_id="exp", requested_at=NOW))
        session.add(_generation(tmp_path, "g0", "t1", "a loop that daydreams"))
        session.add(_generation(tmp_path, "g1", "t2", "economic moats"))
        session.add(_evaluation("g0", "judge-a", 7))
        session.add(_evaluation("g1", "judge-a", None))
        session.commit()
    client = TestClient(create_app(tmp_path))
    url = "/experiment/exp/generations"
    assert "2 generations" in client.get(url).text
    assert "1 generations" in client.get(url, params={"template": "t2"}).text
    assert ">g1<" in client.get(url, params={"errors": "1"}).text
    found = client.get(url, params={"q": "DAYDREAMS"}).text
    assert ">g0<" in found and ">g1<" not in found
    assert ">g0<" not in client.get(url, params={"min": "8"}).text
    detail = client.get("/experiment/exp/generation/g0").text
    assert "a loop that daydreams" in detail and "prompt of g0" in detail and "7.000" in detail


def test_compare_shows_differences_and_flags_what_moved(tmp_path: Path) -> None:
    engine = engine_for(tmp_path)
    init_db(engine)
    with Session(engine) as session:
        for experiment_id, values in (("old", [2, 3, 2, 3]), ("new", [8, 9, 8, 9])):
            session.add(Experiment(experiment_id=experiment_id, requested_at=NOW))
            for i, value in enumerate(values):
                row = _evaluation(f"g{i}", "judge-a", value)
                row.experiment_id = experiment_id
                session.add(row)
        session.commit()
    page = TestClient(create_app(tmp_path)).get("/compare", params={"a": "old", "b": "new"}).text
    assert "6.000" in page and "class='moved'" in page


def test_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    from typer.testing import CliRunner

    from daydream.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"daydream {version('daydream')}"
