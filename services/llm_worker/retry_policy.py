"""Whether and when to try a failed LLM call again — a pure function, so every case is testable.

Transient failures (rate limits, 5xx, timeouts, broken or empty answers) are retried with
exponential backoff and full jitter, so that many workers hit by the same outage do not come back
in lockstep. A `Retry-After` from the server wins over our own backoff. Client errors (bad
request, auth, payment, …) and an empty answer cut by the token budget will fail the same way
every time: they are never retried.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.llm import ErrorKind, LLMError

PERMANENT_KINDS = frozenset(
    {
        ErrorKind.BAD_REQUEST,
        ErrorKind.AUTH,
        ErrorKind.PAYMENT,
        ErrorKind.FORBIDDEN,
        ErrorKind.NOT_FOUND,
        ErrorKind.OTHER_CLIENT_ERROR,
        ErrorKind.TRUNCATED_EMPTY,
        ErrorKind.QUOTA_EXHAUSTED,
        ErrorKind.BUDGET,
    }
)


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float
    reason: str


def backoff_ceiling_s(attempt: int, base_delay_s: float, max_delay_s: float) -> float:
    """Attempt 1 failed -> up to base, attempt 2 -> up to 2*base, … never above max."""
    return min(max_delay_s, base_delay_s * 2 ** max(0, attempt - 1))


def decide(
    error: LLMError,
    attempt: int,
    max_attempts: int,
    *,
    base_delay_s: float,
    max_delay_s: float,
    rng: random.Random | None = None,
) -> RetryDecision:
    """`attempt` is the 1-based number of the attempt that just failed."""
    what = f"{error.kind.value}: {error.message}"
    if error.kind in PERMANENT_KINDS:
        return RetryDecision(retry=False, delay_s=0.0, reason=f"permanent error, not retried: {what}")
    if attempt >= max_attempts:
        return RetryDecision(retry=False, delay_s=0.0, reason=f"gave up after {attempt} attempts: {what}")
    if error.retry_after_s is not None:
        delay_s = min(max_delay_s, error.retry_after_s)
        source = "Retry-After"
    else:
        delay_s = (rng or random).uniform(0.0, backoff_ceiling_s(attempt, base_delay_s, max_delay_s))
        source = "backoff"
    return RetryDecision(
        retry=True,
        delay_s=delay_s,
        reason=f"attempt {attempt}/{max_attempts} failed, retrying in {delay_s:.1f}s ({source}): {what}",
    )
