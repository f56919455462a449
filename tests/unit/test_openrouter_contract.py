"""Requests fit the endpoint. Against OpenRouter's documented shapes (API reference: chat
completions request with `provider` preferences and `usage`, response with `usage.cost` and
`provider`): what OpenRouter gets and how its answer is read. Against a strict OpenAI-compatible
server that answers 400 to any field it does not know: nothing of OpenRouter's is sent to it."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.events import CallParameters, ModelSpec, ProviderRouting
from shared.inputs import InputErrors, load_experiment
from shared.llm import LLMClient, chat_messages, request_hash

BASE_RAW = Path(__file__).resolve().parents[1] / "data" / "bad_inputs" / "_base" / "1_raw"
OPENAI_FIELDS = {"model", "messages", "temperature", "max_tokens", "seed", "top_p", "stop", "n"}
ROUTING = ProviderRouting(order=["anthropic", "openai"], allow_fallbacks=False, require_parameters=True,
                          quantizations=["fp8"])
ROUTED = ModelSpec(id="judge", model="anthropic/claude-sonnet-4", provider="openrouter", tier="paid", routing=ROUTING)
OPENROUTER_ANSWER = {  # the documented non-streaming response, abridged to what DayDream reads
    "id": "gen-12345",
    "provider": "Anthropic",
    "model": "anthropic/claude-sonnet-4",
    "object": "chat.completion",
    "created": 1735689600,
    "choices": [{"finish_reason": "stop", "native_finish_reason": "end_turn", "index": 0,
                 "message": {"role": "assistant", "content": "SCORE: 7"}}],
    "usage": {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128, "cost": 0.00042,
              "completion_tokens_details": {"reasoning_tokens": 0}},
}


class Endpoint:
    """A loopback endpoint that records each request; `strict` refuses unknown body fields with 400
    as a strict OpenAI-compatible server does."""

    def __init__(self, strict: bool) -> None:
        self.received: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                endpoint.received.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                unknown = sorted(set(body) - OPENAI_FIELDS)
                status, answer = (400, {"error": {"message": f"Unrecognized request argument supplied: {unknown}"}}) \
                    if strict and unknown else (200, OPENROUTER_ANSWER)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/api/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def strict() -> Iterator[Endpoint]:
    endpoint = Endpoint(strict=True)
    yield endpoint
    endpoint.close()


@pytest.fixture
def openrouter() -> Iterator[Endpoint]:
    endpoint = Endpoint(strict=False)
    yield endpoint
    endpoint.close()


async def test_openrouter_gets_routing_usage_and_attribution_and_its_answer_is_read(openrouter: Endpoint) -> None:
    async with LLMClient(openrouter.base_url, "sk-or-test", 5.0, app_url="https://example.org/lab",
                         openrouter=True) as llm:
        record = await llm.complete(ROUTED, "Rate it.", CallParameters(temperature=0.0, seed=3), attempt=1,
                                    request_hash="h")
    sent = openrouter.received[-1]
    assert sent["body"]["provider"] == {"order": ["anthropic", "openai"], "allow_fallbacks": False,
                                        "require_parameters": True, "quantizations": ["fp8"]}
    assert sent["body"]["usage"] == {"include": True} and sent["body"]["seed"] == 3
    assert sent["headers"]["http-referer"] == "https://example.org/lab"
    assert sent["headers"]["x-title"] == "DayDream"
    assert (record.text, record.provider, record.cost_usd) == ("SCORE: 7", "Anthropic", 0.00042)
    assert (record.prompt_tokens, record.completion_tokens, record.native_finish_reason) == (120, 8, "end_turn")


async def test_a_strict_server_gets_only_openai_fields_even_for_a_routed_model(strict: Endpoint) -> None:
    async with LLMClient(strict.base_url, "key", 5.0, app_url="https://example.org/lab") as llm:
        record = await llm.complete(ROUTED, "Rate it.", CallParameters(max_tokens=20), attempt=1, request_hash="h")
    sent = strict.received[-1]
    assert set(sent["body"]) <= OPENAI_FIELDS and record.text == "SCORE: 7"
    assert "http-referer" not in sent["headers"] and "x-title" not in sent["headers"]


async def test_the_strict_server_does_refuse_what_it_does_not_know(strict: Endpoint) -> None:
    """The double is strict for real: OpenRouter's fields sent to it are a permanent 400."""
    async with LLMClient(strict.base_url, "key", 5.0, openrouter=True) as llm:
        with pytest.raises(Exception, match="bad_request"):
            await llm.complete(ROUTED, "Rate it.", CallParameters(), attempt=1, request_hash="h")


def test_routing_is_part_of_the_request_hash_and_no_routing_keeps_old_hashes() -> None:
    def hashed(routing: ProviderRouting | None) -> str:
        return request_hash("https://openrouter.ai/api/v1", ROUTED.model, chat_messages("x"), CallParameters(), 1,
                            routing)

    assert hashed(None) == hashed(ProviderRouting())
    assert hashed(ROUTING) != hashed(None)
    assert hashed(ROUTING) != hashed(ROUTING.model_copy(update={"order": ["openai", "anthropic"]}))


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return Path(shutil.copytree(BASE_RAW, tmp_path / "1_raw"))


def with_model_columns(raw: Path, **columns: str) -> None:
    models = raw / "llm_models.csv"
    lines = models.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    lines = [header + "," + ",".join(columns)] + [row + "," + ",".join(columns.values()) for row in rows]
    models.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_routing_columns_in_llm_models_csv_reach_every_model(raw: Path) -> None:
    with_model_columns(raw, provider_order="anthropic;openai", allow_fallbacks="false", require_parameters="yes",
                       quantizations="FP8;bf16")
    spec = load_experiment(raw, experiment_id="routed").spec
    routing = [model.routing for model in spec.generation_models + spec.evaluation_models]
    expected = ProviderRouting(order=["anthropic", "openai"], allow_fallbacks=False, require_parameters=True,
                               quantizations=["fp8", "bf16"])
    assert len(routing) == 2 and set(map(repr, routing)) == {repr(expected)}


def test_bad_routing_columns_are_input_problems_naming_file_row_and_fix(raw: Path) -> None:
    with_model_columns(raw, provider_order="Anthropic!", allow_fallbacks="maybe", require_parameters="",
                       quantizations="int3")
    with pytest.raises(InputErrors) as caught:
        load_experiment(raw, experiment_id="routed")
    text = str(caught.value)
    assert "llm_models.csv line 2" in text and "llm_models.csv line 3" in text
    assert "provider_order entry 'Anthropic!' is not a provider slug" in text
    assert "allow_fallbacks 'maybe' is not a boolean" in text
    assert "quantizations entry 'int3'" in text and "fp8" in text
