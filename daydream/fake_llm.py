"""A fake OpenAI-compatible LLM server: run whole experiments offline, and drill every failure.

Answers are deterministic (seeded by a hash of the request body and the `X-DayDream-Replicate`
header, so unseeded replicates of one prompt are different samples) and say plainly that they are
simulated. A generation answer echoes the concepts it finds in the prompt (lines starting with
`- `, `* ` or `## `); a judge answer (the prompt contains `SCORE:`) ends with `SCORE: N`, N inside
the scale the prompt names (e.g. "0-9", "1 to 10"), else 0..9.

Fault injection — the same spec in a model name or in the `X-Fake-Fault` header:

    <model>+fault=<kind>[@<seconds>][:<times>]     e.g.  fake/writer+fault=429@2:3
    X-Fake-Fault: <kind>[@<seconds>][:<times>]     e.g.  X-Fake-Fault: slow@5

    kind      429 500 503 slow html error200 empty length finish_error 400 401 402 404
    @seconds  Retry-After for 429 (default 1) and 503 (default none); the sleep for `slow`
              (default: the X-Fake-Slow header, else 30 s)
    :times    inject only on the first <times> calls of each distinct request body, then answer
              normally — so a retrying client eventually succeeds. Without it: always.

A server-wide mixed mode (`fault_rate`, `fault_kinds`, `fault_times`) injects faults into a
deterministic fraction of request bodies, for fault matrices without special model names.
The header wins over the model name, which wins over the mixed mode.

Latency: `latency_s` per call, or the `X-Fake-Latency` header (seconds) per request.
`GET /stats` counts calls per model (in flight, peak, by status, by fault, when each call started and ended)
and per request hash (body + replicate; started, completed);
`POST /stats/reset` clears them; `GET /last_request` shows the last body and headers (the bearer
token only as a SHA-256 prefix); `GET /health` says ok.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import typer
import uvicorn
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from shared.llm import REPLICATE_HEADER

SIMULATED_BANNER = "[SIMULATED RESPONSE — DayDream fake LLM, not a real model]"
PROVIDER = "DayDream-Fake"
FAULT_KINDS = (
    "429",
    "500",
    "503",
    "slow",
    "html",
    "error200",
    "empty",
    "length",
    "finish_error",
    "400",
    "401",
    "402",
    "404",
)
MIXED_MODE_KINDS = ("429", "500", "503", "html", "error200", "empty", "finish_error")
"""Transient faults only: a fault matrix should end with every task done after retries."""
DEFAULT_SLOW_S = 30.0
CLIENT_GONE = 499

MODEL_FAULT_MARKER = "+fault="
_FAULT_SPEC = re.compile(r"(?P<kind>[a-z0-9_]+)(?:@(?P<seconds>\d+(?:\.\d+)?))?(?::(?P<times>\d+))?")
_ERROR_STATUS = {"429": 429, "500": 500, "503": 503, "400": 400, "401": 401, "402": 402, "404": 404}
_ERROR_MESSAGES = {
    429: "Rate limit exceeded: too many requests (simulated)",
    500: "Internal server error (simulated)",
    503: "Service temporarily unavailable (simulated)",
    400: "Bad request: invalid parameters (simulated)",
    401: "No auth credentials found (simulated)",
    402: "Insufficient credits (simulated)",
    404: "No endpoints found for this model (simulated)",
}


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Fault:
    kind: str
    seconds: float | None = None
    times: int | None = None

    def applies_to_call(self, call_number: int) -> bool:
        return self.times is None or call_number <= self.times


def parse_fault(spec: str) -> Fault:
    """Reads `<kind>[@<seconds>][:<times>]`, as in the `X-Fake-Fault` header."""
    match = _FAULT_SPEC.fullmatch(spec.strip())
    if not match:
        raise FaultSpecError(f"cannot read the fault spec {spec!r}: write <kind>[@<seconds>][:<times>], e.g. 429@2:1")
    kind = match["kind"]
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"unknown fault kind {kind!r} in {spec!r}; known kinds: {', '.join(FAULT_KINDS)}")
    return Fault(
        kind=kind,
        seconds=float(match["seconds"]) if match["seconds"] else None,
        times=int(match["times"]) if match["times"] else None,
    )


def fault_in_model(model: str) -> Fault | None:
    """`fake/writer+fault=429@2:1` -> the 429 fault; a plain model name -> None."""
    _, marker, spec = model.partition(MODEL_FAULT_MARKER)
    return parse_fault(spec) if marker else None


def body_hash(body: dict[str, Any], replicate: str | None = None) -> str:
    """The fake's identity of a request. Replicate 1 (or no replicate header) is the body alone;
    any other replicate of the same body is another request, with its own text and its own
    line in `/stats`."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    if replicate not in (None, "1"):
        canonical += f"|replicate={replicate}"
    return hashlib.sha256(canonical.encode()).hexdigest()


