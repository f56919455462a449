"""OpenTelemetry traces across publish -> generate -> judge -> score -> record.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set: then every broker gets
FastStream's NATS telemetry middleware (which carries the W3C `traceparent` in message headers),
httpx calls get client spans, and each LLM call a span with the GenAI semantic attributes
(`gen_ai.*`). Off, nothing is installed and an LLM call pays one `is None` check. The exporter,
its endpoint, headers and sampling are the standard `OTEL_*` variables, read by the SDK, which is
imported only when tracing is on (it adds 0.1-0.3 s to a process's start, measured here).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from shared.events import CallParameters, CallRecord

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_provider: TracerProvider | None = None
_tracer: Tracer | None = None
"""Set once per process by `start` (or `use` in tests); None means tracing is off."""


def on() -> bool:
    """Whether this process traces: the one check a hot path makes."""
    return _tracer is not None


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return any(environ.get(name) for name in ENDPOINT_VARIABLES)


def service_name() -> str:
    """`OTEL_SERVICE_NAME`, else the service a `python -m services.<name>` process runs."""
    if os.environ.get("OTEL_SERVICE_NAME"):
        return os.environ["OTEL_SERVICE_NAME"]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    parts = (spec.name if spec else "").split(".")
    return f"daydream-{parts[1]}" if len(parts) > 1 and parts[0] == "services" else "daydream"


def start() -> TracerProvider | None:
    """The process's tracer provider, exporting over OTLP/HTTP; None (and nothing imported or
    installed) when no endpoint is configured. Idempotent: every broker of a process shares it."""
    if _provider is not None or not enabled():
        return _provider
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name()}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)  # the SDK flushes it at exit
    return use(provider)


def use(provider: TracerProvider | None) -> TracerProvider | None:
    """Trace into `provider` from now on, or stop tracing with None (tests pass a provider with an
    in-memory exporter)."""
    global _provider, _tracer
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
    if provider is not None:
        instrumentor.instrument(tracer_provider=provider)
    _provider, _tracer = provider, provider.get_tracer("daydream") if provider else None
    return provider


def broker_middlewares() -> list:
    """FastStream's NATS telemetry middleware when tracing is on, else nothing."""
    provider = start()
    if provider is None:
        return []
    from faststream.nats.opentelemetry import NatsTelemetryMiddleware

    return [NatsTelemetryMiddleware(tracer_provider=provider, include_messages_counters=False)]


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to message headers (for publishes made without a broker)."""
    if _tracer is not None:
        from opentelemetry.propagate import inject as propagate

        propagate(headers)
    return headers


def publish_span(subject: str):
    """The span of a publish made without a broker (the CLI's): the root of an experiment's trace.
    It starts tracing in a process that has no broker to do so."""
    if start() is None or _tracer is None:
        return nullcontext()
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(f"{subject} publish", kind=SpanKind.PRODUCER, attributes={
        "messaging.system": "nats", "messaging.operation": "publish", "messaging.destination.name": subject,
    })


def consumed(subject: str, headers: Mapping[str, str] | None) -> None:
    """A span for a message read without a FastStream subscriber (the tracker's batches), a child
    of the span that published it, so the experiment's trace reaches the tracker."""
    if _tracer is None:
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(f"{subject} process", context=extract(dict(headers or {})),
                                       kind=SpanKind.CONSUMER, attributes={
                                           "messaging.system": "nats", "messaging.operation": "process",
                                           "messaging.destination.name": subject}):
        pass


async def traced_llm_call(
    call: Callable[[], Awaitable[CallRecord]],
    *,
    model: str,
    provider_name: str,
    server: str,
    parameters: CallParameters,
) -> CallRecord:
    """Run one chat completion inside a `chat <model>` span named and attributed as the GenAI
    semantic conventions say, so trace viewers show model, tokens and finish reason."""
    from opentelemetry.trace import SpanKind, StatusCode

    assert _tracer is not None, "traced_llm_call is only called when telemetry.on()"
    attributes: dict[str, str | int | float] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name,
        "gen_ai.request.model": model,
        "server.address": server,
    }
    for name, value in (("max_tokens", parameters.max_tokens), ("temperature", parameters.temperature),
                        ("seed", parameters.seed)):
        if value is not None:
            attributes[f"gen_ai.request.{name}"] = value
    with _tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes,
                                       record_exception=False, set_status_on_exception=False) as span:
        try:
            record = await call()
        except Exception as error:
            kind = getattr(error, "kind", None)
            span.set_attribute("error.type", str(kind.value) if kind is not None else type(error).__name__)
            span.set_status(StatusCode.ERROR)
            raise
        span.set_attributes({
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
            "gen_ai.response.finish_reasons": [record.finish_reason or ""],
            **({"gen_ai.response.model": record.resolved_model} if record.resolved_model else {}),
            **({"gen_ai.response.id": record.response_id} if record.response_id else {}),
        })
        return record
