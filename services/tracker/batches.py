"""The tracker's consumption in batches: every event reader pulls what JetStream holds for it (up to
its `max_ack_pending`), one writer records everything that has arrived in one transaction, in a
thread so the event loop (the lease renewal, the fetches) keeps running, and acks the messages only
once their batch is committed. Under load a batch is whatever arrived while the previous one was
being written; at low load a lone event is written at once, so batching adds no wait.

A batch that fails is retried event by event, so one event that cannot be recorded is handed back
to JetStream (redelivered, then dead-lettered) without holding back the others. A crash at any
point leaves the batch unacked: JetStream redelivers it and every store is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from operator import methodcaller
from typing import Any, NamedTuple, cast

from faststream.exceptions import RejectMessage
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.tracker.recorder import Recorded
from shared import telemetry
from shared.nats_cluster import TRANSIENT_NATS_ERRORS
from shared.service import decode
from shared.topology import ConsumerSpec

FETCH_WAIT_S = 5.0
"""How long an idle reader's pull waits on the server: one request per reader per this, not a poll."""
RETRY_FETCH_S = 1.0
log = logging.getLogger("daydream.tracker")


class _Received(NamedTuple):
    """What `shared.service.decode` reads of a message, for a message pulled without FastStream."""

    body: bytes
    raw_message: Msg


class BatchConsumer:
    def __init__(
        self,
        broker: NatsBroker,
        js: JetStreamContext,
        record_batch: Callable[[Sequence[Recorded]], None],
        writing: asyncio.Lock,
        after_record: Callable[[Sequence[Recorded]], Awaitable[None]] | None = None,
    ) -> None:
        """`after_record` runs once the events' rows are committed, before their acks."""
        self.broker, self.js, self.record_batch, self.writing = broker, js, record_batch, writing
        self.after_record = after_record
        self.arrived: asyncio.Queue[tuple[type, Msg]] = asyncio.Queue()

    async def read(self, spec: ConsumerSpec, event_type: type) -> None:
        """Pull this reader's messages into the writer's queue, for as long as the process runs."""
        subscription = await self.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
        try:
            while True:
                try:
                    messages = await subscription.fetch(batch=spec.max_ack_pending, timeout=FETCH_WAIT_S)
                except TimeoutError:
                    _unless_stopping()
                    continue
                except TRANSIENT_NATS_ERRORS as error:
                    _unless_stopping()
                    log.warning("fetching %s failed (%s); retrying", spec.durable, type(error).__name__)
                    await asyncio.sleep(RETRY_FETCH_S)
                    continue
                for message in messages:
                    self.arrived.put_nowait((event_type, message))
        finally:
            # Left subscribed, the connection's drain at shutdown would wait on it until its timeout.
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def write(self) -> None:
        """Record every message that has arrived, batch after batch."""
        while True:
            batch = [await self.arrived.get()]
            while not self.arrived.empty():
                batch.append(self.arrived.get_nowait())
            try:
                await self._record(batch)
            except asyncio.CancelledError:  # a stop: hand back this batch and what queued behind it at once
                while not self.arrived.empty():
                    batch.append(self.arrived.get_nowait())
                with contextlib.suppress(Exception):
                    await asyncio.shield(_settle([message for _, message in batch], methodcaller("nak")))
                raise

    async def _record(self, batch: list[tuple[type, Msg]]) -> None:
        decoded: list[tuple[Any, Msg]] = []
        for event_type, message in batch:
            try:
                event: Any = await decode(self.broker, cast(NatsMessage, _Received(message.data, message)), event_type,
                                     stage="tracking")
            except RejectMessage:
                await message.term()  # recorded as a poison message by `decode`
                continue
            decoded.append((event, message))
        if not decoded:
            return
        async with self.writing:
            try:
                await asyncio.to_thread(self.record_batch, [event for event, _ in decoded])
            except Exception:
                log.exception("recording a batch of %d events failed; recording them one by one", len(decoded))
                await self._record_one_by_one(decoded)
                return
        await self._after([event for event, _ in decoded])
        for _, message in decoded:
            telemetry.consumed(message.subject, message.headers)
        await _settle([message for _, message in decoded], methodcaller("ack"))

    async def _after(self, events: Sequence[Recorded]) -> None:
        if self.after_record:
            with contextlib.suppress(*TRANSIENT_NATS_ERRORS):
                await self.after_record(events)

    async def _record_one_by_one(self, decoded: list[tuple[Any, Msg]]) -> None:
        for event, message in decoded:
            try:
                await asyncio.to_thread(self.record_batch, [event])
            except Exception:
                log.exception("recording %s failed; handing it back to JetStream", message.subject)
                await message.nak()
            else:
                await self._after([event])
                await message.ack()


def _unless_stopping() -> None:
    """nats-py may turn a cancelled fetch into a timeout: a stop must still stop the loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _settle(messages: list[Msg], settle: Callable[[Msg], Awaitable[None]]) -> None:
    for message in messages:
        await settle(message)
