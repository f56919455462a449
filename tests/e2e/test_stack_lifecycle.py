"""The stack as a user drives it, with real processes, real signals and a real nats-server: an
experiment is answered only by its own endpoint, one stack per data dir, every way of stopping
`run` stops everything it started, `down` signals only its own processes, a broken stack is
named with its one fix (`up`), and a second `run` reuses the first one's responses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from daydream.nats_process import free_port
from daydream.publish_cmd import prepare_experiment, publish_experiment
from daydream.stack import SERVICES, EmbeddedStack, StackState, start_time
from services.tracker.db import make_engine
from services.tracker.tables import EvaluationResult, Failure, GenerationResult, LlmCall
from shared.settings import Settings
from tests.e2e.chaos import wait_until
from tests.e2e.conftest import FAST_RETRIES
from tests.e2e.test_run_cli import daydream, pid_alive, rows

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def said(process: subprocess.Popen, timeout_s: float) -> str:
    """What the command printed, its lines unwrapped (rich wraps long paths)."""
    output, _ = process.communicate(timeout=timeout_s)
    return " ".join(output.split())


def stack_pids(data: Path) -> list[int]:
    state = StackState.load(data)
    return [process["pid"] for process in state.processes.values()] if state else []


def wait_for_generations(data: Path, process: subprocess.Popen, at_least: int = 1) -> None:
    wait_until(lambda: process.poll() is None and (data / "daydream.db").exists()
               and rows(data, GenerationResult) >= at_least, timeout_s=120, what="a first generation")


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def real_endpoint(tmp_path: Path) -> Iterator[str]:
    """An endpoint that is not the simulated one: the fake LLM on a port of its own, reached with a key."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "daydream", "fake-llm", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health"), timeout_s=60, what="the endpoint")
    yield f"http://127.0.0.1:{port}/v1"
    server.terminate()
    server.wait(timeout=20)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def llm_calls(data: Path, experiment_id: str) -> list[LlmCall]:
    with Session(make_engine(f"sqlite:///{data / 'daydream.db'}")) as session:
        return list(session.exec(select(LlmCall).where(LlmCall.experiment_id == experiment_id)).all())


# ---- 1. an experiment is answered only by its own endpoint --------------------------------------------


def test_a_real_experiment_is_never_answered_by_the_simulated_endpoint(data: Path, real_endpoint: str) -> None:
    keyed = {"DAYDREAM_LLM_BASE_URL": real_endpoint, "OPENROUTER_API_KEY": "sk-test-not-a-real-key"}
    real = daydream("run", "--data", str(data), "--experiment-id", "realA", env=keyed)
    wait_for_generations(data, real)
    real.send_signal(signal.SIGINT)
    output = said(real, 90)
    assert real.returncode == 130, output
    spec = json.loads((data / "experiments" / "realA" / "spec.json").read_text())
    assert spec["endpoint"] == real_endpoint and "sk-test" not in json.dumps(spec)
    calls_before = len(llm_calls(data, "realA"))

    resumed_without_key = daydream("run", "--data", str(data), "--experiment-id", "realA")
    output = said(resumed_without_key, 60)
    assert resumed_without_key.returncode == 2, output
    assert f"was started against endpoint {real_endpoint}" in output and "DAYDREAM_LLM_BASE_URL" in output

    # A simulated experiment on the same data dir: its workers meet realA's leftover tasks.
    simulated_from = datetime.now(UTC)
    simulated = daydream("run", "--data", str(data), "--experiment-id", "fakeB")
    output = said(simulated, 240)
    assert simulated.returncode == 0, output
    answered_since = [(call.task_id, call.cached, call.started_at) for call in llm_calls(data, "realA")
                      if call.started_at.replace(tzinfo=UTC) >= simulated_from]
    assert answered_since == [], f"simulated answers recorded in realA ({calls_before} calls before)"
    with Session(make_engine(f"sqlite:///{data / 'daydream.db'}")) as session:
        refused = session.exec(select(Failure).where(Failure.experiment_id == "realA")).all()
    assert refused and {failure.reason for failure in refused} == {"other_endpoint"}


# ---- 2. one stack per data dir -------------------------------------------------------------------------


def test_a_second_run_on_the_same_data_dir_is_refused_naming_the_first(data: Path) -> None:
    first = daydream("run", "--data", str(data), "--experiment-id", "first")
    try:
        wait_for_generations(data, first)
        second = daydream("run", "--data", str(data))
        output = said(second, 60)
        assert second.returncode == 1, output
        assert f"`daydream run` (pid {first.pid})" in output
        up = daydream("up", "--data", str(data))
        output = said(up, 60)
        assert up.returncode == 1, output
        assert f"(pid {first.pid})" in output
    finally:
        pids = stack_pids(data)
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=90)
        kill_all(pids)
    assert not list((data / "experiments").glob("*-*-*")), "the refused run snapshotted nothing"


# ---- 3. every way of stopping stops cleanly ------------------------------------------------------------


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGHUP,), (signal.SIGINT, signal.SIGINT)],
                         ids=["SIGTERM", "SIGHUP", "SIGINT-twice"])
def test_every_way_of_stopping_run_stops_what_it_started(data: Path, signals: tuple[int, ...]) -> None:
    run = daydream("run", "--data", str(data), "--experiment-id", "stopped")
    wait_for_generations(data, run)
    pids = stack_pids(data)
    assert len(pids) == 7, "nats-server, the fake LLM and five services"
    try:
        for signum in signals:
            run.send_signal(signum)
            time.sleep(0.1)
        output = said(run, 90)
        assert run.returncode == 130, output
        assert "Resume with: daydream run --experiment-id stopped" in output
        assert [pid for pid in pids if pid_alive(pid)] == [], "orphans left behind"
        assert not (data / "stack.json").exists()
        status = daydream("status", "stopped", "--data", str(data))
        output = said(status, 60)
        assert "stopped: interrupted" in output, output
    finally:
        kill_all(pids)


