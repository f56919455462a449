"""Secrets and hostile inputs on the real stack: a canary API key used for a whole run appears in
no file, table, message or metric; templates that reach into Python internals and ids with path
components are refused at publish, before anything is written or sent.

Input refusals at `plan` (one sandbox escape, concept ids `..` and `al/pha`, experiment id `a/b`)
are covered in tests/unit/test_bad_inputs.py and tests/unit/test_inputs.py; here the door is
`daydream publish` against a running stack."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from pathlib import Path

import httpx
import nats
import pytest
from typer.testing import CliRunner

from daydream.cli import app
from daydream.stack import EmbeddedStack
from tests.e2e.chaos import (
    Model,
    prepare,
    publish,
    running_stack,
    tracker_of,
    wait_finished,
    write_raw,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
SANDBOX_ESCAPES = (
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ concepts.__class__.__subclasses__() }}",
    "{{ self._TemplateReference__context }}",
    "{% for c in ''.__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
)
UNSAFE_IDS = ("../x", "a/b", "..", "x/../../y")


async def every_stored_message(nats_url: str) -> list[bytes]:
    """Headers and data of every message of every stream, the response store's included."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    found = []
    for info in await js.streams_info():
        for sequence in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            try:
                message = await js.get_msg(info.config.name or "", sequence)
            except nats.js.errors.NotFoundError:
                continue
            found.append(repr(message.headers).encode() + (message.data or b""))
    await nc.close()
    return found


def test_a_canary_api_key_used_for_a_whole_run_is_found_nowhere(tmp_path: Path) -> None:
    canary = f"sk-or-canary-{secrets.token_hex(16)}"
    data = tmp_path / "data"
    write_raw(data, [Model("writer", "fake/writer", True, False),
                     Model("writer_401", "fake/writer+fault=401", True, False, tier="refused"),
                     Model("judge", "fake/judge+fault=500:1", False, True)],
              concepts=4, k_max=2, evaluation_templates=1)
    spec = prepare(data, "canary")
    with running_stack(data, spec, latency_s=0.01, env={"OPENROUTER_API_KEY": canary}) as stack:
        publish(stack, spec)
        tracker = tracker_of(data)
        progress = wait_finished(tracker, spec.experiment_id, timeout_s=60)
        assert stack.llm_base_url is not None
        fake_root = stack.llm_base_url.removesuffix("/v1")
        last_request = httpx.get(f"{fake_root}/last_request").json()
        metrics = {name: httpx.get(f"http://127.0.0.1:{port}/metrics").text for name, port in stack.ports.items()}
        messages = asyncio.run(every_stored_message(stack.nats_url))
    tracker.engine.dispose()  # the last connection closes: SQLite folds the WAL into the file we scan

    assert last_request["bearer_sha256"] == hashlib.sha256(canary.encode()).hexdigest()[:16], "the key was not used"
    assert progress.failures_by_reason == {"auth": 6}, "writer_401's tier stops; the other tier goes on"
    assert progress.stages["evaluation"].done == 6
    needle = canary.encode()
    files = [path for path in data.rglob("*") if path.is_file()]
    assert any(path.name == "daydream.db" for path in files)
    assert any("nats" in path.parts for path in files)
    assert [str(path) for path in files if needle in path.read_bytes()] == []
    assert len(messages) > 20
    assert [m[:200] for m in messages if needle in m] == []
    assert [name for name, text in metrics.items() if canary in text] == []


def publish_cli(data: Path, stack: EmbeddedStack, *args: str):
    return CliRunner().invoke(app, ["publish", "--data", str(data), *args], env=stack.client_env())


async def stream_message_counts(nats_url: str) -> dict[str | None, int]:
    nc = await nats.connect(nats_url)
    counts = {info.config.name: info.state.messages for info in await nc.jetstream().streams_info()}
    await nc.close()
    return counts


def files_publish_could_write(data: Path) -> list[str]:
    """Every file of the data dir but logs, the NATS store and SQLite's WAL sidecars, which come and
    go with the tracker's connections rather than with anything written."""
    return sorted(str(p) for p in data.rglob("*") if "logs" not in p.parts and "nats" not in p.parts
                  and not p.name.endswith(("-wal", "-shm")))


def test_sandbox_escapes_and_path_ids_are_refused_at_publish_and_nothing_is_written(tmp_path: Path) -> None:
    data = tmp_path / "data"
    raw = write_raw(data, [Model("writer", "fake/writer", True, False), Model("judge", "fake/judge", False, True)],
                    concepts=3, k_max=2, evaluation_templates=1)
    spec = prepare(data, "probe")
    template = raw / "generation_templates" / "essay.txt"
    original = template.read_text(encoding="utf-8")
    with running_stack(data, spec, latency_s=0.01) as stack:
        before = asyncio.run(stream_message_counts(stack.nats_url))
        written = files_publish_could_write(data)
        for escape in SANDBOX_ESCAPES:
            template.write_text(f"Connect these ideas:\n{escape}\n{original}", encoding="utf-8")
            result = publish_cli(data, stack, "--experiment-id", "escape")
            assert result.exit_code == 2, (escape, result.output)
            assert "generation_templates/essay.txt line 2" in result.output, (escape, result.output)
            assert "sandbox" in result.output or "unsafe" in result.output, (escape, result.output)
            assert "Nothing was written" in result.output
        template.write_text(original, encoding="utf-8")
        for unsafe in UNSAFE_IDS:
            result = publish_cli(data, stack, "--experiment-id", unsafe)
            assert result.exit_code == 2, (unsafe, result.output)
            assert f"'{unsafe}' is not a safe id" in result.output, (unsafe, result.output)
        after = asyncio.run(stream_message_counts(stack.nats_url))
    assert after == before
    assert files_publish_could_write(data) == written
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
