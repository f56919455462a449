"""Active/standby trackers: only the holder of a lease in a NATS KV bucket records events.

The lease is one key in a bucket whose entries expire after `tracker_lease_ttl_s`. The active
tracker rewrites it every third of that time, each write conditional on the revision it last
wrote; a standby tries to create the key every second and succeeds once the active one stopped
renewing (killed, hung, cut off) and the entry expired — so it takes over within one TTL and a
second. A tracker that finds its lease taken exits at once: two writers never overlap for
longer than the renewal that discovers it, and every record is idempotent (a repeated event is
one row, the CSVs are rebuilt from the tables at start), so that moment cannot duplicate rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.nats_cluster import TRANSIENT_NATS_ERRORS
from shared.settings import Settings
from shared.topology import ensure_bucket

LEASE_BUCKET = "dd_tracker_lease"
LEASE_KEY = "active"
STANDBY_POLL_S = 1.0
LEASE_LOST_EXIT_CODE = 75
log = logging.getLogger("daydream.tracker.lease")


def holder_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class LeaseLost(RuntimeError):
    """Another tracker holds the lease now: this one must stop writing."""


class Lease:
    def __init__(self, kv: KeyValue, holder: str, ttl_s: float) -> None:
        self.kv, self.holder, self.ttl_s = kv, holder, ttl_s
        self.revision: int | None = None
        self.renewed_at = 0.0

    @classmethod
    async def open(cls, js: JetStreamContext, settings: Settings, holder: str | None = None) -> Lease:
        config = KeyValueConfig(bucket=LEASE_BUCKET, history=1, ttl=settings.tracker_lease_ttl_s,
                                storage=StorageType.FILE)
        return cls(await ensure_bucket(js, config, settings), holder or holder_name(), settings.tracker_lease_ttl_s)

    async def try_acquire(self) -> bool:
        try:
            self.revision = await self.kv.create(LEASE_KEY, self.holder.encode())
        except KeyWrongLastSequenceError:
            return False
        self.renewed_at = time.monotonic()
        return True

    async def acquire(self) -> None:
        """Wait as a standby until the lease is free, then hold it."""
        announced = False
        while True:
            with contextlib.suppress(*TRANSIENT_NATS_ERRORS):
                if await self.try_acquire():
                    log.warning("tracker %s is active", self.holder)
                    return
            if not announced:
                log.warning("tracker %s is standby: another tracker holds the lease", self.holder)
                announced = True
            await asyncio.sleep(STANDBY_POLL_S)

    async def renew(self) -> None:
        """Rewrite the lease if it is still ours; raise `LeaseLost` when it is not, or when NATS
        has been unreachable for a whole TTL (a standby may hold it by then)."""
        try:
            self.revision = await self.kv.update(LEASE_KEY, self.holder.encode(), last=self.revision)
            self.renewed_at = time.monotonic()
        except KeyWrongLastSequenceError as error:
            raise LeaseLost(f"tracker {self.holder}: another tracker took the lease") from error
        except TRANSIENT_NATS_ERRORS as error:
            if time.monotonic() - self.renewed_at >= self.ttl_s:
                raise LeaseLost(f"tracker {self.holder}: NATS unreachable for {self.ttl_s:.0f} s") from error

    async def keep(self) -> None:
        """Renew for as long as the process runs; losing the lease ends the process, so that a
        supervisor (compose, the embedded stack's user) starts it again as a standby."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.renew()
            except LeaseLost as lost:
                log.error("%s; exiting", lost)
                os._exit(LEASE_LOST_EXIT_CODE)

    async def release(self) -> None:
        """On a clean stop: the standby need not wait for the TTL."""
        with contextlib.suppress(*TRANSIENT_NATS_ERRORS, KeyWrongLastSequenceError):
            if self.revision is not None:
                await self.kv.delete(LEASE_KEY, last=self.revision)
