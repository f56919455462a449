"""Paid answers kept in a NATS KV bucket, keyed by request hash.

A worker stores the response before it acks the task, so a redelivered task (or a later
experiment asking the identical question) finds the answer instead of paying for it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import InvalidKeyError, KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from shared.events import CallRecord
from shared.nats_cluster import TRANSIENT_NATS_ERRORS
from shared.settings import Settings
from shared.topology import ensure_bucket


@contextlib.contextmanager
def _valid_key(request_hash: str) -> Iterator[None]:
    try:
        yield
    except InvalidKeyError as error:
        raise ValueError(
            f"request hash {request_hash!r} is not a valid NATS KV key: use shared.llm.request_hash() to build it"
        ) from error


PUT_PATIENCE_S = 30.0


class ResponseStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, settings: Settings) -> ResponseStore:
        """Bind to the bucket, creating it (file storage, so answers survive restarts) if absent,
        with as many replicas as the streams."""
        return cls(await ensure_bucket(js, KeyValueConfig(bucket=bucket, storage=StorageType.FILE, history=1), settings))

    async def get(self, request_hash: str) -> CallRecord | None:
        try:
            with _valid_key(request_hash):
                entry = await self._kv.get(request_hash)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not entry.value:
            return None
        return CallRecord.model_validate_json(entry.value).model_copy(update={"cached": True})

    async def put(self, record: CallRecord) -> None:
        """Keeps trying through a leader election (up to `PUT_PATIENCE_S`): an answer that is not
        stored is an answer paid for twice when the task comes back."""
        stored = record.model_copy(update={"cached": False}).model_dump_json().encode("utf-8")
        deadline = time.monotonic() + PUT_PATIENCE_S
        delay_s = 0.25
        while True:
            try:
                with _valid_key(record.request_hash):
                    await self._kv.put(record.request_hash, stored)
                return
            except TRANSIENT_NATS_ERRORS:
                if time.monotonic() + delay_s > deadline:
                    raise
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 4.0)
