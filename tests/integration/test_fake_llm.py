"""The real client against the fake server over loopback HTTP: what users of `daydream fake-llm`
and every offline test rely on."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import typer
from typer.testing import CliRunner

from daydream.fake_llm import SIMULATED_BANNER, FakeLLMServer, body_hash, fake_llm
from daydream.nats_process import free_port
from shared.events import CallParameters, ModelSpec
from shared.llm import ErrorKind, LLMClient, LLMError

pytestmark = pytest.mark.integration

KEY = "sk-or-v1-integration-secret"
PROMPT = "Combine these concepts:\n- Default mode network: the brain at rest\n- Economic moats: lasting advantage\n"


def model(name: str = "fake/writer") -> ModelSpec:
    return ModelSpec(id=re.sub(r"[^A-Za-z0-9_-]", "_", name), model=name, provider="fake", tier="small")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def client(fake) -> AsyncIterator[LLMClient]:
    llm = LLMClient(fake.base_url, KEY, timeout_s=5.0)
    yield llm
    await llm.aclose()


async def complete(llm: LLMClient, name: str = "fake/writer", prompt: str = PROMPT, **parameters):
    return await llm.complete(model(name), prompt, CallParameters(**parameters), attempt=2, request_hash="rh-1")


async def fails(llm: LLMClient, name: str, prompt: str = PROMPT) -> LLMError:
    with pytest.raises(LLMError) as caught:
        await complete(llm, name, prompt)
    return caught.value


async def test_a_normal_call_fills_every_field_of_the_record(client):
    record = await complete(client)
    assert record.text.startswith(SIMULATED_BANNER)
    assert "Default mode network" in record.text and "Economic moats" in record.text
    assert (record.finish_reason, record.native_finish_reason, record.truncated) == ("stop", "end_turn", False)
    assert record.prompt_tokens > 0 and record.completion_tokens > 0 and record.reasoning_tokens > 0
    assert record.cost_usd > 0 and record.latency_s > 0
    assert record.provider == "DayDream-Fake"
    assert record.response_id.startswith("gen-fake-") and record.resolved_model == "fake/writer-sim"
    assert (record.attempt, record.request_hash, record.cached) == (2, "rh-1", False)
    assert record.started_at <= record.finished_at


async def test_the_same_request_gets_the_same_text(client):
    assert (await complete(client, seed=3)).text == (await complete(client, seed=3)).text
    assert (await complete(client, seed=3)).text != (await complete(client, seed=4)).text


async def test_replicates_of_one_unseeded_request_are_different_samples(client, fake):
    """Same body, different `X-DayDream-Replicate`: other text, and another request in `/stats`,
    so n replicates are not reported as one request called n times."""

    async def replicate(number: int) -> str:
        record = await client.complete(model(), "Replicate me.\n- Data Flywheel\n- Economic Moat",
                                       CallParameters(), attempt=1, request_hash="rh", replicate=number)
        return record.text

    first, second, second_again = await replicate(1), await replicate(2), await replicate(2)
    assert first != second and second == second_again
    body = fake.last_request()["body"]
    requests = fake.stats()["requests"]
    assert requests[body_hash(body)] == {"started": 1, "completed": 1}
    assert requests[body_hash(body, "2")] == {"started": 2, "completed": 2}


async def test_a_judge_prompt_ends_with_a_score_inside_the_named_scale(client):
    scores = set()
    for index in range(20):
        prompt = f"Judge response #{index}. Score it on a scale of 1-5.\nEnd with a line SCORE: N"
        last_line = (await complete(client, "fake/judge", prompt)).text.splitlines()[-1]
        assert last_line.startswith("SCORE: ")
        scores.add(int(last_line.removeprefix("SCORE: ")))
    assert scores <= {1, 2, 3, 4, 5} and len(scores) > 1


async def test_parameters_headers_and_key_reach_the_server(client, fake):
    await complete(client, temperature=0.25, max_tokens=500, seed=42)
    seen = fake.last_request()
    assert seen["body"]["temperature"] == 0.25
    assert seen["body"]["max_tokens"] == 500 and seen["body"]["seed"] == 42
    assert "usage" not in seen["body"] and "x-title" not in seen["headers"], "OpenRouter's own, sent only there"
    assert seen["bearer_sha256"] == hashlib.sha256(KEY.encode()).hexdigest()[:16]
    await complete(client)
    assert not {"temperature", "max_tokens", "seed"} & set(fake.last_request()["body"])


@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        ("429", ErrorKind.RATE_LIMITED, 429),
        ("500", ErrorKind.SERVER_ERROR, 500),
        ("503", ErrorKind.SERVER_ERROR, 503),
        ("html", ErrorKind.BAD_BODY, 200),
        ("error200", ErrorKind.ERROR_IN_RESPONSE, 200),
        ("empty", ErrorKind.EMPTY_CONTENT, 200),
        ("finish_error", ErrorKind.FINISH_ERROR, 200),
        ("400", ErrorKind.BAD_REQUEST, 400),
        ("401", ErrorKind.AUTH, 401),
        ("402", ErrorKind.PAYMENT, 402),
        ("404", ErrorKind.NOT_FOUND, 404),
    ],
)
async def test_each_injected_fault_maps_to_its_error_kind(client, fault, kind, status):
    error = await fails(client, f"fake/writer+fault={fault}")
    assert (error.kind, error.status) == (kind, status)


async def test_slow_fault_times_the_client_out_and_the_server_notices(fake):
    async with LLMClient(fake.base_url, KEY, timeout_s=0.3) as llm:
        error = await fails(llm, "fake/writer+fault=slow@5")
    assert error.kind is ErrorKind.TIMEOUT
    deadline = time.monotonic() + 3
    while fake.stats()["models"]["fake/writer+fault=slow@5"]["in_flight"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert fake.stats()["models"]["fake/writer+fault=slow@5"]["by_status"] == {"499": 1}


async def test_retry_after_reaches_the_error(client):
    assert (await fails(client, "fake/writer+fault=429@3")).retry_after_s == 3.0
    assert (await fails(client, "fake/writer+fault=429")).retry_after_s == 1.0
    assert (await fails(client, "fake/writer+fault=503")).retry_after_s is None


async def test_max_tokens_truncates_and_is_flagged(client):
    record = await complete(client, max_tokens=20)
    assert record.truncated and record.finish_reason == "length" and len(record.text) <= 80
    assert (await complete(client, "fake/writer+fault=length")).truncated


async def test_a_counted_fault_fails_the_first_calls_then_succeeds(client, fake):
    name = "fake/writer+fault=500:2"
    for _ in range(2):
        assert (await fails(client, name)).kind is ErrorKind.SERVER_ERROR
    assert (await complete(client, name)).text.startswith(SIMULATED_BANNER)
    per_model = fake.stats()["models"][name]
    assert per_model["calls"] == 3 and per_model["by_status"] == {"500": 2, "200": 1}
    assert per_model["faults"] == {"500": 2}


async def test_request_counts_show_started_and_completed_calls(client, fake):
    name = "fake/writer+fault=empty:1"
    await fails(client, name, "Count me.")
    await complete(client, name, "Count me.")
    seen = fake.last_request()["body"]
    assert fake.stats()["requests"][body_hash(seen)] == {"started": 2, "completed": 1}


async def test_peak_in_flight_counts_concurrent_calls():
    with FakeLLMServer(latency_s=0.3) as server:
        async with LLMClient(server.base_url, KEY, timeout_s=5.0) as llm:
            await asyncio.gather(*(complete(llm, "fake/busy", f"{PROMPT} #{index}") for index in range(8)))
        stats = server.stats()
        assert stats["models"]["fake/busy"]["peak_in_flight"] == 8
        assert stats["models"]["fake/busy"]["in_flight"] == 0
        assert stats["peak_in_flight"] == 8 and stats["total_calls"] == 8
        server.reset()
        assert server.stats()["total_calls"] == 0 and server.stats()["models"] == {}


async def test_the_key_never_appears_in_records_or_errors(client):
    record = await complete(client)
    assert KEY not in record.model_dump_json()
    for fault in ("401", "html", "error200", "500"):
        error = await fails(client, f"fake/writer+fault={fault}")
        assert KEY not in str(error) and KEY not in repr(error) and KEY not in error.message
    assert KEY not in repr(client)


async def test_mixed_mode_faults_a_deterministic_share_of_requests_once():
    with FakeLLMServer(fault_rate=0.5, fault_kinds=["500", "429"], fault_times=1) as server:
        async with LLMClient(server.base_url, None, timeout_s=5.0) as llm:
            prompts = [f"{PROMPT} variant {index}" for index in range(30)]
            failed = []
            for prompt in prompts:
                try:
                    await complete(llm, prompt=prompt)
                except LLMError as error:
                    assert error.kind in {ErrorKind.SERVER_ERROR, ErrorKind.RATE_LIMITED}
                    failed.append(prompt)
            assert 3 <= len(failed) <= 27
            for prompt in failed:
                assert (await complete(llm, prompt=prompt)).text


async def test_fault_and_latency_headers_override_per_request(fake):
    body = {"model": "fake/headers", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient() as http:
        faulted = await http.post(f"{fake.base_url}/chat/completions", json=body, headers={"X-Fake-Fault": "402"})
        started = time.monotonic()
        slowed = await http.post(f"{fake.root_url}/chat/completions", json=body, headers={"X-Fake-Latency": "0.3"})
        unknown = await http.post(f"{fake.base_url}/chat/completions", json=body, headers={"X-Fake-Fault": "boom"})
    assert faulted.status_code == 402
    assert slowed.status_code == 200 and time.monotonic() - started >= 0.3
    assert unknown.status_code == 400 and "known kinds" in unknown.json()["error"]["message"]


def test_cli_rejects_an_unknown_fault_kind():
    app = typer.Typer()
    app.command()(fake_llm)
    result = CliRunner().invoke(app, ["--fault-rate", "0.2", "--fault-kinds", "429,teapot"])
    assert result.exit_code == 2
    assert "teapot" in result.output


def test_cli_serves_the_fake_on_the_given_port():
    port = free_port()
    command = "import typer; from daydream.fake_llm import fake_llm; typer.run(fake_llm)"
    process = subprocess.Popen(
        [sys.executable, "-c", command, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health").text == "ok"
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "fake-llm did not start"
                time.sleep(0.05)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "fake/cli", "messages": [{"role": "user", "content": "- Hebbian learning"}]},
        ).json()
        assert "Hebbian learning" in answer["choices"][0]["message"]["content"]
    finally:
        process.terminate()
        process.wait(timeout=10)
