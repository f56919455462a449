"""The declared topology is what the server holds, and a config change reaches a live consumer."""

import nats
import pytest

from shared.events import TierSpec
from shared.settings import Settings
from shared.topology import TASKS_STREAM, ensure_topology, worker_consumer

pytestmark = pytest.mark.integration


async def test_tier_cap_change_updates_live_consumer(nats_client: nats.NATS) -> None:
    js = nats_client.jetstream()
    settings = Settings()
    await ensure_topology(js, settings, [TierSpec(tier="free", max_concurrent=1), TierSpec(tier="paid", max_concurrent=5)])
    before = await js.consumer_info(TASKS_STREAM, worker_consumer("generation", "paid"))
    assert before.config.max_ack_pending == 5
    assert before.config.filter_subject == "dd.task.created.generation.paid"

    await ensure_topology(js, settings, [TierSpec(tier="free", max_concurrent=1), TierSpec(tier="paid", max_concurrent=8)])
    after = await js.consumer_info(TASKS_STREAM, worker_consumer("generation", "paid"))
    assert after.config.max_ack_pending == 8
    evaluation_free = await js.consumer_info(TASKS_STREAM, worker_consumer("evaluation", "free"))
    assert evaluation_free.config.max_ack_pending == 1
    assert evaluation_free.config.max_deliver == settings.max_attempts + 2


async def test_tasks_stream_drops_duplicate_message_ids(nats_client: nats.NATS) -> None:
    js = nats_client.jetstream()
    await ensure_topology(js, Settings())
    for _ in range(3):
        await js.publish("dd.task.created.generation.free", b"{}", headers={"Nats-Msg-Id": "gen:exp:t1"})
    info = await js.stream_info(TASKS_STREAM)
    assert info.state.messages == 1
