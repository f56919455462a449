from __future__ import annotations

from datetime import UTC, datetime

import nats
import pytest
from nats.js.api import StorageType

from services.llm_worker.response_store import ResponseStore
from shared.events import CallParameters, CallRecord
from shared.llm import chat_messages, request_hash
from shared.settings import Settings

pytestmark = pytest.mark.integration

BUCKET = "dd_responses_test"


def a_record(prompt: str = "Write.") -> CallRecord:
    key = request_hash("http://127.0.0.1:8999/v1", "fake/writer", chat_messages(prompt), CallParameters(), 1)
    return CallRecord(
        text="An answer worth paying for once.",
        finish_reason="stop",
        prompt_tokens=3,
        completion_tokens=8,
        cost_usd=0.0001,
        latency_s=1.5,
        provider="DayDream-Fake",
        request_hash=key,
        started_at=datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC),
        finished_at=datetime(2025, 3, 1, 12, 0, 1, tzinfo=UTC),
    )


async def test_a_stored_response_comes_back_marked_cached(nats_client):
    store = await ResponseStore.open(nats_client.jetstream(), BUCKET, Settings())
    record = a_record()
    await store.put(record)
    found = await store.get(record.request_hash)
    assert found == record.model_copy(update={"cached": True})


async def test_another_connection_sees_the_stored_response(nats_url, nats_client):
    record = a_record("Shared across workers.")
    await (await ResponseStore.open(nats_client.jetstream(), BUCKET, Settings())).put(record)
    other = await nats.connect(nats_url)
    try:
        found = await (await ResponseStore.open(other.jetstream(), BUCKET, Settings())).get(record.request_hash)
    finally:
        await other.close()
    assert found is not None and found.text == record.text and found.cached


async def test_an_unknown_request_is_not_found(nats_client):
    store = await ResponseStore.open(nats_client.jetstream(), BUCKET, Settings())
    assert await store.get(a_record("Never asked.").request_hash) is None


async def test_the_bucket_is_created_on_file_storage_once(nats_client):
    js = nats_client.jetstream()
    await ResponseStore.open(js, BUCKET, Settings())
    await ResponseStore.open(js, BUCKET, Settings())
    info = await js.stream_info(f"KV_{BUCKET}")
    assert info.config.storage == StorageType.FILE


async def test_a_key_that_nats_cannot_store_is_refused_with_advice(nats_client):
    store = await ResponseStore.open(nats_client.jetstream(), BUCKET, Settings())
    with pytest.raises(ValueError, match="request_hash"):
        await store.get("not a hash!")
