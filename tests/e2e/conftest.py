"""The real stack for end-to-end tests: nats-server, the five services, the fake LLM server —
each its own process, as in production."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daydream.stack import EmbeddedStack

FAST_RETRIES = {"DAYDREAM_RETRY_BASE_DELAY_S": "0.2", "DAYDREAM_HEARTBEAT_S": "2"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """nats-server and the fake LLM (latency 0.1 s) running; services are started by each module
    once it has shaped the topology it needs."""
    data: Path = tmp_path_factory.mktemp("data")
    running = EmbeddedStack(data, llm_base_url=None, fake_llm_latency=0.1, extra_env=FAST_RETRIES)
    running.start_nats()
    running.start_fake_llm()
    try:
        yield running
    finally:
        running.stop()
