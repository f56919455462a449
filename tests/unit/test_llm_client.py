"""The client against a scripted loopback server that answers exactly what each test tells it to."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from shared.events import CallParameters, ModelSpec
from shared.llm import (
    REPLICATE_HEADER,
    ErrorKind,
    LLMClient,
    LLMError,
    chat_messages,
    classify_response,
    endpoint_identity,
    error_kind_for_status,
    is_openrouter,
    request_body,
    request_hash,
)

KEY = "sk-or-v1-unit-test-secret"
MODEL = ModelSpec(id="writer", model="acme/writer-1", provider="acme", tier="small")


@dataclass
class Script:
    status: int = 200
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    received: list[dict] = field(default_factory=list)


def ok_body(content: str | None = "hello", finish_reason: str = "stop", **extra) -> str:
    choice = {"message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}
    return json.dumps({"id": "gen-1", "model": "acme/writer-1-2025", "choices": [choice], **extra})


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            script.received.append({"headers": dict(self.headers), "body": json.loads(self.rfile.read(length))})
            time.sleep(script.delay_s)
            payload = script.body.encode()
            self.send_response(script.status)
            for name, value in script.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            """The timeout test hangs up on purpose; the broken pipe it leaves is expected."""

    server = QuietServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/api/v1", script
    server.shutdown()
    server.server_close()


@pytest.fixture
def script(scripted) -> Script:
    _, script = scripted
    script.status, script.body, script.headers, script.delay_s = 200, ok_body(), {}, 0.0
    script.received.clear()
    return script


@pytest.fixture
async def client(scripted, script) -> AsyncIterator[LLMClient]:
    base_url, _ = scripted
    llm = LLMClient(base_url, KEY, timeout_s=2.0)
    yield llm
    await llm.aclose()


async def call(llm: LLMClient, parameters: CallParameters | None = None):
    return await llm.complete(MODEL, "Write.", parameters or CallParameters(), attempt=1, request_hash="h")


async def failure(llm: LLMClient) -> LLMError:
    with pytest.raises(LLMError) as caught:
        await call(llm)
    return caught.value


# ---- request hash ------------------------------------------------------------------------


def hash_of(**changes: Any) -> str:
    arguments: dict[str, Any] = {
        "endpoint": "https://openrouter.ai/api/v1",
        "model": "acme/writer-1",
        "messages": chat_messages("Write."),
        "parameters": CallParameters(temperature=0.7, max_tokens=100),
        "replicate": 1,
    } | changes
    return request_hash(**arguments)


def test_request_hash_is_a_stable_sha256_of_the_request():
    assert hash_of() == hash_of()
    assert len(hash_of()) == 64 and int(hash_of(), 16) >= 0
    assert hash_of(endpoint="https://openrouter.ai/api/v1/") == hash_of()
    assert hash_of(endpoint="HTTPS://OpenRouter.ai/api/v1") == hash_of()


def test_the_fake_llm_is_one_endpoint_whatever_its_port():
    on_one_port = hash_of(endpoint=endpoint_identity("http://127.0.0.1:18001/v1", simulated=True))
    assert on_one_port == hash_of(endpoint=endpoint_identity("http://127.0.0.1:23456/v1", simulated=True))
    assert on_one_port != hash_of(endpoint="http://127.0.0.1:18001/v1")


def test_a_real_endpoint_keeps_the_hash_its_stored_responses_were_stored_under():
    """Responses stored before the endpoint identity existed are still found."""
    assert hash_of() == "ed8cc4deb0124c37d31b33d11a67a8ec129a603cb488dc292613a566e817637c"


@pytest.mark.parametrize(
    "change",
    [
        {"endpoint": "http://127.0.0.1:8999/v1"},
        {"model": "acme/writer-2"},
        {"messages": chat_messages("Write more.")},
        {"parameters": CallParameters(temperature=0.8, max_tokens=100)},
        {"parameters": CallParameters(temperature=0.7, max_tokens=100, seed=1)},
        {"replicate": 2},
    ],
)
def test_request_hash_changes_with_anything_that_changes_the_answer(change):
    assert hash_of(**change) != hash_of()


def test_chat_messages_is_one_user_message():
    assert chat_messages("Hi") == [{"role": "user", "content": "Hi"}]


# ---- what is sent ------------------------------------------------------------------------


async def test_sends_only_openai_fields_and_the_bearer_key_to_an_endpoint_that_is_not_openrouter(client, script):
    """A strict OpenAI-compatible server answers 400 to a field it does not know: none is sent."""
    await call(client, CallParameters(temperature=0.3, max_tokens=50, seed=7))
    sent = script.received[-1]
    assert sent["body"] == {
        "model": "acme/writer-1",
        "messages": [{"role": "user", "content": "Write."}],
        "temperature": 0.3,
        "max_tokens": 50,
        "seed": 7,
    }
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "X-Title" not in sent["headers"] and "x-title" not in {h.lower() for h in sent["headers"]}


def test_openrouter_gets_its_usage_accounting_and_only_openrouter_does():
    assert is_openrouter("https://openrouter.ai/api/v1") and is_openrouter("https://eu.openrouter.ai/api/v1")
    assert not is_openrouter("http://127.0.0.1:8000/v1") and not is_openrouter("https://openrouter.ai.evil.example/v1")
    body = request_body("acme/writer-1", "Write.", CallParameters(max_tokens=5), openrouter=True)
    assert body == {"model": "acme/writer-1", "messages": [{"role": "user", "content": "Write."}],
                    "usage": {"include": True}, "max_tokens": 5}
    assert "usage" not in request_body("acme/writer-1", "Write.", CallParameters(), openrouter=False)


async def test_each_call_says_which_replicate_it_is_for(client, script):
    await client.complete(MODEL, "Write.", CallParameters(), attempt=1, request_hash="h", replicate=3)
    await call(client)
    assert [sent["headers"][REPLICATE_HEADER] for sent in script.received] == ["3", "1"]
    assert script.received[0]["body"] == script.received[1]["body"]


async def test_without_a_key_no_authorization_header_is_sent(scripted, script):
    base_url, _ = scripted
    async with LLMClient(base_url, None, timeout_s=2.0) as llm:
        await call(llm)
    assert "Authorization" not in script.received[-1]["headers"]


def test_repr_never_shows_the_key():
    llm = LLMClient("http://127.0.0.1:1/v1", SecretStr(KEY), timeout_s=1.0)
    assert KEY not in repr(llm) and "api_key=set" in repr(llm)


# ---- what is recorded --------------------------------------------------------------------


async def test_missing_usage_gives_zero_tokens_and_unknown_cost(client, script):
    record = await call(client)
    assert (record.prompt_tokens, record.completion_tokens, record.reasoning_tokens) == (0, 0, 0)
    assert record.cost_usd is None and record.provider is None
    assert record.resolved_model == "acme/writer-1-2025" and record.text == "hello"


async def test_usage_and_provider_are_recorded(client, script):
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 40,
        "completion_tokens_details": {"reasoning_tokens": 9},
        "cost": 0.0021,
    }
    script.body = ok_body("text", native_finish_reason="STOP", usage=usage, provider="Together")
    record = await call(client)
    assert (record.prompt_tokens, record.completion_tokens, record.reasoning_tokens) == (11, 40, 9)
    assert record.cost_usd == 0.0021 and record.provider == "Together"


# ---- how answers are classified ----------------------------------------------------------

BASE_URL = "https://openrouter.ai/api/v1"


def error_for(status: int, body: str, headers: dict[str, str] | None = None, secret: str = KEY) -> LLMError:
    """What `classify_response` raises for an answer that is not a usable completion."""
    with pytest.raises(LLMError) as caught:
        classify_response(status, headers or {}, body, model="acme/writer-1", base_url=BASE_URL, secret=secret)
    return caught.value


def test_a_good_answer_is_its_payload():
    payload = classify_response(200, {}, ok_body("text"), model="acme/writer-1", base_url=BASE_URL, secret=KEY)
    assert payload["choices"][0]["message"]["content"] == "text"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorKind.BAD_REQUEST),
        (401, ErrorKind.AUTH),
        (402, ErrorKind.PAYMENT),
        (403, ErrorKind.FORBIDDEN),
        (404, ErrorKind.NOT_FOUND),
        (408, ErrorKind.TIMEOUT),
        (418, ErrorKind.OTHER_CLIENT_ERROR),
        (422, ErrorKind.OTHER_CLIENT_ERROR),
        (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.SERVER_ERROR),
        (502, ErrorKind.SERVER_ERROR),
        (503, ErrorKind.SERVER_ERROR),
    ],
)
def test_http_status_maps_to_an_error_kind(status, kind):
    error = error_for(status, json.dumps({"error": {"code": status, "message": "provider words"}}))
    assert error.kind is kind and error.status == status
    assert "provider words" in error.message
    assert error_kind_for_status(status) is kind


def test_retry_after_is_read_whatever_the_header_case():
    assert error_for(429, "{}", {"retry-after": "4"}).retry_after_s == 4.0
    assert error_for(429, "{}", {"Retry-After": "4"}).retry_after_s == 4.0
    assert error_for(503, "{}").retry_after_s is None


def test_auth_error_without_a_key_tells_how_to_set_one():
    error = error_for(401, json.dumps({"error": {"code": 401, "message": "No auth credentials found"}}), secret="")
    assert error.kind is ErrorKind.AUTH
    assert "no API key is set" in error.message
    assert "OPENROUTER_API_KEY" in error.message and "DAYDREAM_LLM_API_KEY" in error.message


def test_auth_error_with_a_key_says_the_key_was_refused():
    error = error_for(401, json.dumps({"error": {"code": 401, "message": "User not found."}}))
    assert error.kind is ErrorKind.AUTH
    assert "the API key was refused" in error.message and "no API key" not in error.message
    assert "OPENROUTER_API_KEY" in error.message and "User not found." in error.message
    assert KEY not in error.message


def test_provider_message_is_truncated_and_never_echoes_the_key():
    error = error_for(400, json.dumps({"error": {"message": f"bad key {KEY} " + "x" * 2000}}))
    assert KEY not in str(error) and KEY not in repr(error)
    assert "***" in error.message
    assert len(error.message) < 700


def test_upstream_raw_error_is_included():
    raw = {"code": 502, "message": "Provider returned error", "metadata": {"raw": "model overloaded"}}
    assert "model overloaded" in error_for(502, json.dumps({"error": raw})).message


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("<html>Bad gateway</html>", ErrorKind.BAD_BODY),
        ("[1, 2]", ErrorKind.BAD_BODY),
        (json.dumps({"id": "x", "choices": []}), ErrorKind.BAD_BODY),
        (json.dumps({"error": {"code": 502, "message": "upstream died"}}), ErrorKind.ERROR_IN_RESPONSE),
        (ok_body("partial", finish_reason="error"), ErrorKind.FINISH_ERROR),
        (ok_body(None), ErrorKind.EMPTY_CONTENT),
        (ok_body("   "), ErrorKind.EMPTY_CONTENT),
    ],
)
def test_broken_200_answers_are_classified(body, kind):
    assert error_for(200, body).kind is kind


def test_a_body_that_is_not_json_names_its_content_type():
    error = error_for(200, "<html>Bad gateway</html>", {"Content-Type": "text/html"})
    assert "text/html" in error.message and "Bad gateway" in error.message


def test_an_empty_answer_cut_by_the_token_budget_is_truncated_empty_with_advice():
    usage = {"completion_tokens": 4096, "completion_tokens_details": {"reasoning_tokens": 4096}}
    error = error_for(200, ok_body("", finish_reason="length", usage=usage))
    assert error.kind is ErrorKind.TRUNCATED_EMPTY
    assert str(error) == (
        "truncated_empty: acme/writer-1 spent its max_tokens budget before writing any text "
        "(reasoning tokens: 4096); raise max_tokens in llm_models.csv"
    )
    assert "reasoning tokens: not reported" in error_for(200, ok_body(None, finish_reason="length")).message


async def test_the_client_raises_what_the_classification_says(client, script):
    script.status, script.body = 429, "{}"
    script.headers = {"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)}
    error = await failure(client)
    assert error.kind is ErrorKind.RATE_LIMITED and error.status == 429
    assert error.retry_after_s is not None and 27.0 <= error.retry_after_s <= 30.0


async def test_slow_server_is_a_timeout(scripted, script):
    base_url, _ = scripted
    script.delay_s = 1.0
    async with LLMClient(base_url, KEY, timeout_s=0.2) as llm:
        error = await failure(llm)
    assert error.kind is ErrorKind.TIMEOUT and "0.2s" in error.message


async def test_nothing_listening_is_a_connection_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with LLMClient(f"http://127.0.0.1:{port}/v1", KEY, timeout_s=2.0) as llm:
        error = await failure(llm)
    assert error.kind is ErrorKind.CONNECTION and f"127.0.0.1:{port}" in error.message
