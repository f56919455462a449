"""A worker process's side of the tier limits (see `shared.tiers`): slots pulled from the tier's
slot consumer, and the tier's state watched from its KV bucket and changed by compare-and-set."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared import metrics
from shared.events import Stage, utcnow
from shared.lifecycle import Renewals
from shared.llm import ErrorKind, LLMError
from shared.settings import Settings
from shared.tiers import (
    SLOT_GROUP,
    SLOTS_STREAM,
    STAGE_PRIORITY,
    TierState,
    after_rate_limit,
    after_recovery,
    recovers,
    slot_consumer,
    with_circuit_open,
)
from shared.topology import read_tier_state, slot_index, tier_states

log = logging.getLogger("daydream")
PULL_EXPIRES_S = 5.0
CONNECTION_COOLDOWN_S = 60.0
"""How long a tier that could not reach its endpoint stays stopped before calls are tried again."""
UPDATE_TRIES = 8
PARKED_S = 1.0
"""How long a slot above the adaptive cap stays out before it is looked at again."""


class TierStopped(Exception):
    """The tier's circuit is open: no call of it may start."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass
class Slot:
    """One of the tier's places, renewed while held so it is never taken back."""

    msg: Msg
    index: int
    stop_renewing: Callable[[], None]
    started: float = field(default_factory=time.monotonic)

    async def give_back(self, delay_s: float) -> None:
        self.stop_renewing()
        with contextlib.suppress(Exception):
            await self.msg.nak(delay=delay_s if delay_s > 0 else None)

    async def retire(self, js: JetStreamContext) -> None:
        """Removed from the stream: the tier's cap was lowered below this slot's index."""
        self.stop_renewing()
        with contextlib.suppress(Exception):
            await self.msg.ack()
            if self.msg.metadata.sequence:
                await js.delete_msg(SLOTS_STREAM, self.msg.metadata.sequence.stream)


class _SlotLine:
    """One inbox per tier and stage for all of a process's slot requests, its replies handed to
    the waiters in order (every reply answers one request, and every waiter made one): no
    subscription made and removed per call. A slot nobody waits for any more goes straight back
    instead of sitting out its ack wait."""

    def __init__(self, inbox: str) -> None:
        self.inbox = inbox
        self._waiters: deque[asyncio.Future[Msg]] = deque()
        self._subscription: Subscription | None = None

    @classmethod
    async def open(cls, nc: Client) -> _SlotLine:
        line = cls(nc.new_inbox())
        line._subscription = await nc.subscribe(line.inbox, cb=line._hand_on)
        return line

    async def _hand_on(self, msg: Msg) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(msg)
                return
        if msg.reply and not (msg.headers or {}).get("Status"):
            with contextlib.suppress(Exception):
                await msg.nak()

    async def next_reply(self, timeout_s: float) -> Msg:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await asyncio.wait_for(waiter, timeout_s)

    async def close(self) -> None:
        if self._subscription:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()


