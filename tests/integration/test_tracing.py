"""Traces follow a task from the command line's publish, through a real nats-server, into the LLM
call it caused: one trace, GenAI attribute names, no secret in any span."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import nats
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from daydream.fake_llm import FakeLLMServer
from shared import telemetry
from shared.events import TASK_CREATED
from shared.llm import LLMClient
from shared.service import decode, make_broker, publish_to_jetstream, subscribe
from shared.settings import Settings
from shared.topology import TASKS_STREAM, ConsumerSpec, consumer_config, ensure_streams
from tests.fakes import GENERATION_MODELS, FakeExperiment

pytestmark = pytest.mark.integration

API_KEY = "sk-or-v1-tracing-test-secret"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use(provider)
    yield exporter
    telemetry.use(None)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


async def test_a_trace_links_the_publish_to_the_llm_call_it_caused(
    nats_url: str, spans: InMemorySpanExporter, fake_llm: FakeLLMServer,
) -> None:
    settings = Settings(_env_file=None, nats_url=nats_url)
    spec = ConsumerSpec(stream=TASKS_STREAM, durable="trace-test", subject="dd.task.created.generation.>",
                        max_ack_pending=1, max_deliver=3)
    task = FakeExperiment().generation_task("c1-c2", GENERATION_MODELS[0])
    called = asyncio.Event()

    async with LLMClient(fake_llm.base_url, API_KEY, 10.0) as llm:
        broker = make_broker(settings)

        async def handle(msg) -> None:
            got = await decode(broker, msg, TASK_CREATED, stage="generation")
            await llm.complete(got.model, got.prompt, got.parameters, attempt=1, request_hash="trace-test")
            called.set()

        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await ensure_streams(js, settings)
        await js.add_consumer(spec.stream, consumer_config(spec, settings))
        subscribe(broker, spec, handle)
        await broker.start()
        try:
            await publish_to_jetstream(js, task)
            await asyncio.wait_for(called.wait(), 20)
        finally:
            await broker.stop()
            await nc.close()

    finished = spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}
    published = next(span for span in finished if span.name == f"{task.subject_name()} publish")
    chat = next(span for span in finished if span.name == f"chat {task.model.model}")
    http = next(span for span in finished if span.attributes.get("http.method") == "POST")

    assert chat.context.trace_id == published.context.trace_id == http.context.trace_id
    assert http.parent.span_id == chat.context.span_id
    assert any("process" in name for name in ancestors(chat, by_id)), "the LLM call runs inside the consumer's span"
    assert ancestors(chat, by_id)[-1] == published.name, "and that span descends from the publish"
    assert published.attributes["messaging.destination.name"] == task.subject_name()
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == task.model.model
    assert chat.attributes["gen_ai.request.temperature"] == 0.7
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    for span in finished:
        values = " ".join(str(value) for value in span.attributes.values())
        assert API_KEY not in values, f"span {span.name} carries the API key"


async def test_with_tracing_off_nothing_is_installed(nats_url: str) -> None:
    assert not telemetry.on()
    broker = make_broker(Settings(_env_file=None, nats_url=nats_url))
    assert not [m for m in broker.middlewares if "Telemetry" in type(m).__name__]
