"""The tier's shared control state as pure functions: the rate a returned slot keeps, the cooldown
and the halving a 429 brings, the climb back, and what `publish` resets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from daydream.results_cmd import render_tiers
from shared.llm import ErrorKind, LLMError, parse_rate_limit_reset, quota_exhausted
from shared.tiers import (
    ADAPTIVE_HOLD_S,
    RECOVERY_CALLS,
    RECOVERY_HOLD_S,
    TierState,
    after_rate_limit,
    after_recovery,
    recovers,
    with_circuit_open,
    with_limits,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def state(**changes) -> TierState:
    base = TierState(tier="free", max_concurrent=4, requests_per_minute=20, effective_cap=4, changed_at=NOW)
    return base.model_copy(update=changes)


@pytest.mark.parametrize(("cap", "rpm", "held", "delay"), [(1, 20, 1.0, 2.05), (4, 20, 2.0, 10.05), (4, 20, 30.0, 0.0),
                                                           (5, None, 1.0, 0.0)])
def test_a_returned_slot_stays_out_long_enough_to_keep_the_tiers_rate(cap, rpm, held, delay) -> None:
    """`cap` slots each cycling once per cap*60/rpm seconds start rpm calls a minute, no more."""
    assert state(effective_cap=cap, requests_per_minute=rpm).release_delay_s(held) == pytest.approx(delay)


def test_a_429_pauses_the_tier_for_its_retry_after_and_halves_the_cap_once_per_storm() -> None:
    first = after_rate_limit(state(), NOW, 2.0)
    assert first.paused_until == NOW + timedelta(seconds=2) and first.effective_cap == 2
    same_storm = after_rate_limit(first, NOW + timedelta(seconds=1), 2.0)
    assert same_storm.effective_cap == 2 and same_storm.paused_until == NOW + timedelta(seconds=3)
    later = after_rate_limit(same_storm, NOW + timedelta(seconds=ADAPTIVE_HOLD_S + 1), None)
    assert later.effective_cap == 1
    assert after_rate_limit(later, NOW + timedelta(seconds=60), None).effective_cap == 1


def test_a_later_shorter_retry_after_never_shortens_a_pause() -> None:
    long = after_rate_limit(state(), NOW, 30.0)
    assert after_rate_limit(long, NOW + timedelta(seconds=1), 1.0).paused_until == NOW + timedelta(seconds=30)


def test_the_cap_climbs_back_by_one_after_sustained_success_and_never_above_the_tiers() -> None:
    low = state(effective_cap=1, changed_at=NOW)
    assert not recovers(low, RECOVERY_CALLS, NOW + timedelta(seconds=RECOVERY_HOLD_S / 2))
    assert not recovers(low, RECOVERY_CALLS - 1, NOW + timedelta(seconds=RECOVERY_HOLD_S + 1))
    later = NOW + timedelta(seconds=RECOVERY_HOLD_S + 1)
    assert recovers(low, RECOVERY_CALLS, later)
    assert after_recovery(low, later).effective_cap == 2
    assert not recovers(state(), RECOVERY_CALLS * 10, later + timedelta(hours=1))


def test_publish_restores_the_cap_and_closes_the_circuit_but_keeps_a_providers_cooldown() -> None:
    troubled = with_circuit_open(after_rate_limit(state(), NOW, 120.0), "auth", "key refused", None)
    fresh = with_limits(troubled, "free", 6, 30)
    assert (fresh.max_concurrent, fresh.effective_cap, fresh.requests_per_minute) == (6, 6, 30)
    assert fresh.open_circuit(NOW) == "" and fresh.paused_until == NOW + timedelta(seconds=120)


def test_a_circuit_with_an_end_closes_by_itself() -> None:
    quota = with_circuit_open(state(), "quota_exhausted", "quota used up", NOW + timedelta(hours=2))
    assert quota.open_circuit(NOW) == "quota used up"
    assert quota.open_circuit(NOW + timedelta(hours=3)) == ""
    assert with_circuit_open(state(), "auth", "key refused", None).open_circuit(NOW + timedelta(days=30))


@pytest.mark.parametrize(("header", "expected"), [
    ("1796385600000", datetime(2026, 12, 4, 12, 0, tzinfo=UTC)),
    ("1796385600", datetime(2026, 12, 4, 12, 0, tzinfo=UTC)),
    ("30", NOW + timedelta(seconds=30)),
    ("soon", None), ("", None),
])
def test_rate_limit_reset_is_read_in_each_providers_unit(header: str, expected: datetime | None) -> None:
    assert parse_rate_limit_reset(header, NOW) == expected


def test_only_a_reset_beyond_the_horizon_is_a_used_up_quota() -> None:
    def limited(resets_in_s: float) -> LLMError:
        return LLMError(ErrorKind.RATE_LIMITED, "Rate limit exceeded", status=429,
                        resets_at=NOW + timedelta(seconds=resets_in_s))
    assert quota_exhausted(limited(60), NOW, 900) is None
    daily = quota_exhausted(limited(6 * 3600), NOW, 900)
    assert daily is not None and daily.kind is ErrorKind.QUOTA_EXHAUSTED and "2026-12-03 18:00 UTC" in daily.message
    assert quota_exhausted(LLMError(ErrorKind.SERVER_ERROR, "x", status=500), NOW, 900) is None


def test_status_shows_each_tiers_cap_now_its_cooldown_and_a_stopped_circuit() -> None:
    now = datetime.now(UTC)
    cooling = after_rate_limit(state(tier="paid", changed_at=now - timedelta(minutes=1)), now, 30.0)
    stopped = with_circuit_open(state(tier="free"), "auth", "the API key was refused", None)
    console = Console(width=200, record=True)
    console.print(render_tiers([cooling, stopped]))
    text = console.export_text()
    assert "2 / 4" in text and "cooling down" in text and "rate limited (429)" in text
    assert "stopped: the API key was refused" in text