def test_down_stops_the_orphans_of_a_crashed_run_and_status_names_them(data: Path) -> None:
    run = daydream("run", "--data", str(data), "--experiment-id", "crashed")
    wait_for_generations(data, run)
    pids = stack_pids(data)
    try:
        run.kill()
        run.wait()
        status = daydream("status", "crashed", "--data", str(data))
        output = said(status, 60)
        assert f"has lost its owner `daydream run` (pid {run.pid})" in output, output
        assert "`daydream up --data" in output
        again = daydream("run", "--data", str(data), "--experiment-id", "crashed")
        output = said(again, 60)
        assert again.returncode == 1 and "restores it" in output, output
        down = daydream("down", "--data", str(data))
        output = said(down, 90)
        assert down.returncode == 0, output
        assert [pid for pid in pids if pid_alive(pid)] == []
    finally:
        kill_all(pids)


def test_down_never_signals_a_process_that_merely_reuses_a_recorded_pid(data: Path) -> None:
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        state = StackState(data_dir=str(data), nats_url="nats://127.0.0.1:1", owner={"command": "up", "pid": 1},
                           processes={"parser": {"pid": bystander.pid, "started": (start_time(bystander.pid) or 0) - 1}})
        state.save(data)
        down = daydream("down", "--data", str(data))
        output = said(down, 60)
        assert down.returncode == 0, output
        assert bystander.poll() is None, "down killed a process it did not start"
        (data / "stack.json").write_text(json.dumps({"data_dir": str(data), "nats_url": "nats://127.0.0.1:1",
                                                     "nats_pid": bystander.pid, "services": {}}))
        down = daydream("down", "--data", str(data))
        down.communicate(timeout=60)
        assert bystander.poll() is None, "down trusted a stack.json without process identities"
    finally:
        bystander.kill()
        bystander.wait()


# ---- 4. a broken stack is named with its one fix --------------------------------------------------------


def test_a_stack_that_lost_a_process_is_never_published_past_and_up_restores_it_on_its_port(data: Path) -> None:
    up = daydream("up", "--data", str(data))
    output = said(up, 120)
    assert up.returncode == 0, output
    before = StackState.load(data)
    assert before is not None, "up recorded no stack"
    pids = stack_pids(data)
    try:
        os.kill(before.processes["parser"]["pid"], signal.SIGKILL)
        wait_until(lambda: not before.alive(), timeout_s=10, what="the parser to die")
        for command in (["publish", "--experiment-id", "lost"], ["run", "--experiment-id", "lost"]):
            refused = daydream(*command, "--data", str(data))
            output = said(refused, 60)
            assert refused.returncode != 0, output
            assert "has lost parser" in output and "`daydream up --data" in output, output
            assert "4222" not in output and "published" not in output
        restored = daydream("up", "--data", str(data))
        output = said(restored, 120)
        assert restored.returncode == 0, output
        assert "has lost parser" in output and "starting it again" in output
        after = StackState.load(data)
        pids += stack_pids(data)
        assert after is not None and after.alive() and after.nats_url == before.nats_url, "NATS_URL printed before still holds"
    finally:
        down = daydream("down", "--data", str(data))
        down.communicate(timeout=90)
        kill_all(pids)


# ---- 5. responses are reused across runs ----------------------------------------------------------------


def test_a_second_run_reuses_the_first_runs_responses(data: Path) -> None:
    for experiment_id in ("once", "twice"):
        run = daydream("run", "--data", str(data), "--experiment-id", experiment_id)
        output = said(run, 240)
        assert run.returncode == 0, output
    assert len(llm_calls(data, "once")) == 48
    second = llm_calls(data, "twice")
    assert len(second) == 48 and all(call.cached for call in second), "the fake's new port defeated reuse"
    assert rows(data, EvaluationResult, experiment_id="twice", status="scored") == 32


def test_rerun_failed_reparses_answered_evaluations_that_were_never_scored(data: Path) -> None:
    """The parser died: every evaluation has its answer and no score. `rerun --failed` republishes
    them; the stored responses answer them (no new paid call) and the parser scores them."""
    stack = EmbeddedStack(data, llm_base_url=None, extra_env=FAST_RETRIES)
    try:
        stack.start_nats()
        stack.start_fake_llm()
        spec = prepare_experiment(data, "unscored", None, None, None, False)
        settings = Settings(data=data, nats_url=stack.nats_url)
        stack.declare_topology(settings, spec.tiers)
        stack.start_services(tuple(name for name in SERVICES if name != "parser"))
        asyncio.run(publish_experiment(settings, spec))
        wait_until(lambda: (data / "daydream.db").exists() and rows(data, EvaluationResult, has_response=True) == 32,
                   timeout_s=180, what="every evaluation answered")
    finally:
        stack.stop()
    assert rows(data, EvaluationResult, status="scored") == 0
    paid = rows(data, LlmCall, cached=False)

    rerun = daydream("rerun", "unscored", "--failed", "--data", str(data))
    output = said(rerun, 240)
    assert rerun.returncode == 0, output
    assert "republished 32 task(s)" in output
    assert rows(data, EvaluationResult, status="scored") == 32
    assert rows(data, LlmCall, cached=False) == paid, "a re-parse made a new call"
