"""Every fault the fake LLM can inject, mixed into one experiment: each task ends done or as one
`TaskFailed` of the right class, retries stay bounded, Retry-After is honoured, and what the
user is told — progress, `daydream status`, the exit code of `daydream run` — is the truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from daydream.fake_llm import FAULT_KINDS, FakeLLMServer, mixed_mode_fault
from services.tracker.tables import EvaluationResult, Failure, GenerationResult, LlmCall
from tests.e2e.chaos import (
    ACK_WAIT_S,
    STRESS_MODELS,
    Model,
    prepare,
    publish,
    running_stack,
    tracker_of,
    wait_finished,
    write_raw,
)
from tests.e2e.conftest import FAST_RETRIES

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
EXPERIMENT = "faults"
FAULT_RATE, FAULT_TIMES, MAX_ATTEMPTS = 0.2, 2, 6
PERMANENT = {"400": "bad_request", "402": "payment", "404": "not_found"}
TIER_STOPPING = {"401"}
"""A refused key stops its whole tier (tests/e2e/test_tier_limits.py), so it is not mixed in here."""
MIXED_KINDS = tuple(kind for kind in FAULT_KINDS if kind not in TIER_STOPPING)
TRANSIENT = {"429", "500", "503", "slow", "html", "error200", "empty", "finish_error"}
RETRY_AFTER_429_S = 1.0
"""The fake's Retry-After for a 429 without @seconds."""
CLIENT_TIMEOUT_S = "1.5"
"""A `slow` call sleeps 30 s: the client gives up first and the task is retried."""


def expected_fault(response_id: str) -> str | None:
    """The fake picks a body's fault from its hash, which it echoes in the response id
    (`gen-fake-<first 16 hex of the hash>-<call number>`)."""
    body_hash = response_id.split("-")[2]
    fault = mixed_mode_fault(body_hash, FAULT_RATE, MIXED_KINDS, FAULT_TIMES)
    return fault.kind if fault else None


