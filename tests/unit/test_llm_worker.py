"""`LLMWorker.run` without a broker: a fake client that answers or fails as told, and a dict for
the response store. What a user relies on: a stored answer is never paid for again, a fresh task
calls again unless its own answer is stored, a retryable error is retried, a hopeless one or the
last attempt gives up with the reason, and a task bound to another endpoint is never answered."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from services.llm_worker import worker as worker_module
from services.llm_worker.tier_control import TierStopped
from services.llm_worker.worker import OTHER_ENDPOINT, Completed, GaveUp, LLMWorker, RetryLater, task_request_hash
from shared.events import CallParameters, CallRecord, GenerationTask, ModelSpec, TierSpec
from shared.llm import ErrorKind, LLMError, endpoint_identity
from shared.settings import Settings
from tests.fakes import FakeTierGate

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


def worker(client: FakeClient, store: DictStore, tiers: FakeTierGate | None = None) -> LLMWorker:
    return LLMWorker(client, store, SETTINGS, tiers or FakeTierGate())  # type: ignore[arg-type]


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


async def test_every_call_runs_in_a_slot_of_its_tier_and_its_outcome_reaches_the_tier() -> None:
    """The 429 is told to the tier while the slot is still held, so the slot goes back with the cooldown."""
    limited = LLMError(ErrorKind.RATE_LIMITED, "slow down", status=429, retry_after_s=2.0)
    tiers = FakeTierGate()
    client = FakeClient([limited, "fine"])
    first = await worker(client, DictStore(), tiers).run(task(), attempt=1, heartbeat=no_heartbeat)
    second = await worker(client, DictStore(), tiers).run(task(), attempt=2, heartbeat=no_heartbeat)
    assert isinstance(first, RetryLater) and first.delay_s == 2.0 and isinstance(second, Completed)
    assert tiers.log == [("take", "paid", "generation"), ("failed", "paid", "rate_limited"), ("give back", "paid"),
                         ("take", "paid", "generation"), ("give back", "paid"), ("succeeded", "paid")]


async def test_a_stopped_tier_fails_its_tasks_at_once_with_the_reason_and_calls_nothing() -> None:
    tiers = FakeTierGate(stopped_with=TierStopped("auth", "the API key was refused; set OPENROUTER_API_KEY"))
    client = FakeClient(["must not be used"])
    verdict = await worker(client, DictStore(), tiers).run(task(), attempt=1, heartbeat=no_heartbeat)
    assert isinstance(verdict, GaveUp) and verdict.failure.reason == "auth"
    assert "tier paid is stopped" in verdict.failure.message and "OPENROUTER_API_KEY" in verdict.failure.message
    assert client.calls == 0


async def test_a_429_whose_quota_resets_in_hours_gives_up_at_once_saying_when() -> None:
    resets = datetime.now(UTC) + timedelta(hours=5)
    daily = LLMError(ErrorKind.RATE_LIMITED, "Rate limit exceeded: free-models-per-day", status=429, resets_at=resets)
    tiers = FakeTierGate()
    verdict = await worker(FakeClient([daily]), DictStore(), tiers).run(task(), attempt=1, heartbeat=no_heartbeat)
    assert isinstance(verdict, GaveUp) and verdict.failure.reason == "quota_exhausted"
    assert f"{resets:%Y-%m-%d %H:%M} UTC" in verdict.failure.message
    assert ("failed", "paid", "quota_exhausted") in tiers.log


async def test_a_429_that_resets_soon_is_a_cooldown_and_is_retried() -> None:
    soon = LLMError(ErrorKind.RATE_LIMITED, "slow down", status=429, retry_after_s=3.0,
                    resets_at=datetime.now(UTC) + timedelta(seconds=30))
    verdict = await worker(FakeClient([soon]), DictStore()).run(task(), attempt=1, heartbeat=no_heartbeat)
    assert isinstance(verdict, RetryLater) and verdict.delay_s == 3.0


async def test_a_task_that_waited_for_its_slot_is_answered_from_the_store_if_another_worker_answered_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """JetStream may hand a waiting task to a second worker (heartbeats lost in a failover); when
    that one stored the answer first, the waiting one does not pay again."""
    monkeypatch.setattr(worker_module, "STORE_RECHECK_AFTER_S", 0.0)
    store, client, waiting = DictStore(), FakeClient(["must not be paid twice"]), task()
    key = task_request_hash(waiting, ENDPOINT)
    answered = record("answered by the other worker", key, datetime.now(UTC))
    tiers = FakeTierGate(while_waiting=lambda: store.records.__setitem__(key, answered))
    verdict = await worker(client, store, tiers).run(waiting, attempt=2, heartbeat=no_heartbeat)
    assert isinstance(verdict, Completed) and verdict.record.text == "answered by the other worker"
    assert client.calls == 0
