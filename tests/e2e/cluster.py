"""Three clustered nats-servers on loopback for the cluster tests: free ports, a temporary store
each, routes to one another; any node can be killed with SIGKILL and started again on its ports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import nats

from daydream.nats_process import NatsServer, free_port
from daydream.stack import EmbeddedStack
from shared.nats_cluster import server_urls

CLUSTER_NAME = "daydream-test"


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for index, cluster_port in enumerate(cluster_ports):
            node_dir = root / f"nats-{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in cluster_ports if port != cluster_port)
            config = node_dir / "nats.conf"
            config.write_text(
                f'server_name: "n{index}"\n'
                f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{routes}]\n}}\n",
                encoding="utf-8",
            )
            self.nodes.append(NatsServer(store_dir=node_dir / "store", config_file=config, log_file=node_dir / "nats.log"))

    @property
    def url(self) -> str:
        """The server list, as an operator sets NATS_URL for a cluster."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        for node in self.nodes:
            node.start()
        wait_for_jetstream(self.url, timeout_s)
        return self

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Back on the same ports and store, as a node that crashed and was restarted."""
        self.nodes[index].start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_jetstream(url: str, timeout_s: float) -> None:
    """Until the cluster has elected its JetStream meta leader (account info answers)."""

    async def ready() -> bool:
        nc = await nats.connect(server_urls(url), allow_reconnect=False, connect_timeout=1)
        try:
            await nc.jetstream().account_info()
            return True
        except (nats.errors.Error, TimeoutError):
            return False
        finally:
            await nc.close()

    deadline = time.monotonic() + timeout_s
    while not asyncio.run(ready()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the NATS cluster at {url} elected no JetStream leader within {timeout_s}s")
        time.sleep(0.3)


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