def mixed_mode_fault(request_hash: str, rate: float, kinds: tuple[str, ...], times: int) -> Fault | None:
    """The same request body always lands on the same side of `rate`, with the same kind."""
    if rate <= 0 or not kinds:
        return None
    if int(request_hash[:8], 16) / 0x1_0000_0000 >= rate:
        return None
    return Fault(kind=kinds[int(request_hash[8:16], 16) % len(kinds)], times=times)


# ---- the simulated text ------------------------------------------------------------------

_LIST_ITEM = re.compile(r"^\s*(?:[-*]|#{2,})\s+(?P<item>.+?)\s*$")
_CAPITALISED_PHRASE = re.compile(r"\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+)+\b")
_SCALE = re.compile(r"(?P<low>\d{1,3})\s*(?:-|–|—|to)\s*(?P<high>\d{1,3})")
_OUT_OF = re.compile(r"(?:out of|/)\s*(?P<high>\d{1,3})\b")


def is_judge_prompt(prompt: str) -> bool:
    return "SCORE:" in prompt.upper()


def concepts_in(prompt: str, limit: int = 6) -> list[str]:
    """Names from list items and headings (the text before a ':' or a dash), else capitalised
    phrases such as "Default Mode Network"."""
    names = []
    for line in prompt.splitlines():
        match = _LIST_ITEM.match(line)
        if match:
            names.append(re.split(r":|\s[—–-]\s", match["item"], maxsplit=1)[0].strip(" *_`"))
    if not names:
        names = _CAPITALISED_PHRASE.findall(prompt)
    return [name for name in dict.fromkeys(names) if name and len(name) <= 80][:limit]


def score_scale(prompt: str) -> tuple[int, int]:
    """The scale named on a line that talks about scores, else 0..9."""
    for line in prompt.splitlines():
        lowered = line.lower()
        if not any(word in lowered for word in ("score", "scale", "rate", "rating")):
            continue
        match = _SCALE.search(line)
        if match and int(match["low"]) < int(match["high"]):
            return int(match["low"]), int(match["high"])
        match = _OUT_OF.search(lowered)
        if match and int(match["high"]) > 0:
            return 0, int(match["high"])
    return 0, 9


_OPENINGS = (
    "Taken together, {a} and {b} suggest a loop that keeps running when nobody is asking it anything.",
    "Start from {a}: it says something quiet about how {b} could work in practice.",
    "The interesting move is to let {a} feed {b}, and then let the result feed back into {a}.",
)
_MIDDLES = (
    "A generator proposes combinations; a critic, informed by {a}, keeps the few that survive.",
    "What {a} contributes is selection pressure; what {b} contributes is a reason to keep going.",
    "If {b} is cheap and judging is cheaper than creating, the economics favour running {a} in the background.",
    "The risk is noise: without {a}, most of what {b} produces would be forgotten, and rightly so.",
)
_CLOSINGS = (
    "This is a simulated paragraph; a real model would argue the point with evidence.",
    "None of this was written by a model: it exists so the pipeline can be exercised end to end.",
)


