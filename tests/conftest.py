"""Shared fixtures: a real JetStream per session (wiped for each test), a fresh PostgreSQL database per run."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from daydream.nats_process import NatsServer

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_RAW = REPO / "data" / "1_raw"


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def jetstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real JetStream for the session: `NATS_URL` when set, else a testcontainers NATS when a
    Docker engine answers, else a private nats-server on a free port with a temporary store."""
    external = os.environ.get("NATS_URL")
    if external:
        yield external
        return
    if _docker_answers():
        from testcontainers.community.nats import NatsContainer

        with NatsContainer(jetstream=True) as container:
            yield container.nats_uri()
        return
    with NatsServer(store_dir=tmp_path_factory.mktemp("nats")) as server:
        yield server.url


@pytest.fixture
async def nats_url(jetstream_url: str) -> str:
    """The session's JetStream with no DayDream streams or buckets in it: each test starts clean."""
    nc = await nats.connect(jetstream_url)
    js = nc.jetstream()
    for info in await js.streams_info():
        name = info.config.name
        if name is not None and name.startswith(("DD_", "KV_dd_")):
            await js.delete_stream(name)
    await nc.close()
    return jetstream_url


@pytest.fixture
async def nats_client(nats_url: str) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database of this test's own on the PostgreSQL at 127.0.0.1:5432 (or DAYDREAM_TEST_POSTGRES):
    tests that share one see each other's rows."""
    import sqlalchemy

    admin_url = os.environ.get("DAYDREAM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    name = f"daydream_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        pytest.fail(f"PostgreSQL not reachable at {admin_url} (set DAYDREAM_TEST_POSTGRES): {error}")
    yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def example_raw() -> Path:
    return EXAMPLE_RAW