class TierControl:
    def __init__(self, nc: Client, js: JetStreamContext, kv: KeyValue, settings: Settings) -> None:
        self.nc, self.js, self.kv, self.settings = nc, js, kv, settings
        self.states: dict[str, TierState] = {}
        self._revisions: dict[str, int] = {}
        self._successes: Counter[str] = Counter()
        self._unreachable: Counter[str] = Counter()
        self._watch: asyncio.Task | None = None
        self._known = asyncio.Event()
        self.renewals = Renewals(settings.slot_heartbeat_s)
        self._lines: dict[tuple[str, Stage], _SlotLine] = {}

    @classmethod
    async def open(cls, nc: Client, js: JetStreamContext, settings: Settings) -> TierControl:
        control = cls(nc, js, await tier_states(js, settings), settings)
        watcher = await control.kv.watchall()
        control._watch = asyncio.create_task(control._follow(watcher))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(control._known.wait(), 10.0)
        return control

    async def _follow(self, watcher) -> None:
        async for entry in watcher:
            if entry is None:
                self._known.set()
                continue
            if entry.value:
                with contextlib.suppress(ValueError):
                    state = TierState.model_validate_json(entry.value)
                    self.states[state.tier] = state
                    self._revisions[state.tier] = entry.revision or 0
                    metrics.observe_tier_state(state)

    async def close(self) -> None:
        await self.renewals.stop()
        for line in self._lines.values():
            await line.close()
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    def stopped(self, tier: str) -> TierStopped | None:
        state = self.states.get(tier)
        reason = state.open_circuit(utcnow()) if state else ""
        return TierStopped(state.circuit_kind, reason) if state and reason else None

    @contextlib.asynccontextmanager
    async def slot(self, tier: str, stage: Stage) -> AsyncIterator[Slot]:
        """Hold one of the tier's slots for a call; judging is served before writing."""
        slot = await self._take(tier, stage)
        try:
            await self._sit_out_pause(tier)
            if stopped := self.stopped(tier):
                raise stopped
            slot.started = time.monotonic()
            yield slot
        finally:
            state = self.states.get(tier)
            if state and slot.index >= state.max_concurrent:
                await slot.retire(self.js)
            else:
                held = time.monotonic() - slot.started
                await slot.give_back(max(state.release_delay_s(held), state.pause_left_s(utcnow())) if state else 0.0)

    async def _take(self, tier: str, stage: Stage) -> Slot:
        """Pull slots until one is usable. A slot beyond the tier's `max_concurrent` is retired (a
        slot once delivered circulates by redelivery, which `max_ack_pending` does not hold back);
        one beyond the adaptive cap is parked for a second and handed on."""
        while True:
            slot = await self._pull(tier, stage)
            state = self.states.get(tier)
            if state and slot.index >= state.max_concurrent:
                await slot.retire(self.js)
            elif state and slot.index >= state.effective_cap:
                await slot.give_back(PARKED_S)
            else:
                return slot

    async def _pull(self, tier: str, stage: Stage) -> Slot:
        """A pull request of our own: nats-py has no priority groups yet."""
        line = self._lines.get((tier, stage))
        if line is None:
            line = self._lines[tier, stage] = await _SlotLine.open(self.nc)
        request = json.dumps({"batch": 1, "expires": int(PULL_EXPIRES_S * 1e9), "group": SLOT_GROUP,
                              "priority": STAGE_PRIORITY[stage]}).encode()
        while True:
            if stopped := self.stopped(tier):
                raise stopped
            await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{SLOTS_STREAM}.{slot_consumer(tier)}", request,
                                  reply=line.inbox)
            while True:
                try:
                    msg = await line.next_reply(PULL_EXPIRES_S + 2)
                except TimeoutError:
                    break
                status = (msg.headers or {}).get("Status")
                if status is None and msg.reply:
                    return Slot(msg, slot_index(msg.data), self.renewals.keep(msg.in_progress))
                if status == "100":
                    continue
                if status not in ("404", "408"):
                    log.warning("tier %s: slot request answered %s %s", tier, status,
                                (msg.headers or {}).get("Description", ""))
                    await asyncio.sleep(0.5)
                break

    async def _sit_out_pause(self, tier: str) -> None:
        while (state := self.states.get(tier)) and (left := state.pause_left_s(utcnow())) > 0:
            await asyncio.sleep(min(left, 1.0))

    async def succeeded(self, tier: str) -> None:
        self._unreachable[tier] = 0
        self._successes[tier] += 1
        state = self.states.get(tier)
        if state and recovers(state, self._successes[tier], utcnow()):
            self._successes[tier] = 0
            await self._change(tier, lambda current: after_recovery(current, utcnow()))

    async def failed(self, tier: str, error: LLMError) -> None:
        """What one failed call means for the whole tier."""
        now = utcnow()
        if error.kind is ErrorKind.RATE_LIMITED:
            self._successes[tier] = 0
            await self._change(tier, lambda current: after_rate_limit(current, now, error.retry_after_s))
        elif error.kind is ErrorKind.QUOTA_EXHAUSTED:
            await self._stop(tier, error, until=error.resets_at)
        elif refused_key(error):
            await self._stop(tier, error, until=None)
        elif error.kind is ErrorKind.CONNECTION:
            self._unreachable[tier] += 1
            if self._unreachable[tier] >= self.settings.circuit_after_connection_failures:
                self._unreachable[tier] = 0
                await self._stop(tier, error, until=now + timedelta(seconds=CONNECTION_COOLDOWN_S))
        else:
            self._unreachable[tier] = 0

    async def _stop(self, tier: str, error: LLMError, until: datetime | None) -> None:
        log.error("tier %s stopped: %s", tier, error.message)
        await self._change(tier, lambda current: with_circuit_open(current, error.kind.value, error.message, until))

    async def _change(self, tier: str, change: Callable[[TierState], TierState]) -> None:
        """Compare-and-set on the tier's state, first against the watched copy (one round trip, so a
        cooldown reaches the other workers quickly), then against a fresh read."""
        current, revision = self.states.get(tier), self._revisions.get(tier, 0)
        for _ in range(UPDATE_TRIES):
            if current is None:
                return
            updated = change(current)
            if updated == current:
                return
            try:
                revision = await self.kv.update(tier, updated.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                current, revision = await read_tier_state(self.kv, tier)
                continue
            self.states[tier], self._revisions[tier] = updated, revision
            if updated.effective_cap != current.effective_cap:
                log.warning("tier %s: cap %d -> %d", tier, current.effective_cap, updated.effective_cap)
            if updated.paused_until != current.paused_until:
                log.warning("tier %s paused until %s: %s", tier, updated.paused_until, updated.pause_reason)
            return


def refused_key(error: LLMError) -> bool:
    """401, or a 403 that is not a moderation verdict on one prompt (OpenRouter answers 403 when a
    model's moderation flags the input): every call of the tier would be refused the same way."""
    if error.kind is ErrorKind.AUTH:
        return True
    lowered = error.message.lower()
    return error.kind is ErrorKind.FORBIDDEN and "moderat" not in lowered and "flagged" not in lowered
