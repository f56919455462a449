"""The real stack for end-to-end tests: nats-server, the five services, the fake LLM server —
each its own process, as in production."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from daydream.stack import EmbeddedStack
from tests.conftest import EXAMPLE_RAW

FAST_RETRIES = {"DAYDREAM_RETRY_BASE_DELAY_S": "0.2", "DAYDREAM_HEARTBEAT_S": "2"}


@contextmanager
def nats_and_fake_llm(data: Path, latency_s: float) -> Iterator[EmbeddedStack]:
    """nats-server and the fake LLM running for `data`; the caller starts the services it needs
    once it has shaped the topology. Everything is stopped on the way out."""
    running = EmbeddedStack(data, llm_base_url=None, fake_llm_latency=latency_s, extra_env=FAST_RETRIES)
    running.start_nats()
    running.start_fake_llm()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A fresh data dir holding the example's inputs, as a new user's clone has."""
    shutil.copytree(EXAMPLE_RAW, tmp_path / "1_raw")
    return tmp_path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The fake answering in 0.1 s, for the worker tests."""
    with nats_and_fake_llm(tmp_path_factory.mktemp("data"), latency_s=0.1) as running:
        yield running
