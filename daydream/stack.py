"""The embedded stack: a private nats-server (or a cluster of them), the five services as separate
processes, and (with no API key) the fake LLM server — everything on loopback, state under the
data dir."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeGuard

import httpx
import nats
from nats.js import JetStreamContext

from daydream.nats_process import NatsCluster, NatsServer, free_port
from shared.events import TierSpec
from shared.llm import endpoint_identity
from shared.nats_cluster import server_urls
from shared.settings import Settings
from shared.topology import EVENTS_STREAM, TASKS_STREAM, ensure_streams, ensure_topology

SERVICES = ("combiner", "generator", "evaluator", "parser", "tracker")
STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
NATS_PROCESS = "nats-server"


def start_time(pid: int | None) -> int | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22), or None when
    no such process runs: with the PID it tells *this* process from a later one given the same PID."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def identity(pid: int) -> dict:
    return {"pid": pid, "started": start_time(pid)}


def _is_running(process: dict | None) -> TypeGuard[dict]:
    """The very process recorded (same PID, same start time) still runs and is not a zombie."""
    return process is not None and process.get("started") is not None and start_time(process["pid"]) == process["started"]


@dataclass
class StackState:
    """What `up` (and `run`, for its private stack) leaves in DIR/stack.json so `run`, `publish`,
    `status` and `down` can find the stack, and `down` can stop exactly its processes."""

    data_dir: str
    nats_url: str
    owner: dict
    """The command that started it: {"command": "up" | "run", "pid", "started"}."""
    processes: dict[str, dict] = field(default_factory=dict)
    """name (nats-server, fake-llm, each service) -> {pid, started, metrics_port?}."""
    llm_base_url: str | None = None
    endpoint: str | None = None

    def save(self, data: Path) -> None:
        temporary = data / f".{STATE_FILE}.tmp"
        temporary.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        temporary.replace(data / STATE_FILE)

    @classmethod
    def load(cls, data: Path) -> StackState | None:
        path = data / STATE_FILE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None  # written by an older DayDream: nothing in it identifies its processes

    @property
    def nats_port(self) -> int:
        """The (first) server's port: a restarted single-server stack keeps its NATS URL."""
        return int(self.nats_url.split(",")[0].rsplit(":", 1)[1])

    def gone(self) -> list[str]:
        """The processes of this stack that are no longer running."""
        return [name for name, process in self.processes.items() if not _is_running(process)]

    def alive(self) -> bool:
        """Every process still up: a stack missing one is not used, only stopped or restored."""
        return not self.gone()

    def owned_by_run(self) -> bool:
        return self.owner.get("command") == "run"

    def owner_running(self) -> bool:
        return _is_running(self.owner)

    def metrics_targets(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{info['metrics_port']}" for name, info in self.processes.items()
                if "metrics_port" in info}


def usable_stack(data: Path) -> tuple[StackState | None, str | None]:
    """The live `up` stack of this data dir; otherwise None and, when some stack holds the dir or
    left processes behind, a sentence naming it and saying the fix."""
    state = StackState.load(data)
    if state is None or not any(_is_running(p) for p in [state.owner, *state.processes.values()]):
        return None, None
    where = f"{data / STATE_FILE}"
    if state.owned_by_run() and state.owner_running():
        return None, (f"`daydream run` (pid {state.owner['pid']}) is running a private stack on {data} ({where}): "
                      f"wait for it, or stop it with `daydream down --data {data}`")
    if state.owned_by_run():
        lost = f"its owner `daydream run` (pid {state.owner['pid']})"
    elif not state.alive():
        lost = ", ".join(state.gone())
    else:
        return state, None
    return None, (f"the stack of {data} ({where}) has lost {lost}; "
                  f"`daydream up --data {data}` restores it")


def stack_running(data: Path) -> bool:
    """A whole stack runs for this data dir: a `run` working, or an `up` stack with every process."""
    state = StackState.load(data)
    if state is None:
        return False
    return state.owner_running() if state.owned_by_run() else state.alive()


class DataDirBusy(Exception):
    """Another stack holds this data dir's lock."""


