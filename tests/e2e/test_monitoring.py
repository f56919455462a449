"""Every Grafana panel shows data: the example runs on the embedded stack, set up as compose sets
up NATS (deploy/nats/nats.conf, each service connecting as its own user), while a real Prometheus
scrapes every service; then each panel's query is asked of Prometheus."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from daydream.publish_cmd import prepare_experiment, publish_experiment
from daydream.stack import SERVICES, EmbeddedStack
from services.tracker.db import engine_for
from services.tracker.recorder import Tracker
from shared.settings import Settings
from shared.topology import consumer_specs
from tests.conftest import EXAMPLE_RAW, REPO
from tests.e2e.conftest import FAST_RETRIES
from tests.e2e.prometheus_harness import Prometheus, dashboard_queries

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
NATS_CONF = REPO / "deploy" / "nats" / "nats.conf"


class ComposeNatsStack(EmbeddedStack):
    """The embedded stack on the compose NATS config: a service that lacks a permission it needs
    fails here, as it would under compose."""

    def __init__(self, data: Path, **options) -> None:
        super().__init__(data, **options)
        self.nats.config_file = NATS_CONF

    def url_of(self, user: str) -> str:
        return f"nats://{user}:pw-{user}@127.0.0.1:{self.nats.port}"

    def service_env(self, name: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
        return {**super().service_env(name, overrides), "DAYDREAM_NATS_URL": self.url_of(name)}

    def permission_violations(self) -> list[str]:
        return [line for log in self.logs.glob("*.log") for line in log.read_text(errors="replace").splitlines()
                if "permissions violation" in line.lower()]


def test_every_dashboard_panel_returns_data_after_an_example_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for user in ("daydream", *SERVICES):
        monkeypatch.setenv(f"NATS_{user.upper()}_PASSWORD", f"pw-{user}")
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    stack = ComposeNatsStack(data, llm_base_url=None, fake_llm_latency=0.02, extra_env=FAST_RETRIES)
    stack.start_nats()
    try:
        stack.start_fake_llm()
        stack.start_services()
        targets = list(stack.state().metrics_targets().values())
        with Prometheus(targets, tmp_path / "prometheus") as prometheus:
            prometheus.wait_for_targets_up()
            settings = Settings(data=data, nats_url=stack.url_of("daydream"))
            spec = prepare_experiment(data, "monitored", None, None, None, False)
            asyncio.run(publish_experiment(settings, spec))
            tracker = Tracker(data, engine_for(data))
            deadline = time.monotonic() + 90
            while not tracker.progress("monitored").finished:
                assert time.monotonic() < deadline, f"the example did not finish: {stack.permission_violations()[:5]}"
                time.sleep(0.3)
            time.sleep(8)  # two tracker progress refreshes, several scrapes, consumer polls

            caps = {labels["consumer"]: value
                    for labels, value in prometheus.series("max by (consumer) (daydream_consumer_max_ack_pending)")}
            assert caps == {consumer.durable: consumer.max_ack_pending for consumer in consumer_specs(settings, spec.tiers)}

            queries = [(f"{board.name}: {title}", expr) for board in sorted(DASHBOARDS.glob("*.json"))
                       for title, expr in dashboard_queries(board)]
            empty = [(panel, expr) for panel, expr in queries if not prometheus.series(expr)]
            panels = {panel for panel, _ in queries}
            print(f"{len(panels - {panel for panel, _ in empty})} of {len(panels)} panels "
                  f"({len(queries) - len(empty)} of {len(queries)} queries) returned finite data")
            assert queries
            assert empty == []
        assert stack.permission_violations() == []
    finally:
        stack.stop()
