"""`run` over the thresholds: with no terminal to ask on it refuses, says how to go ahead and
writes nothing, rather than wait for an answer nobody can give (`--yes` going ahead is part of
tests/e2e/test_budget.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from daydream.run_cmd import run
from tests.conftest import EXAMPLE_RAW


def invoke(data: Path, *args: str):
    app = typer.Typer()
    app.command()(run)
    return CliRunner().invoke(app, ["--data", str(data), "--experiment-id", "big", *args],
                              env={"DAYDREAM_CONFIRM_CALLS": "10", "OPENROUTER_API_KEY": ""})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLE_RAW, tmp_path / "1_raw")
    return tmp_path


def test_over_the_threshold_without_a_terminal_run_refuses_and_writes_nothing(data: Path) -> None:
    result = invoke(data)
    assert result.exit_code == 2, result.output
    assert "48 LLM calls, more than 10 (DAYDREAM_CONFIRM_CALLS)" in result.output
    assert "Pass --yes" in result.output
    assert "estimated cost: $" in result.output and "least time the tiers allow" in result.output
    assert not (data / "experiments").exists()