def test_every_fault_class_ends_done_or_as_one_failure_of_its_class(tmp_path: Path) -> None:
    assert set(FAULT_KINDS) == set(PERMANENT) | TRANSIENT | TIER_STOPPING | {"length"}
    data = tmp_path / "data"
    write_raw(data, STRESS_MODELS, tier_cap=10)
    spec = prepare(data, EXPERIMENT)
    fake_args = ("--fault-rate", str(FAULT_RATE), "--fault-kinds", ",".join(MIXED_KINDS),
                 "--fault-times", str(FAULT_TIMES))
    env = {"DAYDREAM_LLM_TIMEOUT_S": CLIENT_TIMEOUT_S, "DAYDREAM_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}
    with running_stack(data, spec, *fake_args, env=env) as stack:
        publish(stack, spec)
        tracker = tracker_of(data)
        progress = wait_finished(tracker, EXPERIMENT, timeout_s=150)
        stats = stack.fake_llm_stats()

    with Session(tracker.engine) as session:
        calls = session.exec(select(LlmCall).where(LlmCall.experiment_id == EXPERIMENT)).all()
        failures = session.exec(select(Failure).where(Failure.experiment_id == EXPERIMENT)).all()
        generations = session.exec(select(GenerationResult)).all()
        evaluations = session.exec(select(EvaluationResult)).all()

    injected: Counter[str] = Counter()
    for model in stats["models"].values():
        injected.update(model["faults"])
    print(f"faults injected (calls): {dict(sorted(injected.items()))}")
    assert set(injected) == set(MIXED_KINDS), "the experiment is too small to meet every fault kind"

    done_ids = {c.task_id for c in calls}
    assert not done_ids & {f.task_id for f in failures}, "a task both done and failed"
    assert all(not f.resolved and f.attempts == 1 for f in failures)
    assert Counter(f.reason for f in failures) == {reason: injected[kind] for kind, reason in PERMANENT.items()}

    for call in calls:
        assert call.response_id is not None, "the fake names every response"
        kind = expected_fault(call.response_id)
        assert call.response_id.endswith(f"-{call.attempt}"), "the fake saw more calls than the worker made"
        assert kind not in PERMANENT
        if kind in TRANSIENT:
            assert call.attempt == FAULT_TIMES + 1, (call.task_id, kind)
        else:
            assert call.attempt == 1, (call.task_id, kind)
        assert call.truncated == (kind == "length"), (call.task_id, kind)
    rate_limited = [c for c in calls if expected_fault(c.response_id or "") == "429"]
    results: dict[str, GenerationResult | EvaluationResult] = {
        **{r.task_id: r for r in generations},
        **{r.task_id: r for r in evaluations},
    }
    assert rate_limited
    for call in rate_limited:
        call_path = results[call.task_id].call_path
        assert call_path is not None
        record = json.loads(tracker.layout.absolute(call_path).read_text(encoding="utf-8"))
        created = datetime.fromisoformat(record["task"]["emitted_at"])
        waited = datetime.fromisoformat(record["call"]["started_at"]) - created
        assert waited >= timedelta(seconds=FAULT_TIMES * RETRY_AFTER_429_S), (call.task_id, waited)

    assert max(r["started"] for r in stats["requests"].values()) <= MAX_ATTEMPTS
    assert all(r["completed"] <= 1 for r in stats["requests"].values())

    failed_generations = sum(1 for f in failures if f.stage == "generation")
    assert progress.finished
    assert progress.stages["generation"].done == len(generations) == 60 - failed_generations
    assert progress.stages["generation"].failed == failed_generations
    assert progress.stages["evaluation"].failed == sum(1 for f in failures if f.stage == "evaluation")
    assert progress.stages["evaluation"].skipped == failed_generations * 4
    assert progress.stages["evaluation"].done == len(calls) - len(generations)
    assert progress.failures_by_reason == dict(Counter(f.reason for f in failures))


def daydream_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENROUTER_API_KEY", "DAYDREAM_LLM_API_KEY", "DAYDREAM_LLM_BASE_URL", "NATS_URL")}
    return subprocess.run([sys.executable, "-m", "daydream", *args], env={**clean, "COLUMNS": "200", **env},
                          text=True, capture_output=True, timeout=180)


def test_daydream_run_exits_1_with_a_rerun_hint_that_works_when_a_judge_always_fails(tmp_path: Path) -> None:
    """The hint is followed after `run` has stopped its stack: `rerun` starts one, republishes only
    the failed tasks, follows them to the end and tells the truth again."""
    data = tmp_path / "data"
    write_raw(data, [Model("writer", "fake/writer", True, False), Model("judge_ok", "fake/judge", False, True),
                     Model("judge_bad_key", "fake/judge+fault=404", False, True)],
              concepts=4, k_max=2, evaluation_templates=1)
    with FakeLLMServer(latency_s=0.02) as fake:
        env = {**FAST_RETRIES, "DAYDREAM_LLM_BASE_URL": fake.base_url, "DAYDREAM_ACK_WAIT_S": str(ACK_WAIT_S)}
        run = daydream_cli("run", "--data", str(data), "--experiment-id", "bad-judge", env=env)
        status = daydream_cli("status", "bad-judge", "--data", str(data), env=env)
        bad_calls = fake.stats()["models"]["fake/judge+fault=404"]["calls"]
        calls_before_rerun = fake.stats()["total_calls"]
        rerun = daydream_cli("rerun", "bad-judge", "--failed", "--data", str(data), env=env)
        calls_of_rerun = fake.stats()["total_calls"] - calls_before_rerun

    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "6 task(s) did not complete" in output and "not_found: 6" in output
    assert "daydream rerun bad-judge --failed" in output
    assert bad_calls == 6, "a permanent 404 was retried"
    assert status.returncode == 0, status.stdout + status.stderr
    assert "not_found" in status.stdout and "daydream rerun bad-judge --failed" in status.stdout
    rerun_output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 1, rerun_output
    assert "republished 6 task(s) of bad-judge" in rerun_output
    assert "6 task(s) did not complete" in rerun_output and "not_found: 6" in rerun_output
    assert calls_of_rerun == 6, "the rerun called more than the six failed evaluations"
