"""`daydream rescore` on a data dir the tracker recorded: changed verdicts become new revisions that
`check` and `rebuild` agree with; unchanged ones are left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daydream.cli import app
from services.tracker.db import make_engine
from services.tracker.recorder import Tracker
from tests.fakes import FakeExperiment, csv_lines, deliver, dump_tables

AMBIGUOUS = "Score: 6\n\nScore: 8"
"""`in_last_line` reads 8 (the last line); `final_verdict` refuses two different scores."""


@pytest.fixture
def recorded(tmp_path: Path):
    """The fake experiment whose first judge answered AMBIGUOUS, recorded as 8 by `in_last_line`."""
    data_dir = tmp_path / "data"
    fake = FakeExperiment()
    first = fake.evaluations[0]
    fake.evaluations[0] = first.model_copy(update={"call": first.call.model_copy(update={"text": AMBIGUOUS})})
    fake.scores[0] = fake.scores[0].model_copy(update={"parser": "in_last_line", "score": 8.0})
    tracker = Tracker(data_dir, make_engine(f"sqlite:///{data_dir / 'daydream.db'}"))
    for event in fake.events():
        deliver(tracker, event)
    yield data_dir, fake, tracker
    tracker.engine.dispose()


def daydream(data_dir: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--data", str(data_dir)], env={"COLUMNS": "200"})


def test_changed_verdicts_get_new_revisions_that_check_and_rebuild_agree_with(recorded) -> None:
    data_dir, fake, tracker = recorded
    outcome = daydream(data_dir, "rescore", "exp1", "--parser", "final_verdict", "--json")
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert report["examined"] == 8
    changed = {change["task_id"]: change for change in report["changed"]}
    ambiguous, unparsed = fake.evaluations[0].task.task_id, fake.evaluations[-1].task.task_id
    assert set(changed) == {ambiguous, unparsed}  # "SCORE: 7.0" and the rest read the same
    assert changed[ambiguous]["before"] == {"score": 8.0, "parse_error": None}
    assert changed[ambiguous]["after"] == {"score": None, "parse_error": "ambiguous: 6, 8", "parser": "final_verdict"}
    assert changed[unparsed]["after"]["parse_error"] == "no_score_found"

    lines = [line for line in csv_lines(data_dir, "evaluation") if line["task_id"] == ambiguous]
    assert [(line["revision"], line["score"], line["parse_error"]) for line in lines] == [
        ("1", "8.0", ""), ("2", "", "ambiguous: 6, 8")]
    assert len(csv_lines(data_dir, "evaluation")) == 10
    checked = daydream(data_dir, "check")
    assert checked.exit_code == 0, checked.output

    recorded_tables = dump_tables(tracker.engine)
    assert daydream(data_dir, "rebuild").exit_code == 0
    assert dump_tables(tracker.engine) == recorded_tables

    again = daydream(data_dir, "rescore", "exp1", "--parser", "final_verdict", "--json")
    assert json.loads(again.stdout)["changed"] == []
    assert len(csv_lines(data_dir, "evaluation")) == 10


def test_the_table_shows_before_and_after_and_the_default_is_each_tasks_parser(recorded) -> None:
    data_dir, fake, _ = recorded
    outcome = daydream(data_dir, "rescore", "--parser", "in_last_line")
    assert outcome.exit_code == 0, outcome.output
    assert "1 of 8 verdicts changed" in outcome.output  # only the unparsed answer's reason differs
    assert "error: no number found" in outcome.output and "error: no_score_found" in outcome.output
    assert "daydream results exp1" in outcome.output

    unknown = daydream(data_dir, "rescore", "exp1")  # the fake's tasks name `last_number`
    assert unknown.exit_code == 2
    assert "unknown score parser 'last_number'" in unknown.output and "final_verdict" in unknown.output
    assert daydream(data_dir, "rescore", "exp1", "--parser", "nope").exit_code == 2
    assert len(csv_lines(data_dir, "evaluation")) == 9
