"""The declared topology is what the server holds, and a config change reaches a live consumer."""

import shutil
from pathlib import Path

import nats
import pytest

from shared.inputs import load_experiment
from shared.settings import Settings
from shared.topology import (
    DEAD_LETTERS_STREAM,
    EVENTS_STREAM,
    TASKS_STREAM,
    consumer_config,
    consumer_specs,
    ensure_topology,
    spec_of,
)

pytestmark = pytest.mark.integration


async def live_consumers(js) -> dict[str, object]:
    return {info.name: info for stream in (TASKS_STREAM, EVENTS_STREAM, DEAD_LETTERS_STREAM)
            for info in await js.consumers_info(stream)}


async def test_every_declared_consumer_is_live_as_declared_and_follows_tiers_csv(
    nats_client: nats.NATS, example_raw: Path, tmp_path: Path
) -> None:
    """Declared from the example's tiers.csv, then from an edited copy: after each, every consumer
    the code declares is on the server with that spec and ack wait, and nothing else is."""
    js = nats_client.jetstream()
    settings = Settings(ack_wait_s=45.0)
    tiers = load_experiment(example_raw, experiment_id="t").spec.tiers
    raw = tmp_path / "1_raw"
    shutil.copytree(example_raw, raw)
    (raw / "tiers.csv").write_text("tier,max_concurrent,requests_per_minute\nfree,2,10\npaid,8,\n", encoding="utf-8")
    raised = load_experiment(raw, experiment_id="t").spec.tiers
    assert [t.max_concurrent for t in raised] != [t.max_concurrent for t in tiers]

    for chosen in (tiers, raised):
        await ensure_topology(js, settings, chosen)
        live = await live_consumers(js)
        declared = {spec.durable: spec for spec in consumer_specs(settings, chosen)}
        assert {name: spec_of(info) for name, info in live.items()} == declared
        for name, info in live.items():
            assert info.config.ack_wait == consumer_config(declared[name], settings).ack_wait == 45.0


async def test_tasks_stream_drops_duplicate_message_ids(nats_client: nats.NATS) -> None:
    js = nats_client.jetstream()
    await ensure_topology(js, Settings())
    for _ in range(3):
        await js.publish("dd.task.created.generation.free", b"{}", headers={"Nats-Msg-Id": "gen:exp:t1"})
    info = await js.stream_info(TASKS_STREAM)
    assert info.state.messages == 1
