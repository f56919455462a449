"""Helpers of the cluster tests; the cluster itself is `daydream.nats_process.NatsCluster`, which
`daydream up --cluster 3` runs too."""

from __future__ import annotations

import subprocess
import sys

import nats

from daydream.nats_process import free_port
from daydream.stack import EmbeddedStack
from shared.nats_cluster import server_urls


async def stream_leader(url: str, stream: str) -> str:
    """The server name (n0, n1, ...) that leads `stream`'s replicas."""
    nc = await nats.connect(server_urls(url))
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader is not None, f"{stream} is not replicated"
        return info.cluster.leader
    finally:
        await nc.close()


def start_replica(stack: EmbeddedStack, service: str, replica: int, *, wait: bool = True,
                  env: dict[str, str] | None = None) -> str:
    """Another process of `service` on the same stack, with its own metrics port and log; the
    stack stops it with the others. Returns its name in `stack.processes`."""
    name = f"{service}-{replica}"
    stack.ports[name] = free_port()
    log = stack.logs / f"{name}.log"
    stack.processes[name] = subprocess.Popen(
        [sys.executable, "-m", f"services.{service}"], env=stack.service_env(name, env),
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    if wait:
        stack.wait_healthy(name)
    return name
