"""`daydream up --cluster 3`: three clustered nats-servers on loopback, the services on the server
list, every stream kept on all three; `run` uses it, `down` stops every process by its PID."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import nats
import pytest

from daydream.stack import StackState
from shared.nats_cluster import server_urls
from shared.topology import EVENTS_STREAM, TASKS_STREAM
from tests.e2e.test_run_cli import daydream, pid_alive

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


async def replicas(url: str) -> dict[str, int]:
    nc = await nats.connect(server_urls(url))
    try:
        js = nc.jetstream()
        return {name: (await js.stream_info(name)).config.num_replicas for name in (TASKS_STREAM, EVENTS_STREAM)}
    finally:
        await nc.close()


def test_up_cluster_runs_an_experiment_on_three_nodes_and_down_stops_them_all(data: Path) -> None:
    up = daydream("up", "--cluster", "3", "--data", str(data))
    output, _ = up.communicate(timeout=180)
    assert up.returncode == 0, output
    state = StackState.load(data)
    pids = [process["pid"] for process in state.processes.values()]
    try:
        servers = sorted(name for name in state.processes if name.startswith("nats-server"))
        assert servers == ["nats-server-0", "nats-server-1", "nats-server-2"]
        assert len(server_urls(state.nats_url)) == 3
        assert f"NATS_URL={state.nats_url}" in "".join(output.split())
        assert asyncio.run(replicas(state.nats_url)) == {TASKS_STREAM: 3, EVENTS_STREAM: 3}

        run = daydream("run", "--data", str(data), "--experiment-id", "on-a-cluster")
        output, _ = run.communicate(timeout=240)
        assert run.returncode == 0, output
        assert "using the stack started by `daydream up`" in output

        down = daydream("down", "--data", str(data))
        output, _ = down.communicate(timeout=90)
        assert down.returncode == 0, output
        assert not (data / "stack.json").exists()
        assert [pid for pid in pids if pid_alive(pid)] == []
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
