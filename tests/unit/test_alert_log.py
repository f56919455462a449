"""The compose stack's default alert receiver turns Grafana's webhook into a readable log line."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request

import pytest

from daydream.alert_log import make_server
from daydream.nats_process import free_port

GRAFANA_BODY = {
    "receiver": "daydream-webhook",
    "status": "firing",
    "alerts": [{
        "status": "firing",
        "labels": {"alertname": "Task failure rate above 5 %", "severity": "warning"},
        "annotations": {"summary": "More than 5 % of DayDream tasks failed in the last 10 minutes (7.5%)."},
    }],
}


@pytest.fixture
def receiver():
    server = make_server("127.0.0.1", free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_firing_alert_becomes_one_log_line(receiver: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="daydream.alerts"):
        assert post(receiver + "/", json.dumps(GRAFANA_BODY).encode()) == 200
    assert caplog.messages == [
        "ALERT firing Task failure rate above 5 %: More than 5 % of DayDream tasks failed in the last 10 minutes (7.5%)."
    ]


def test_a_body_that_is_not_json_is_refused(receiver: str) -> None:
    assert post(receiver + "/", b"not json") == 400


def test_health_answers(receiver: str) -> None:
    with urllib.request.urlopen(receiver + "/health", timeout=5) as response:
        assert response.status == 200