def generation_text(prompt: str, rng: random.Random) -> str:
    concepts = concepts_in(prompt) or ["the first idea in the prompt", "the second idea in the prompt"]
    paragraphs = [SIMULATED_BANNER, "Concepts considered: " + "; ".join(concepts) + "."]
    if len(concepts) == 1:
        concepts = concepts * 2
    for _ in range(rng.randint(3, 4)):
        a, b = rng.sample(concepts, 2)
        sentences = [rng.choice(_OPENINGS).format(a=a, b=b)]
        sentences += [middle.format(a=a, b=b) for middle in rng.sample(_MIDDLES, rng.randint(2, 3))]
        sentences.append(rng.choice(_CLOSINGS))
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def judge_text(prompt: str, rng: random.Random) -> str:
    low, high = score_scale(prompt)
    score = rng.randint(low, high)
    verdict = "holds together" if score > (low + high) / 2 else "stays vague"
    return "\n".join(
        [
            SIMULATED_BANNER,
            f"Simulated critique: the response {verdict}; it names its concepts but a real judge would weigh "
            "whether it actually connects them into a working loop.",
            f"SCORE: {score}",
        ]
    )


def simulated_text(prompt: str, seed_hash: str) -> str:
    rng = random.Random(int(seed_hash[:16], 16))
    return judge_text(prompt, rng) if is_judge_prompt(prompt) else generation_text(prompt, rng)


# ---- counters --------------------------------------------------------------------------


