"""`daydream run` as a user runs it: a subprocess on a fresh data dir, no API key — simulated
responses said plainly, results printed, exit 0; Ctrl-C stops cleanly and a second run with the
same experiment id resumes without redoing what was done; `up`/`down` keep a stack for reuse."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, func, select

from daydream.stack import StackState
from services.tracker.db import make_engine
from services.tracker.tables import EvaluationResult, GenerationResult, LlmCall
from tests.e2e.chaos import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def daydream(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENROUTER_API_KEY", "DAYDREAM_LLM_API_KEY", "DAYDREAM_LLM_BASE_URL", "NATS_URL")}
    clean.update({"COLUMNS": "160", **(env or {})})
    return subprocess.Popen([sys.executable, "-m", "daydream", *args], env=clean, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def rows(data: Path, table, **where) -> int:
    """Rows recorded so far; none while the tracker has not yet created its tables."""
    with Session(make_engine(f"sqlite:///{data / 'daydream.db'}")) as session:
        query = select(func.count()).select_from(table)
        for column, value in where.items():
            query = query.where(getattr(table, column) == value)
        try:
            return session.exec(query).one()
        except OperationalError:
            return 0


def test_run_completes_the_example_with_simulated_responses(data: Path) -> None:
    started = time.monotonic()
    process = daydream("run", "--data", str(data), "--experiment-id", "demo")
    output, _ = process.communicate(timeout=180)
    print(f"daydream run wall time: {time.monotonic() - started:.1f}s")
    assert process.returncode == 0, output
    assert "SIMULATED" in output
    assert "Top 10 generations of demo" in output
    assert rows(data, GenerationResult) == 16
    assert rows(data, EvaluationResult, status="scored") == 32
    assert (data / "6_summary" / "final_results.csv").is_file()
    assert not list((data / "logs").glob("*.pid"))


def test_ctrl_c_stops_cleanly_and_the_same_id_resumes(data: Path) -> None:
    # The example's free tier allows 20 requests a minute: its 8 generations alone take 21 s.
    first = daydream("run", "--data", str(data), "--experiment-id", "resumable")
    deadline = time.monotonic() + 120
    while not (data / "daydream.db").exists() or rows(data, GenerationResult) < 1:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == 130, output
    assert "daydream run --experiment-id resumable" in output
    done_before = rows(data, LlmCall)
    assert 0 < done_before < 48

    second = daydream("run", "--data", str(data), "--experiment-id", "resumable")
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output
    assert rows(data, GenerationResult) == 16
    assert rows(data, EvaluationResult) == 32
    assert rows(data, LlmCall) == 48


def test_up_then_run_uses_the_running_stack_then_down_stops_it(data: Path) -> None:
    up = daydream("up", "--data", str(data))
    output, _ = up.communicate(timeout=120)
    assert up.returncode == 0, output
    try:
        run = daydream("run", "--data", str(data), "--experiment-id", "on-up")
        output, _ = run.communicate(timeout=180)
        assert run.returncode == 0, output
        assert "using the stack started by `daydream up`" in output
        assert (data / "stack.json").exists()
    finally:
        down = daydream("down", "--data", str(data))
        output, _ = down.communicate(timeout=60)
    assert down.returncode == 0, output
    assert not (data / "stack.json").exists()


def test_down_stops_what_is_left_of_a_stack_that_lost_a_service(data: Path) -> None:
    up = daydream("up", "--data", str(data))
    output, _ = up.communicate(timeout=120)
    assert up.returncode == 0, output
    state = StackState.load(data)
    assert state is not None, "up recorded no stack"
    pids = [process["pid"] for process in state.processes.values()]
    assert len(pids) == 7
    try:
        os.kill(state.processes["parser"]["pid"], signal.SIGKILL)
        wait_until(lambda: not state.alive(), timeout_s=10, what="the parser to die")
        down = daydream("down", "--data", str(data))
        output, _ = down.communicate(timeout=60)
        assert down.returncode == 0, output
        assert "stack stopped" in output
        assert not (data / "stack.json").exists()
        assert [pid for pid in pids if pid_alive(pid)] == []
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie: `up` detached its children, so nobody here reaps them."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def test_a_refused_key_stops_the_tier_and_run_says_why_and_how_to_fix_it(data: Path) -> None:
    """Every model answers 401: the first call of each tier opens its circuit, every other task
    of it fails at once without a call, and `run` ends saying what the provider said and the fix."""
    models = data / "1_raw" / "llm_models.csv"
    lines = models.read_text().splitlines()
    header = lines[0].split(",")
    model_column = header.index("model")
    refused = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        cells[model_column] += "+fault=401"
        refused.append(",".join(cells))
    models.write_text("\n".join(refused) + "\n")
    started = time.monotonic()
    process = daydream("run", "--data", str(data), "--experiment-id", "refused", "--yes")
    output, _ = process.communicate(timeout=180)
    took = time.monotonic() - started
    print(f"run with a refused key ended in {took:.1f}s")
    assert process.returncode == 1, output
    assert "did not complete (auth: 16)" in output
    assert "is stopped: " in output and "answered 401" in output and "set OPENROUTER_API_KEY" in output
    assert "daydream rerun refused --failed" in output
