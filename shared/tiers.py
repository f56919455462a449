"""The tier is the unit of control: one cap, one rate, one cooldown per tier, shared by writing and
judging, by every service and every replica.

The cap is a JetStream consumer: `DD_SLOTS` holds a few slot messages per tier, and the tier's
slot consumer delivers at most `max_ack_pending` of them at once. A worker pulls a slot before a
call and naks it back after; a nak with a delay keeps the slot counted as pending, so a delay of
`cap × 60 / rpm − time held` spaces the tier's calls at exactly its rate. A crashed holder's slot
comes back after the slot ack wait. Judging pulls with a higher priority than writing (the
consumer's `prioritized` policy), so a freed slot goes to a judge first and results arrive while
writing goes on.

What cannot be a consumer setting — a cooldown after a 429, an open circuit after a refused key,
the adaptive cap — is the tier's `TierState` in a KV bucket that every worker watches.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import Field

from shared.events import Contract, Stage, utcnow

SLOTS_STREAM = "DD_SLOTS"
SLOT_SUBJECT_PREFIX = "dd.slot."
SLOT_GROUP = "slots"
TIER_STATE_BUCKET = "dd_tiers"
STAGE_PRIORITY: dict[Stage, int] = {"evaluation": 0, "generation": 1}
"""Lower is served first by the slot consumer's `prioritized` policy."""
ADAPTIVE_HOLD_S = 5.0
"""429s within this long of the last halving are one storm: the cap halves once for them."""
RECOVERY_CALLS = 20
"""Successful calls (in one process) since the last change before the cap climbs back by one."""
RECOVERY_HOLD_S = 10.0
RATE_MARGIN_S = 0.05
"""Added to every spacing, so jitter between our clock and the provider's never fits one call too many."""


def slot_subject(tier: str) -> str:
    return f"{SLOT_SUBJECT_PREFIX}{tier}"


def slot_consumer(tier: str) -> str:
    return f"slots-{tier}"


class TierState(Contract):
    """The tier's shared control state; `publish` writes the limits from tiers.csv, workers the rest."""

    tier: str
    max_concurrent: int = Field(ge=1)
    requests_per_minute: float | None = None
    effective_cap: int = Field(ge=1)
    paused_until: datetime | None = None
    pause_reason: str = ""
    circuit: str = ""
    """Why no call of this tier may start (a refused key, a used-up quota); empty when closed."""
    circuit_kind: str = ""
    """The error kind that opened the circuit, given to the tasks it fails."""
    circuit_until: datetime | None = None
    """When an open circuit closes by itself (a quota's reset); None = until the next `publish`."""
    changed_at: datetime = Field(default_factory=utcnow)

    def release_delay_s(self, held_s: float) -> float:
        """How long a returned slot stays counted as pending, so the tier keeps its rate."""
        if not self.requests_per_minute:
            return 0.0
        return max(0.0, self.effective_cap * 60.0 / self.requests_per_minute + RATE_MARGIN_S - held_s)

    def open_circuit(self, now: datetime) -> str:
        if self.circuit and (self.circuit_until is None or now < self.circuit_until):
            return self.circuit
        return ""

    def pause_left_s(self, now: datetime) -> float:
        return (self.paused_until - now).total_seconds() if self.paused_until and self.paused_until > now else 0.0


def with_limits(current: TierState | None, tier: str, max_concurrent: int, rpm: float | None) -> TierState:
    """The state `publish` leaves: the limits of tiers.csv, a full cap and a closed circuit (a new
    experiment is the operator trying again), but a provider's cooldown still honoured."""
    return TierState(tier=tier, max_concurrent=max_concurrent, requests_per_minute=rpm, effective_cap=max_concurrent,
                     paused_until=current.paused_until if current else None,
                     pause_reason=current.pause_reason if current else "")


def after_rate_limit(state: TierState, now: datetime, retry_after_s: float | None) -> TierState:
    """A 429 pauses the whole tier for its Retry-After and halves the cap once per storm."""
    paused_until = state.paused_until
    if retry_after_s:
        paused_until = max(paused_until or now, now + timedelta(seconds=retry_after_s))
    cap = state.effective_cap
    if (now - state.changed_at).total_seconds() >= ADAPTIVE_HOLD_S or cap == state.max_concurrent:
        cap = max(1, cap // 2)
    changed = cap != state.effective_cap
    return state.model_copy(update={
        "paused_until": paused_until, "pause_reason": "rate limited (429)" if retry_after_s else state.pause_reason,
        "effective_cap": cap, "changed_at": now if changed else state.changed_at,
    })


def after_recovery(state: TierState, now: datetime) -> TierState:
    return state.model_copy(update={"effective_cap": min(state.max_concurrent, state.effective_cap + 1),
                                    "changed_at": now})


def recovers(state: TierState, successes: int, now: datetime) -> bool:
    return (state.effective_cap < state.max_concurrent and successes >= RECOVERY_CALLS
            and (now - state.changed_at).total_seconds() >= RECOVERY_HOLD_S)


def with_circuit_open(state: TierState, kind: str, reason: str, until: datetime | None) -> TierState:
    return state.model_copy(update={"circuit": reason, "circuit_kind": kind, "circuit_until": until})
