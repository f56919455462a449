"""One trace per experiment across every process: the command line's publish, the combiner, the
generator's and the evaluator's LLM calls, the parser and the tracker, exported over OTLP/HTTP
(the services' real exporter) to a receiver in the test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from daydream.nats_process import free_port
from services.tracker.db import engine_for
from services.tracker.recorder import Tracker
from tests.e2e.chaos import wait_until
from tests.e2e.conftest import FAST_RETRIES, nats_and_fake_llm

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
EXPERIMENT = "traced"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: bytes
    attributes: dict[str, str]


class OtlpReceiver:
    """Just enough of an OpenTelemetry collector: accepts OTLP/HTTP protobuf trace exports."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource in request.resource_spans:
                    service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
                    for scope in resource.scope_spans:
                        receiver.spans += [
                            ReceivedSpan(service, span.name, span.trace_id,
                                         {a.key: str(a.value.string_value or a.value.int_value) for a in span.attributes})
                            for span in scope.spans
                        ]
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> OtlpReceiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def test_one_trace_runs_from_publish_through_every_service(data: Path, receiver: OtlpReceiver) -> None:
    tracing = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    with nats_and_fake_llm(data, latency_s=0.0) as stack:
        stack.extra_env.update({**FAST_RETRIES, **tracing})
        stack.start_services()
        published = subprocess.run(
            [sys.executable, "-m", "daydream", "publish", "--data", str(data), "--experiment-id", EXPERIMENT],
            env={**os.environ, **stack.client_env(), **tracing}, capture_output=True, text=True, timeout=120,
        )
        assert published.returncode == 0, published.stdout + published.stderr
        tracker = Tracker(data, engine_for(data))
        wait_until(lambda: tracker.progress(EXPERIMENT).finished, timeout_s=90, what="the experiment to finish")

        def root() -> ReceivedSpan | None:
            return next((span for span in receiver.spans if span.name == "dd.experiment.requested publish"), None)

        def services_in_its_trace() -> set[str]:
            start = root()
            return {span.service for span in receiver.spans if start and span.trace_id == start.trace_id}

        everyone = {"daydream", *(f"daydream-{name}" for name in ("combiner", "generator", "evaluator", "parser", "tracker"))}
        wait_until(lambda: services_in_its_trace() >= everyone, timeout_s=30, what="every service's spans in one trace")

    trace = [span for span in receiver.spans if span.trace_id == root().trace_id]
    chats = {(span.service, span.attributes["gen_ai.operation.name"]) for span in trace if span.name.startswith("chat ")}
    assert chats == {("daydream-generator", "chat"), ("daydream-evaluator", "chat")}
    recorded = {span.name for span in trace if span.service == "daydream-tracker"}
    assert "dd.evaluation.scored process" in recorded
