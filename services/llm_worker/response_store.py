"""Paid answers kept in a NATS KV bucket, keyed by request hash.

A worker stores the response before it acks the task, so a redelivered task (or a later
experiment asking the identical question) finds the answer instead of paying for it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import InvalidKeyError, KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue

from shared.events import CallRecord
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
        return CallRecord.model_validate_json(entry.value).model_copy(update={"cached": True})

    async def put(self, record: CallRecord) -> None:
        stored = record.model_copy(update={"cached": False})
        with _valid_key(record.request_hash):
            await self._kv.put(record.request_hash, stored.model_dump_json().encode("utf-8"))
