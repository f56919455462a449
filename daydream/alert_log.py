"""The compose stack's default alert receiver: Grafana posts each notification here as a webhook
and it becomes one log line, so an alert is seen (`docker compose logs alert-log`) with no mail
server or chat account set up."""

from __future__ import annotations

import argparse
import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("daydream.alerts")


def summarize(payload: dict) -> list[str]:
    """One line per alert in a Grafana webhook body: state, name, summary."""
    return [
        f"{alert.get('status', payload.get('status', '?'))} {alert.get('labels', {}).get('alertname', '?')}: "
        f"{alert.get('annotations', {}).get('summary', '')}".rstrip(": ")
        for alert in payload.get("alerts") or [{}]
    ]


class AlertHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            lines = summarize(json.loads(body or b"{}"))
        except (ValueError, AttributeError):
            self.send_response(400)
            self.end_headers()
            return
        for line in lines:
            log.warning("ALERT %s", line)
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Requests themselves are not news; the alerts are."""


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), AlertHandler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9094)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    make_server(args.host, args.port).serve_forever()


if __name__ == "__main__":
    main()
