"""On a real three-node NATS cluster: every stream and the response bucket keep three copies, a
service starting never shrinks what an operator raised, and losing the node that leads the tasks
stream loses no task a client published through the server list."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import nats
import pytest

from daydream.nats_process import NatsCluster, wait_for_jetstream
from services.llm_worker.response_store import ResponseStore
from shared.events import DEFAULT_TIERS, TaskCreated
from shared.nats_cluster import server_urls
from shared.service import publish_to_jetstream
from shared.settings import Settings
from shared.topology import TASKS_STREAM, ensure_topology, stream_configs
from tests.e2e.cluster import stream_leader
from tests.e2e.harness import generation_task

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


async def replicas(url: str, streams: list[str]) -> dict[str, int | None]:
    nc = await nats.connect(server_urls(url))
    try:
        js = nc.jetstream()
        return {name: (await js.stream_info(name)).config.num_replicas for name in streams}
    finally:
        await nc.close()


async def declare(url: str, settings: Settings) -> None:
    nc = await nats.connect(server_urls(url))
    try:
        js = nc.jetstream()
        await ensure_topology(js, settings)
        await ResponseStore.open(js, settings.response_store_bucket, settings)
    finally:
        await nc.close()


def test_streams_and_the_bucket_are_replicated_and_never_shrunk(cluster: NatsCluster) -> None:
    names = [config.name for config in stream_configs(Settings()) if config.name] + ["KV_dd_responses"]
    asyncio.run(declare(cluster.url, Settings(stream_replicas=3)))
    assert asyncio.run(replicas(cluster.url, names)) == dict.fromkeys(names, 3)

    asyncio.run(declare(cluster.url, Settings()))  # a service started without the setting
    assert asyncio.run(replicas(cluster.url, names)) == dict.fromkeys(names, 3)


async def publish_through_an_election(url: str, tasks: Sequence[TaskCreated]) -> None:
    nc = await nats.connect(server_urls(url), reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    js = nc.jetstream(timeout=2)
    try:
        for task in tasks:
            for _ in range(100):
                try:
                    await publish_to_jetstream(js, task)
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def stored_tasks(url: str) -> int:
    nc = await nats.connect(server_urls(url))
    try:
        return (await nc.jetstream().stream_info(TASKS_STREAM)).state.messages
    finally:
        await nc.close()


def test_killing_the_tasks_streams_leader_loses_no_published_task(cluster: NatsCluster) -> None:
    asyncio.run(declare(cluster.url, Settings(stream_replicas=3)))
    leader = asyncio.run(stream_leader(cluster.url, TASKS_STREAM))
    victim = int(leader.removeprefix("n"))
    tier = DEFAULT_TIERS[0]
    before = asyncio.run(stored_tasks(cluster.url))
    tasks = [generation_task("cluster", index, "fake/writer", tier) for index in range(40)]

    asyncio.run(publish_through_an_election(cluster.url, tasks[:20]))
    cluster.kill(victim)
    asyncio.run(publish_through_an_election(cluster.url, tasks[20:]))

    assert asyncio.run(stored_tasks(cluster.url)) == before + 40
    assert asyncio.run(stream_leader(cluster.url, TASKS_STREAM)) != leader
    cluster.restart(victim)
    wait_for_jetstream(cluster.url, timeout_s=30)