@dataclass
class Counters:
    """Touched only from the server's event loop; `/stats` reads them there too."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: dict[str, dict[str, int]] = field(default_factory=dict)
    in_flight: int = 0
    peak_in_flight: int = 0
    total_calls: int = 0
    last_request: dict[str, Any] | None = None

    def start(self, model: str, request_hash: str) -> int:
        """Returns which call of this request body this is (1 for the first)."""
        per_model = self._model(model)
        per_model["calls"] += 1
        now = time.time()
        per_model["first_started_at"] = per_model["first_started_at"] or now
        per_model["last_started_at"] = now
        per_model["started"].append(now)
        per_model["in_flight"] += 1
        per_model["peak_in_flight"] = max(per_model["peak_in_flight"], per_model["in_flight"])
        self.total_calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        per_request = self.requests.setdefault(request_hash, {"started": 0, "completed": 0})
        per_request["started"] += 1
        return per_request["started"]

    def finish(self, model: str, request_hash: str, status: int, fault: str | None, completed: bool) -> None:
        per_model = self._model(model)
        per_model["in_flight"] = max(0, per_model["in_flight"] - 1)
        per_model["finished"].append(time.time())
        per_model["by_status"][str(status)] = per_model["by_status"].get(str(status), 0) + 1
        if fault:
            per_model["faults"][fault] = per_model["faults"].get(fault, 0) + 1
        self.in_flight = max(0, self.in_flight - 1)
        if completed:
            self.requests.setdefault(request_hash, {"started": 0, "completed": 0})["completed"] += 1

    def _model(self, model: str) -> dict[str, Any]:
        return self.models.setdefault(
            model,
            {
                "in_flight": 0,
                "peak_in_flight": 0,
                "calls": 0,
                "by_status": {},
                "faults": {},
                "first_started_at": None,
                "last_started_at": None,
                "started": [],
                "finished": [],
            },
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "requests": self.requests,
            "total_calls": self.total_calls,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
        }


# ---- the app ---------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message}}, status_code=status, headers=headers)


def _header_seconds(request: Request, name: str) -> float | None:
    value = request.headers.get(name)
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def _pause(request: Request, seconds: float) -> bool:
    """Sleeps, but stops early when the client hangs up; True when it did."""
    if seconds <= 0:
        return False

    async def until_disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    watcher = asyncio.ensure_future(until_disconnected())
    done, pending = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return watcher in done


def _completion(
    body: dict[str, Any], model: str, text: str, finish_reason: str, request_hash: str, call_number: int
) -> dict[str, Any]:
    prompt_chars = sum(len(str(message.get("content", ""))) for message in body["messages"])
    prompt_tokens = math.ceil(prompt_chars / 4)
    completion_tokens = math.ceil(len(text) / 4)
    native = {"stop": "end_turn", "length": "max_tokens", "error": "error"}[finish_reason]
    return {
        "id": f"gen-fake-{request_hash[:16]}-{call_number}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": f"{model.split('+', 1)[0]}-sim",
        "provider": PROVIDER,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "native_finish_reason": native,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": completion_tokens // 8},
            "cost": round(prompt_tokens * 1e-6 + completion_tokens * 2e-6, 8),
        },
    }


class FakeLLM:
    def __init__(self, latency_s: float, fault_rate: float, fault_kinds: list[str] | None, fault_times: int) -> None:
        kinds = tuple(fault_kinds) if fault_kinds else MIXED_MODE_KINDS
        unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
        if unknown:
            raise FaultSpecError(f"unknown fault kinds {unknown}; known kinds: {', '.join(FAULT_KINDS)}")
        if not 0.0 <= fault_rate <= 1.0:
            raise FaultSpecError(f"fault_rate must be between 0 and 1, got {fault_rate}")
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.fault_kinds = kinds
        self.fault_times = fault_times
        self.counters = Counters()

    async def chat_completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not JSON")
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("model"), str)
            or not isinstance(body.get("messages"), list)
        ):
            return _error(400, "request needs a string 'model' and a list of 'messages'")
        self.counters.last_request = self._describe(request, body)
        model = body["model"]
        request_hash = body_hash(body, request.headers.get(REPLICATE_HEADER, "").strip() or None)
        call_number = self.counters.start(model, request_hash)
        status, fault_kind, completed = 500, None, False
        try:
            try:
                fault = self._fault(request, model, request_hash)
            except FaultSpecError as error:
                status = 400
                return _error(400, str(error))
            if fault and not fault.applies_to_call(call_number):
                fault = None
            fault_kind = fault.kind if fault else None
            latency = _header_seconds(request, "x-fake-latency")
            if await _pause(request, self.latency_s if latency is None else latency):
                status = CLIENT_GONE
                return Response(status_code=CLIENT_GONE)
            response, completed = await self._answer(request, body, fault, request_hash, call_number)
            status = response.status_code
            return response
        finally:
            self.counters.finish(model, request_hash, status, fault_kind, completed)

    def _fault(self, request: Request, model: str, request_hash: str) -> Fault | None:
        header = request.headers.get("x-fake-fault")
        if header:
            return parse_fault(header)
        return fault_in_model(model) or mixed_mode_fault(
            request_hash, self.fault_rate, self.fault_kinds, self.fault_times
        )

    async def _answer(
        self, request: Request, body: dict[str, Any], fault: Fault | None, request_hash: str, call_number: int
    ) -> tuple[Response, bool]:
        kind = fault.kind if fault else None
        if fault is not None and fault.kind in _ERROR_STATUS:
            status = _ERROR_STATUS[fault.kind]
            retry_after = fault.seconds if fault.seconds is not None else (1.0 if status == 429 else None)
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
            return _error(status, _ERROR_MESSAGES[status], headers), False
        if fault is not None and fault.kind == "slow":
            seconds = fault.seconds or _header_seconds(request, "x-fake-slow") or DEFAULT_SLOW_S
            if await _pause(request, seconds):
                return Response(status_code=CLIENT_GONE), False
        if kind == "html":
            return HTMLResponse("<html><body><h1>502 Bad Gateway</h1><p>simulated</p></body></html>"), False
        if kind == "error200":
            error = {"code": 502, "message": "Upstream provider error (simulated)", "metadata": {"raw": "overloaded"}}
            return JSONResponse({"error": error}), False
        model = body["model"]
        prompt = "\n".join(str(message.get("content", "")) for message in body["messages"])
        text = simulated_text(prompt, request_hash)
        finish_reason = "stop"
        max_tokens = body.get("max_tokens")
        if kind == "length":
            text, finish_reason = text[: max(1, len(text) // 2)], "length"
        elif isinstance(max_tokens, int) and len(text) > max_tokens * 4:
            text, finish_reason = text[: max_tokens * 4], "length"
        if kind == "empty":
            text = ""
        if kind == "finish_error":
            finish_reason = "error"
        payload = _completion(body, model, text, finish_reason, request_hash, call_number)
        return JSONResponse(payload), bool(text) and finish_reason != "error"

    @staticmethod
    def _describe(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else None
        return {
            "body": body,
            "headers": {name: value for name, value in request.headers.items() if name != "authorization"},
            "bearer_sha256": hashlib.sha256(token.encode()).hexdigest()[:16] if token else None,
        }

    async def stats(self, request: Request) -> JSONResponse:
        return JSONResponse(self.counters.snapshot())

    async def reset(self, request: Request) -> JSONResponse:
        self.counters = Counters()
        return JSONResponse({"reset": True})

    async def last_request(self, request: Request) -> JSONResponse:
        return JSONResponse(self.counters.last_request)

    async def health(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake/any-model", "object": "model"}]})


def create_app(
    latency_s: float = 0.0,
    *,
    fault_rate: float = 0.0,
    fault_kinds: list[str] | None = None,
    fault_times: int = 1,
) -> Starlette:
    fake = FakeLLM(latency_s, fault_rate, fault_kinds, fault_times)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", fake.chat_completions, methods=["POST"]),
            Route("/chat/completions", fake.chat_completions, methods=["POST"]),
            Route("/v1/models", fake.models, methods=["GET"]),
            Route("/stats", fake.stats, methods=["GET"]),
            Route("/stats/reset", fake.reset, methods=["POST"]),
            Route("/last_request", fake.last_request, methods=["GET"]),
            Route("/health", fake.health, methods=["GET"]),
        ]
    )


# ---- running it ------------------------------------------------------------------------


class FakeLLMServer:
    """The fake in a background thread with its own event loop, so a test's loop stays free."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        latency_s: float = 0.0,
        fault_rate: float = 0.0,
        fault_kinds: list[str] | None = None,
        fault_times: int = 1,
    ) -> None:
        self.host = host
        self.port = port
        self.app = create_app(latency_s, fault_rate=fault_rate, fault_kinds=fault_kinds, fault_times=fault_times)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self, timeout_s: float = 10.0) -> FakeLLMServer:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say they are TCP,
        # and without it every keep-alive request waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-llm", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake LLM server did not start on {self.root_url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server and self._thread:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.root_url}/stats").json()

    def reset(self) -> None:
        httpx.post(f"{self.root_url}/stats/reset").raise_for_status()

    def last_request(self) -> dict[str, Any] | None:
        return httpx.get(f"{self.root_url}/last_request").json()


