"""The experiment row's `finished_at` (what `status` and dashboards show) is stamped by the event
that completes the experiment — a score or a failure — and follows later activity; and a database
created before the tracker's lookup indexes existed gets them on start."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlmodel import Session, select

from services.tracker.db import init_db, make_engine
from services.tracker.recorder import Tracker
from services.tracker.tables import EvaluationResult, Experiment
from tests.fakes import T0, FakeExperiment, call, deliver


def finished_at(engine: Engine) -> datetime | None:
    with Session(engine) as session:
        return session.exec(select(Experiment.finished_at).where(Experiment.experiment_id == "exp1")).one()


def tracker_in(tmp_path: Path) -> Tracker:
    return Tracker(tmp_path / "data", make_engine(f"sqlite:///{tmp_path / 'data' / 'daydream.db'}"))


def test_the_last_score_stamps_finished_at_and_not_one_before(tmp_path: Path) -> None:
    tracker, fake = tracker_in(tmp_path), FakeExperiment()
    *before_last, last = fake.events()
    for event in before_last:
        deliver(tracker, event)
    assert finished_at(tracker.engine) is None
    deliver(tracker, last)
    assert finished_at(tracker.engine) == tracker.progress("exp1").finished_at == last.emitted_at


def test_a_failed_generation_completes_the_experiment_it_leaves_unjudged(tmp_path: Path) -> None:
    tracker, fake = tracker_in(tmp_path), FakeExperiment()
    lost = fake.generations[0].task.task_id
    for event in fake.events():
        if getattr(getattr(event, "task", None), "generation_task_id", None) != lost:
            deliver(tracker, event)
    assert finished_at(tracker.engine) is None
    failed_at = T0 + timedelta(hours=1)
    deliver(tracker, fake.failure(fake.generations[0].task, failed_at, reason="timeout"))
    assert finished_at(tracker.engine) == failed_at


def test_a_later_call_after_the_finish_moves_finished_at(tmp_path: Path) -> None:
    tracker, fake = tracker_in(tmp_path), FakeExperiment()
    for event in fake.events():
        deliver(tracker, event)
    rerun_at = T0 + timedelta(days=1)
    judged = fake.evaluations[0]
    deliver(tracker, judged.model_copy(update={"call": call(judged.task.task_id, "SCORE: 3", rerun_at)}))
    assert finished_at(tracker.engine) == rerun_at + timedelta(seconds=1)



def test_finished_at_by_experiment_lists_every_experiment_for_the_progress_gauges(tmp_path: Path) -> None:
    tracker, fake = tracker_in(tmp_path), FakeExperiment()
    for event in fake.events():
        deliver(tracker, event)
    deliver(tracker, FakeExperiment(experiment_id="exp2").requested)
    assert tracker.finished_at_by_experiment() == {"exp1": tracker.progress("exp1").finished_at, "exp2": None}

def test_a_database_made_before_the_lookup_indexes_gets_them(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    init_db(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_evaluation_results_csv_pending"))
        connection.execute(text("DROP INDEX ix_evaluation_results_scored"))
    init_db(engine)
    names = {index["name"] for index in inspect(engine).get_indexes(EvaluationResult.__tablename__)}
    assert {"ix_evaluation_results_csv_pending", "ix_evaluation_results_scored"} <= names
