"""Commands refuse bad ids and directories that are no data dir before they read or write anything:
an id becomes a path and a subject token (`rerun ../../evil-snap` once read a snapshot outside the
data dir), and `check` from inside data/ once created data/data/daydream.db."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from daydream.cli import app
from daydream.publish_cmd import new_experiment_id
from tests.conftest import EXAMPLE_RAW


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300", "NATS_URL": "", "DAYDREAM_NATS_URL": ""})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE_RAW, tmp_path / "1_raw")
    return tmp_path


@pytest.mark.parametrize("command", [
    ["rerun", "../../evil-snap", "--failed"],
    ["rerun", "ok-id", "--task", "../x"],
    ["status", "../../evil-snap"],
    ["results", "a/b"],
    ["export", "ok-id", "../evil"],
    ["rescore", "../evil"],
    ["run", "--experiment-id", "../evil"],
    ["publish", "--experiment-id", "x.y"],
])
def test_an_unsafe_id_is_refused_before_anything_is_read(data: Path, command: list[str]) -> None:
    outcome = invoke(*command, "--data", str(data))
    assert outcome.exit_code == 2, outcome.output
    assert "is not a safe id" in outcome.output
    assert not (data / "daydream.db").exists() and not (data / "experiments").exists()


@pytest.mark.parametrize("command", [["check"], ["status"], ["results"], ["rerun", "exp", "--failed"], ["run"],
                                     ["publish"], ["up"], ["export"], ["rescore"]])
def test_a_directory_that_is_no_data_dir_is_refused_naming_the_path(tmp_path: Path, command: list[str]) -> None:
    inside = tmp_path / "data"
    inside.mkdir()
    outcome = invoke(*command, "--data", str(inside / "data"))
    assert outcome.exit_code == 2, outcome.output
    assert f"{inside / 'data'}" in outcome.output and "1_raw" in outcome.output
    assert list(inside.iterdir()) == [], "nothing created"


def test_publish_without_a_stack_refuses_instead_of_using_a_default_url(data: Path) -> None:
    outcome = invoke("publish", "--data", str(data), "--experiment-id", "nowhere")
    assert outcome.exit_code == 1, outcome.output
    assert "no running stack" in outcome.output and "daydream up" in outcome.output


def test_automatic_experiment_ids_made_in_the_same_second_differ() -> None:
    ids = {new_experiment_id("Demo") for _ in range(50)}
    assert len(ids) == 50