def fake_llm(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8999,
    latency: Annotated[float, typer.Option(help="Seconds each call takes.")] = 0.0,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    fault_rate: Annotated[float, typer.Option(help="Fraction of request bodies that get a fault (0..1).")] = 0.0,
    fault_kinds: Annotated[
        str, typer.Option(help=f"Comma-separated kinds for --fault-rate, from: {', '.join(FAULT_KINDS)}.")
    ] = ",".join(MIXED_MODE_KINDS),
    fault_times: Annotated[int, typer.Option(help="How many calls of a faulty request body fail.")] = 1,
) -> None:
    """Serve a fake OpenAI-compatible LLM: simulated answers, no cost, faults on request."""
    kinds = [kind.strip() for kind in fault_kinds.split(",") if kind.strip()]
    try:
        app = create_app(latency, fault_rate=fault_rate, fault_kinds=kinds, fault_times=fault_times)
    except FaultSpecError as error:
        raise typer.BadParameter(str(error)) from None
    console = Console()
    console.print(f"[bold]fake LLM[/bold] at http://{host}:{port}/v1 — point DayDream at it with")
    console.print(f"  export DAYDREAM_LLM_BASE_URL=http://{host}:{port}/v1")
    console.print(f"  stats: http://{host}:{port}/stats   faults: model name '<model>+fault=429@2:1'")
    uvicorn.run(app, host=host, port=port, log_level="warning")
