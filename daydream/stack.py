"""The embedded stack: a private nats-server, the five services as separate processes, and
(with no API key) the fake LLM server — everything on loopback, state under the data dir."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import nats

from daydream.nats_process import NatsServer, free_port
from shared.events import TierSpec
from shared.nats_cluster import server_urls
from shared.settings import Settings
from shared.topology import EVENTS_STREAM, TASKS_STREAM, ensure_topology

SERVICES = ("combiner", "generator", "evaluator", "parser", "tracker")
STATE_FILE = "stack.json"


@dataclass
class StackState:
    """What `daydream up` leaves behind so `run`, `publish` and `down` can find the stack."""

    data_dir: str
    nats_url: str
    nats_pid: int
    services: dict[str, dict] = field(default_factory=dict)
    """name -> {pid, metrics_port}"""
    llm_base_url: str | None = None
    fake_llm_pid: int | None = None

    def save(self, data: Path) -> None:
        (data / STATE_FILE).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, data: Path) -> "StackState | None":
        path = data / STATE_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def gone(self) -> list[str]:
        """The processes of this stack that are no longer running."""
        processes = {"nats-server": self.nats_pid, **{name: s["pid"] for name, s in self.services.items()}}
        if self.fake_llm_pid:
            processes["fake-llm"] = self.fake_llm_pid
        return [name for name, pid in processes.items() if not _alive(pid)]

    def alive(self) -> bool:
        """Every process still up: a stack missing one is not used, only stopped."""
        return not self.gone()

    def metrics_targets(self) -> dict[str, str]:
        return {name: f"127.0.0.1:{info['metrics_port']}" for name, info in self.services.items()}


def usable_stack(data: Path) -> tuple[StackState | None, str | None]:
    """The stack `daydream up` left for this data dir when every process of it still runs;
    otherwise None and, when a stack was recorded, a sentence saying what it lost."""
    state = StackState.load(data)
    if state and not state.alive():
        return None, (f"the stack from `daydream up` ({data / STATE_FILE}) has lost {', '.join(state.gone())}; "
                      "`daydream down` stops what is left of it")
    return state, None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return True


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
                 extra_env: dict[str, str] | None = None) -> None:
        self.data = data.resolve()
        self.logs = self.data / "logs"
        self.nats = NatsServer(store_dir=self.data / "nats", log_file=self.logs / "nats-server.log")
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
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nats.start()

    def start_fake_llm(self, *extra_args: str) -> str:
        """The fake runs in its own process, like a real endpoint: no GIL shared with anyone."""
        port = free_port()
        log = self.logs / "fake-llm.log"
        self.fake_llm = subprocess.Popen(
            [sys.executable, "-m", "daydream", "fake-llm", "--port", str(port),
             "--latency", str(self.fake_llm_latency or 0.0), *extra_args],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
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
        })
        env.pop("NATS_URL", None)
        if self.llm_base_url:
            env["DAYDREAM_LLM_BASE_URL"] = self.llm_base_url
        return env

    def start_service(self, name: str, env_overrides: dict[str, str] | None = None, wait: bool = True) -> None:
        self.ports.setdefault(name, free_port())
        log = self.logs / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"], env=self.service_env(name, env_overrides),
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
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

        async def declare() -> None:
            nc = await nats.connect(server_urls(self.nats_url))
            try:
                await ensure_topology(nc.jetstream(), settings, tiers)
            finally:
                await nc.close()

        asyncio.run(declare())

    def dead_services(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def fake_llm_stats(self) -> dict:
        """The fake LLM's counters: calls and peak in flight per model, and recent requests."""
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

    def state(self) -> StackState:
        return StackState(
            data_dir=str(self.data),
            nats_url=self.nats_url,
            nats_pid=self.nats.process.pid if self.nats.process else 0,
            services={n: {"pid": p.pid, "metrics_port": self.ports[n]} for n, p in self.processes.items()},
            llm_base_url=self.llm_base_url,
            fake_llm_pid=self.fake_llm.pid if self.fake_llm else None,
        )


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
    """`daydream down`: the processes of a stack started by `up` belong to no shell any more;
    they stop in the order `EmbeddedStack.stop` uses."""
    for pids in ([s["pid"] for s in state.services.values()], [state.fake_llm_pid], [state.nats_pid]):
        for pid in pids:
            if pid and _alive(pid):
                os.kill(pid, signal.SIGTERM)
        _wait_gone(pids)


def _wait_gone(pids: list[int | None], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid and _alive(pid):
            os.kill(pid, signal.SIGKILL)


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
