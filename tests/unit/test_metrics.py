"""What `/metrics` exports: token series that add up, no `_created` twins, and experiment series
that go away once an experiment is long finished."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY, generate_latest

from shared import metrics
from shared.events import CallRecord


def call(**tokens: int) -> CallRecord:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return CallRecord(text="x", request_hash="h", started_at=at, finished_at=at, **tokens)


def sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_token_directions_add_up_to_what_was_billed() -> None:
    """Providers count reasoning inside completion_tokens: summing the directions must not count it twice."""
    labels = {"stage": "generation", "model": "test/tokens-add-up"}
    record = call(prompt_tokens=10, completion_tokens=30, reasoning_tokens=20)
    metrics.observe_llm_call("generation", "test/tokens-add-up", "free", record)
    directions = {direction: sample("daydream_llm_tokens_total", {**labels, "direction": direction})
                  for direction in ("prompt", "completion", "reasoning")}
    assert directions == {"prompt": 10, "completion": 10, "reasoning": 20}
    assert sum(directions.values()) == record.prompt_tokens + record.completion_tokens


def test_no_created_series_are_exported() -> None:
    metrics.observe_llm_call("evaluation", "test/no-created", "free", call(prompt_tokens=1))
    exposition = generate_latest(REGISTRY).decode()
    assert "daydream_llm_requests_total{" in exposition
    assert "_created" not in exposition


def experiment_series(experiment_id: str) -> list[str]:
    return [line for line in generate_latest(REGISTRY).decode().splitlines()
            if f'experiment="{experiment_id}"' in line]


def test_experiment_series_stay_while_running_and_shortly_after_then_go() -> None:
    gauges = metrics.ExperimentGauges(keep_s=600)
    now = datetime.now(UTC)
    for experiment_id in ("exp-running", "exp-recent", "exp-old"):
        metrics.set_experiment_progress(experiment_id, "generation", planned=4, done=3, failed=1)
        metrics.set_experiment_cost(experiment_id, 0.5)

    assert gauges.shown("exp-running", None, now)
    assert gauges.shown("exp-recent", now - timedelta(seconds=599), now)
    assert not gauges.shown("exp-old", (now - timedelta(seconds=601)).replace(tzinfo=None), now)

    assert len(experiment_series("exp-running")) == len(experiment_series("exp-recent")) == 4
    assert experiment_series("exp-old") == []
