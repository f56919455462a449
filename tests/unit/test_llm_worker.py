"""`LLMWorker.run` without a broker: a fake client that answers or fails as told, and a dict for
the response store. What a user relies on: a stored answer is never paid for again, a fresh task
calls again unless its own answer is stored, a retryable error is retried, a hopeless one or the
last attempt gives up with the reason, and a task bound to another endpoint is never answered."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from services.llm_worker.worker import OTHER_ENDPOINT, Completed, GaveUp, LLMWorker, RetryLater, task_request_hash
from shared.events import CallParameters, CallRecord, GenerationTask, ModelSpec, TierSpec
from shared.llm import ErrorKind, LLMError, endpoint_identity
from shared.settings import Settings

BASE_URL = "http://llm.test/v1"
SETTINGS = Settings(llm_base_url=BASE_URL, llm_api_key="test-key", max_attempts=3,
                    retry_base_delay_s=1.0, retry_max_delay_s=8.0, heartbeat_s=0.01)
ENDPOINT = endpoint_identity(BASE_URL, SETTINGS.llm_simulated)


def record(text: str, key: str, at: datetime) -> CallRecord:
    return CallRecord(text=text, request_hash=key, started_at=at, finished_at=at)


@dataclass
class FakeClient:
    """Answers in order: a text becomes a record, an `LLMError` is raised."""

    outcomes: list[str | LLMError]
    calls: int = 0

    async def complete(self, model, prompt, parameters, *, attempt, request_hash, replicate) -> CallRecord:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, LLMError):
            raise outcome
        return record(outcome, request_hash, datetime.now(UTC))


@dataclass
class DictStore:
    records: dict[str, CallRecord] = field(default_factory=dict)

    async def get(self, request_hash: str) -> CallRecord | None:
        return self.records.get(request_hash)

    async def put(self, stored: CallRecord) -> None:
        self.records[stored.request_hash] = stored


def task(**changes) -> GenerationTask:
    model = ModelSpec(id="writer", model="vendor/writer", provider="openrouter", tier="paid")
    base = GenerationTask(
        experiment_id="exp", task_id="t1", tier=TierSpec(tier="paid", max_concurrent=2), model=model,
        parameters=CallParameters(temperature=0.7), prompt="Write.", endpoint=ENDPOINT, combo_id="c1",
        generation_template_id="essay", generation_model_id="writer", generation_task_id="t1",
    )
    return base.model_copy(update=changes)


async def no_heartbeat() -> None:
    return None


def worker(client: FakeClient, store: DictStore) -> LLMWorker:
    return LLMWorker(client, store, SETTINGS)  # type: ignore[arg-type]


async def test_an_answer_is_stored_before_it_is_reported_and_a_redelivery_reuses_it() -> None:
    client, store = FakeClient(["an essay"]), DictStore()
    first = await worker(client, store).run(task(), attempt=1, heartbeat=no_heartbeat)
    assert isinstance(first, Completed) and first.record.text == "an essay"
    assert list(store.records) == [task_request_hash(task(), ENDPOINT)]
    again = await worker(client, store).run(task(), attempt=2, heartbeat=no_heartbeat)
    assert isinstance(again, Completed) and again.record.text == "an essay"
    assert client.calls == 1


async def test_a_fresh_task_calls_again_but_keeps_an_answer_made_after_it_was_created() -> None:
    fresh = task(fresh=True)
    key = task_request_hash(fresh, ENDPOINT)
    store = DictStore({key: record("from last month", key, fresh.emitted_at - timedelta(days=30))})
    client = FakeClient(["today's essay"])
    verdict = await worker(client, store).run(fresh, attempt=1, heartbeat=no_heartbeat)
    assert isinstance(verdict, Completed) and verdict.record.text == "today's essay"
    redelivered = await worker(client, store).run(fresh, attempt=2, heartbeat=no_heartbeat)
    assert isinstance(redelivered, Completed) and redelivered.record.text == "today's essay"
    assert client.calls == 1


async def test_a_server_error_is_retried_later_and_the_last_attempt_gives_up_with_the_reason() -> None:
    error = LLMError(ErrorKind.SERVER_ERROR, "502 from upstream", status=502)
    client, store, failing = FakeClient([error, error]), DictStore(), task()
    retry = await worker(client, store).run(failing, attempt=1, heartbeat=no_heartbeat)
    assert isinstance(retry, RetryLater) and retry.delay_s > 0
    final = await worker(client, store).run(failing, attempt=SETTINGS.max_attempts, heartbeat=no_heartbeat)
    assert isinstance(final, GaveUp)
    assert final.failure.reason == "server_error" and "502 from upstream" in final.failure.message
    assert final.failure.task == failing and store.records == {}


async def test_a_bad_request_gives_up_at_once() -> None:
    client = FakeClient([LLMError(ErrorKind.BAD_REQUEST, "unknown model", status=400)])
    verdict = await worker(client, DictStore()).run(task(), attempt=1, heartbeat=no_heartbeat)
    assert isinstance(verdict, GaveUp) and verdict.failure.reason == "bad_request"


async def test_a_task_bound_to_another_endpoint_is_never_answered() -> None:
    client = FakeClient(["must not be used"])
    verdict = await worker(client, DictStore()).run(task(endpoint="https://elsewhere.test/v1"), attempt=1,
                                                    heartbeat=no_heartbeat)
    assert isinstance(verdict, GaveUp) and verdict.failure.reason == OTHER_ENDPOINT
    assert client.calls == 0


@pytest.mark.parametrize("rpm", [30.0, 600.0])
async def test_one_rate_limiter_per_tier_and_rate(rpm: float) -> None:
    """Tasks of one tier share a limiter; a task carrying another rate gets its own."""
    runner = worker(FakeClient([]), DictStore())
    limited = task(tier=TierSpec(tier="paid", max_concurrent=2, requests_per_minute=rpm))
    assert runner._limiter(limited) is runner._limiter(limited.model_copy(update={"task_id": "t2"}))
    other = task(tier=TierSpec(tier="paid", max_concurrent=2, requests_per_minute=rpm * 2))
    assert runner._limiter(other) is not runner._limiter(limited)
    assert runner._limiter(task()) is None
