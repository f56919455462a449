from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from services.llm_worker.retry_policy import PERMANENT_KINDS, backoff_ceiling_s, decide
from shared.llm import ErrorKind, LLMError, classify_response, parse_retry_after

TRANSIENT = [
    ErrorKind.RATE_LIMITED,
    ErrorKind.SERVER_ERROR,
    ErrorKind.TIMEOUT,
    ErrorKind.CONNECTION,
    ErrorKind.BAD_BODY,
    ErrorKind.ERROR_IN_RESPONSE,
    ErrorKind.FINISH_ERROR,
    ErrorKind.EMPTY_CONTENT,
]
PERMANENT = [
    ErrorKind.BAD_REQUEST,
    ErrorKind.AUTH,
    ErrorKind.PAYMENT,
    ErrorKind.FORBIDDEN,
    ErrorKind.NOT_FOUND,
    ErrorKind.OTHER_CLIENT_ERROR,
    ErrorKind.TRUNCATED_EMPTY,
    ErrorKind.QUOTA_EXHAUSTED,
    ErrorKind.BUDGET,
]


class CeilingRandom(random.Random):
    """Always draws the top of the jitter range, exposing the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_every_error_kind_is_classified():
    assert set(TRANSIENT) | set(PERMANENT) == set(ErrorKind)
    assert set(PERMANENT) == PERMANENT_KINDS


@pytest.mark.parametrize("kind", TRANSIENT)
def test_transient_errors_are_retried_with_jittered_backoff(kind):
    error = LLMError(kind, "boom")
    decision = decide(error, 1, 6, base_delay_s=2.0, max_delay_s=60.0, rng=random.Random(7))
    assert decision.retry
    assert 0.0 <= decision.delay_s <= 2.0
    assert kind.value in decision.reason and "boom" in decision.reason


@pytest.mark.parametrize("kind", PERMANENT)
def test_permanent_errors_are_never_retried(kind):
    decision = decide(LLMError(kind, "nope", status=400), 1, 6, base_delay_s=2.0, max_delay_s=60.0)
    assert not decision.retry
    assert decision.reason.startswith("permanent error")
    assert kind.value in decision.reason


@pytest.mark.parametrize("kind", TRANSIENT)
def test_no_retry_once_the_attempt_budget_is_spent(kind):
    decision = decide(LLMError(kind, "still failing"), 6, 6, base_delay_s=2.0, max_delay_s=60.0)
    assert not decision.retry
    assert decision.reason == f"gave up after 6 attempts: {kind.value}: still failing"


def test_backoff_doubles_per_attempt_up_to_the_cap():
    error = LLMError(ErrorKind.SERVER_ERROR, "503")
    delays = [
        decide(error, attempt, 10, base_delay_s=1.0, max_delay_s=10.0, rng=CeilingRandom()).delay_s
        for attempt in range(1, 7)
    ]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff_ceiling_s(3, 1.0, 10.0) == 4.0


def test_full_jitter_spreads_retries_between_zero_and_the_ceiling():
    error = LLMError(ErrorKind.TIMEOUT, "slow")
    rng = random.Random(1)
    delays = [decide(error, 4, 10, base_delay_s=1.0, max_delay_s=60.0, rng=rng).delay_s for _ in range(200)]
    assert all(0.0 <= delay <= 8.0 for delay in delays)
    assert min(delays) < 2.0 and max(delays) > 6.0


def test_rate_limit_waits_exactly_the_retry_after_seconds():
    error = LLMError(ErrorKind.RATE_LIMITED, "429", status=429, retry_after_s=parse_retry_after("7"))
    decision = decide(error, 1, 6, base_delay_s=2.0, max_delay_s=60.0, rng=random.Random(0))
    assert decision.retry and decision.delay_s == 7.0
    assert "Retry-After" in decision.reason


def test_rate_limit_honours_an_http_date_retry_after():
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=30), usegmt=True)
    error = LLMError(ErrorKind.RATE_LIMITED, "429", status=429, retry_after_s=parse_retry_after(header, now=now))
    decision = decide(error, 2, 6, base_delay_s=2.0, max_delay_s=60.0)
    assert decision.delay_s == pytest.approx(30.0)


def test_retry_after_is_capped_at_the_max_delay():
    error = LLMError(ErrorKind.RATE_LIMITED, "429", status=429, retry_after_s=3600.0)
    assert decide(error, 1, 6, base_delay_s=2.0, max_delay_s=120.0).delay_s == 120.0


def test_rate_limit_without_retry_after_falls_back_to_backoff():
    error = LLMError(ErrorKind.RATE_LIMITED, "429", status=429)
    decision = decide(error, 3, 6, base_delay_s=2.0, max_delay_s=60.0, rng=CeilingRandom())
    assert decision.retry and decision.delay_s == 8.0
    assert "backoff" in decision.reason


@pytest.mark.parametrize(
    ("header", "expected"),
    [("12", 12.0), ("0.5", 0.5), (" 3 ", 3.0), ("", None), (None, None), ("soon", None), ("-4", 0.0)],
)
def test_parse_retry_after_seconds(header, expected):
    assert parse_retry_after(header) == expected


def test_parse_retry_after_date_in_the_past_means_now():
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Sat, 01 Mar 2025 11:00:00 GMT", now=now) == 0.0


def test_an_empty_answer_cut_by_the_token_budget_fails_at_once_with_advice():
    """Asking again with the same max_tokens gets the same empty answer: one failure, no retries."""
    choice = {"message": {"role": "assistant", "content": ""}, "finish_reason": "length"}
    body = json.dumps({"choices": [choice], "usage": {"completion_tokens_details": {"reasoning_tokens": 1024}}})
    with pytest.raises(LLMError) as caught:
        classify_response(200, {}, body, model="acme/thinker", base_url="https://openrouter.ai/api/v1", secret="")
    decision = decide(caught.value, 1, 6, base_delay_s=2.0, max_delay_s=60.0)
    assert not decision.retry
    assert decision.reason == (
        "permanent error, not retried: truncated_empty: acme/thinker spent its max_tokens budget before "
        "writing any text (reasoning tokens: 1024); raise max_tokens in llm_models.csv"
    )
