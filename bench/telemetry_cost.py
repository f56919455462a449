"""What tracing costs one LLM call, in process: `LLMClient.complete` against an in-memory
connection pool (no network, no server), CPU microseconds per call in three interleaved modes:

    direct   the call without the telemetry check (`_complete`, the code before tracing existed)
    off      `complete` with tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT): one `telemetry.on()` check
    on       `complete` with tracing on: a GenAI span and an httpx span per call, batch-exported
             to an in-memory exporter

    uv run python bench/telemetry_cost.py [--calls 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpcore
import httpx
from common import machine, report
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import telemetry
from shared.events import CallParameters, ModelSpec
from shared.llm import LLMClient

MODEL = ModelSpec(id="bench", model="bench/model", provider="bench", tier="bench")
ANSWER = json.dumps({
    "id": "gen-1", "model": "bench/model", "provider": "Bench",
    "choices": [{"message": {"content": "an answer"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 30, "completion_tokens_details": {"reasoning_tokens": 10}},
}).encode()


class AnsweringPool:
    """Stands in for httpcore's connection pool under a real `AsyncHTTPTransport`, so the httpx
    instrumentation (which wraps that transport) runs as it does in production."""

    async def handle_async_request(self, _request: httpcore.Request) -> httpcore.Response:
        return httpcore.Response(200, headers=[(b"content-type", b"application/json")], content=ANSWER)

    async def aclose(self) -> None:
        pass


async def cpu_per_call_us(client: LLMClient, mode: str, calls: int) -> float:
    call = client._complete if mode == "direct" else None
    start = time.process_time()
    for index in range(calls):
        if call is not None:
            await call(MODEL, "prompt", CallParameters(), 1, f"h{index}", 1)
        else:
            await client.complete(MODEL, "prompt", CallParameters(), attempt=1, request_hash=f"h{index}")
    return (time.process_time() - start) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    figures: dict[str, list[float]] = {"direct": [], "off": [], "on": []}
    async with LLMClient("http://llm.invalid/v1", "sk-bench", 10.0) as client:
        transport = httpx.AsyncHTTPTransport()
        transport._pool = AnsweringPool()  # type: ignore[assignment]
        client._http = httpx.AsyncClient(transport=transport)
        await cpu_per_call_us(client, "direct", calls // 10)  # warm up
        for _ in range(rounds):
            for mode in ("direct", "off", "on"):
                telemetry.use(provider if mode == "on" else None)
                figures[mode].append(await cpu_per_call_us(client, mode, calls))
        telemetry.use(None)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.calls, args.rounds))
    medians = {mode: statistics.median(values) for mode, values in figures.items()}
    result = {"machine": machine(), "calls_per_round": args.calls, "rounds": args.rounds,
              "cpu_us_per_call": figures, "median_cpu_us_per_call": medians}
    report("telemetry_cost", result, [
        (f"{mode}: CPU µs per call (median of {args.rounds})", f"{median:.1f}") for mode, median in medians.items()
    ] + [("off - direct (µs)", f"{medians['off'] - medians['direct']:+.1f}"),
         ("on - off (µs)", f"{medians['on'] - medians['off']:+.1f}")])


if __name__ == "__main__":
    main()