class StackLock:
    """One stack per data dir: an exclusive `flock` on DIR/stack.lock. Every process of the stack
    inherits the descriptor, so the lock is held until the last of them exits — after `up` has
    returned, and after a crashed owner too, until `down` or `up` stops what it left."""

    def __init__(self, data: Path) -> None:
        self.path = data / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> StackLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise DataDirBusy(f"another DayDream stack holds {self.path}") from None
                time.sleep(0.1)
        self.fd = fd
        return self

    def release(self) -> None:
        """This process lets go; children that inherited the descriptor keep holding it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def inherited(self) -> tuple[int, ...]:
        return (self.fd,) if self.fd is not None else ()


def _wait_healthy(url: str, process: subprocess.Popen, name: str, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}; see {log}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 300:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not healthy at {url} after {timeout_s}s; see {log}")


class EmbeddedStack:
    """Starts and stops the processes; each one can be killed and restarted on its own."""

    def __init__(self, data: Path, *, llm_base_url: str | None, fake_llm_latency: float | None = None,
                 extra_env: dict[str, str] | None = None, lock: StackLock | None = None, nats_port: int = 0,
                 cluster_size: int = 1) -> None:
        """`cluster_size` > 1 runs that many clustered nats-servers (stores under DIR/nats-cluster)
        instead of one, and every stream and bucket is kept on all of them."""
        self.data = data.resolve()
        self.logs = self.data / "logs"
        self.lock_fds = lock.inherited() if lock else ()
        self.nats: NatsServer | NatsCluster = (
            NatsCluster(self.data / "nats-cluster", cluster_size, pass_fds=self.lock_fds) if cluster_size > 1
            else NatsServer(store_dir=self.data / "nats", log_file=self.logs / "nats-server.log",
                            port=nats_port, pass_fds=self.lock_fds)
        )
        self.llm_base_url = llm_base_url
        self.fake_llm_latency = fake_llm_latency
        self.extra_env = extra_env or {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.fake_llm: subprocess.Popen | None = None

    @property
    def nats_url(self) -> str:
        return self.nats.url

    def start_nats(self) -> None:
        """On a cluster, every stream is created on all nodes here, before any service starts: five
        services creating three-replica streams at once on a new cluster time out and exit."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nats.start()
        if isinstance(self.nats, NatsCluster):
            settings = Settings(stream_replicas=len(self.nats.nodes))
            self._on_jetstream(lambda js: ensure_streams(js, settings))

    def start_fake_llm(self, *extra_args: str) -> str:
        """The fake runs in its own process, like a real endpoint: no GIL shared with anyone."""
        port = free_port()
        log = self.logs / "fake-llm.log"
        self.fake_llm = subprocess.Popen(
            [sys.executable, "-m", "daydream", "fake-llm", "--port", str(port),
             "--latency", str(self.fake_llm_latency or 0.0), *extra_args],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, pass_fds=self.lock_fds,
        )
        _wait_healthy(f"http://127.0.0.1:{port}/health", self.fake_llm, "fake-llm", log)
        self.llm_base_url = f"http://127.0.0.1:{port}/v1"
        return self.llm_base_url

    def service_env(self, name: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(overrides or {})
        env.update({
            "DAYDREAM_NATS_URL": self.nats_url,
            "DAYDREAM_DATA": str(self.data),
            "DAYDREAM_METRICS_HOST": "127.0.0.1",
            "DAYDREAM_METRICS_PORT": str(self.ports[name]),
            "DAYDREAM_STREAM_REPLICAS": str(len(self.nats_nodes())),
        })
        env.pop("NATS_URL", None)
        env.update(self._endpoint_env())
        return env

    def client_env(self) -> dict[str, str]:
        """What a `daydream` command run elsewhere needs to publish into this stack as its workers
        serve it: the NATS URL and the same endpoint, so the experiment is bound to it."""
        return {"NATS_URL": self.nats_url, **self._endpoint_env()}

    def _endpoint_env(self) -> dict[str, str]:
        env = {"DAYDREAM_LLM_SIMULATED": "true" if self.fake_llm else "false"}
        if self.llm_base_url:
            env["DAYDREAM_LLM_BASE_URL"] = self.llm_base_url
        return env

    @property
    def endpoint(self) -> str | None:
        """The `endpoint_identity` its workers serve."""
        return endpoint_identity(self.llm_base_url, simulated=self.fake_llm is not None) if self.llm_base_url else None

    def start_service(self, name: str, env_overrides: dict[str, str] | None = None, wait: bool = True,
                      module: str | None = None) -> None:
        """`module` runs another entry point in the service's place (a test's crashing variant)."""
        self.ports.setdefault(name, free_port())
        log = self.logs / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", module or f"services.{name}"], env=self.service_env(name, env_overrides),
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, pass_fds=self.lock_fds,
        )
        self.processes[name] = process
        if wait:
            self.wait_healthy(name)

    def start_services(self, names: tuple[str, ...] = SERVICES) -> None:
        """Started together and then awaited: their imports overlap instead of adding up."""
        for name in names:
            self.start_service(name, wait=False)
        for name in names:
            self.wait_healthy(name)

    def declare_topology(self, settings: Settings, tiers: list[TierSpec] | tuple[TierSpec, ...]) -> None:
        """Consumers shaped to the experiment's tiers before the workers start, so they size themselves right."""
        self._on_jetstream(lambda js: ensure_topology(js, settings, tiers))

    def _on_jetstream(self, work: Callable[[JetStreamContext], Awaitable[None]]) -> None:
        async def connected() -> None:
            nc = await nats.connect(server_urls(self.nats_url))
            try:
                await work(nc.jetstream())
            finally:
                await nc.close()

        asyncio.run(connected())

    def dead_services(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def fake_llm_stats(self) -> dict:
        """The fake LLM's counters: calls and peak in flight per model, and recent requests."""
        if self.llm_base_url is None:
            raise RuntimeError("this stack has no LLM endpoint: start one with start_fake_llm()")
        return httpx.get(self.llm_base_url.removesuffix("/v1") + "/stats", timeout=30).json()

    def wait_healthy(self, name: str) -> None:
        _wait_healthy(f"http://127.0.0.1:{self.ports[name]}/health", self.processes[name], name,
                      self.logs / f"{name}.log")

    def kill_service(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        process = self.processes[name]
        process.kill()
        process.wait()

    def stop(self) -> None:
        """Services first (together, each finishing what it holds), then what they depend on:
        the LLM endpoint their last calls need, then NATS, which their last acks need."""
        _terminate(list(self.processes.values()))
        _terminate([self.fake_llm] if self.fake_llm else [])
        self.nats.stop()

    def nats_nodes(self) -> dict[str, NatsServer]:
        """Each nats-server by its name in DIR/stack.json: `nats-server`, or `nats-server-<i>` in a cluster."""
        if isinstance(self.nats, NatsCluster):
            return {f"{NATS_PROCESS}-{index}": node for index, node in enumerate(self.nats.nodes)}
        return {NATS_PROCESS: self.nats}

    def state(self, owner_command: str = "run") -> StackState:
        """What is running now, each process by PID and start time, owned by this process."""
        processes = {name: identity(node.process.pid) for name, node in self.nats_nodes().items() if node.process}
        if self.fake_llm:
            processes["fake-llm"] = identity(self.fake_llm.pid)
        for name, process in self.processes.items():
            processes[name] = {**identity(process.pid), "metrics_port": self.ports[name]}
        return StackState(data_dir=str(self.data), nats_url=self.nats_url,
                          owner={"command": owner_command, **identity(os.getpid())},
                          processes=processes, llm_base_url=self.llm_base_url, endpoint=self.endpoint)


def _terminate(processes: list[subprocess.Popen], timeout_s: float = 20.0) -> None:
    """SIGTERM to all, then wait for each; SIGKILL what is still running after `timeout_s`
    (FastStream's graceful stop waits up to 15 s for handlers in flight)."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_detached(state: StackState) -> None:
    """`daydream down`: a stack's processes belong to no shell; each is signalled only while it is
    the very process recorded (PID and start time), in the order `EmbeddedStack.stop` uses. A
    `run` still owning its stack is asked first, so it stops its own and says how to resume."""
    servers = [p for name, p in state.processes.items() if name.startswith(NATS_PROCESS)]
    services = [p for name, p in state.processes.items() if name != "fake-llm" and not name.startswith(NATS_PROCESS)]
    owner = [state.owner] if state.owned_by_run() else []
    for group in (owner, services, [state.processes.get("fake-llm")], servers):
        running = [process for process in group if _is_running(process)]
        for process in running:
            os.kill(process["pid"], signal.SIGTERM)
        _wait_gone(running)


def _wait_gone(processes: list[dict], timeout_s: float = 25.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_is_running(p) for p in processes):
        time.sleep(0.1)
    for process in processes:
        if _is_running(process):
            os.kill(process["pid"], signal.SIGKILL)


async def consumers_idle(nats_url: str) -> bool:
    """Nothing queued and nothing in flight on any consumer. Every service publishes what a
    message caused before it acks the message, so work in progress always shows on some consumer."""
    nc = await nats.connect(server_urls(nats_url))
    try:
        js = nc.jetstream()
        for stream in (TASKS_STREAM, EVENTS_STREAM):
            for info in await js.consumers_info(stream):
                if info.num_pending or info.num_ack_pending:
                    return False
        return True
    finally:
        await nc.close()
