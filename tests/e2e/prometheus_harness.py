"""A real Prometheus for tests: scrape a running stack, then ask it what the dashboards ask.

Needs the `prometheus` binary (Debian: `apt-get install prometheus`). Each instance runs on a
free loopback port with its own config and storage in a temp directory.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from daydream.nats_process import free_port, stop_process

DASHBOARD_WINDOW = "1m"
"""What Grafana's interval variables ($__rate_interval, $__interval, $__range) become."""

_GRAFANA_INTERVAL = re.compile(r"\$\{?__(rate_interval|interval|range)\}?")
_TEMPLATE_VARIABLE = re.compile(r"\$\{\w+(?::\w+)?\}|\$\w+")


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise RuntimeError("prometheus not found: install it (Debian: apt-get install prometheus)")
    return found


class Prometheus:
    """`with Prometheus(["127.0.0.1:8001", ...], tmp_path) as prom: prom.wait_for_targets_up()`"""

    def __init__(self, targets: list[str], workdir: Path, scrape_interval_s: float = 1.0) -> None:
        self.targets = list(targets)
        self.workdir = workdir
        self.scrape_interval_s = scrape_interval_s
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": "daydream", "static_configs": [{"targets": self.targets}]}],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start(self, timeout_s: float = 30.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={self._write_config()}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self._wait(lambda: httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200, timeout_s, "ready")
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {self.process.returncode}; see {self.workdir}/prometheus.log")
            try:
                if condition():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not {what} within {timeout_s}s; see {self.workdir}/prometheus.log")

    def target_health(self) -> dict[str, str]:
        """scrape URL -> "up" | "down" | "unknown", with the last scrape error when down."""
        targets = self._api("targets")["activeTargets"]
        return {
            target["scrapeUrl"]: target["health"] + (f": {target['lastError']}" if target.get("lastError") else "")
            for target in targets
        }

    def wait_for_targets_up(self, timeout_s: float = 30.0) -> None:
        def all_up() -> bool:
            health = self.target_health()
            return len(health) == len(self.targets) and all(state == "up" for state in health.values())

        try:
            self._wait(all_up, timeout_s, "scraping every target")
        except TimeoutError as error:
            raise TimeoutError(f"{error}: {self.target_health()}") from None

    def series(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of each series `expr` evaluates to now, finite values only: a 0/0
        ratio or a quantile of no observations is NaN, which Grafana draws as nothing."""
        data = self._api("query", {"query": expr})
        samples: list[tuple[dict[str, str], tuple[float, str]]]
        if data["resultType"] == "scalar":
            samples = [({}, data["result"])]
        else:
            samples = [(series["metric"], series["value"]) for series in data["result"]]
        values = [(labels, float(value)) for labels, (_, value) in samples]
        return [(labels, value) for labels, value in values if math.isfinite(value)]

    def _api(self, endpoint: str, params: dict | None = None) -> dict:
        response = httpx.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"prometheus rejected {params or endpoint}: {body.get('error', response.text)}")
        return body["data"]


def concrete_query(expr: str) -> str:
    """Grafana's variables replaced by what a test can run: a fixed window, and `.*` for every
    template variable (dashboards use them only in regex matchers)."""
    return _TEMPLATE_VARIABLE.sub(".*", _GRAFANA_INTERVAL.sub(DASHBOARD_WINDOW, expr))


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, runnable PromQL) for every target of every panel, rows included."""
    dashboard = json.loads(Path(path).read_text())
    queries = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append((panel.get("title", ""), concrete_query(target["expr"])))
    return queries


def _panels(panels: list[dict]) -> list[dict]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat += _panels(panel.get("panels", []))
    return flat
