"""Every Grafana panel shows data: the example runs on the embedded stack while a real
Prometheus scrapes every service, then each panel's query is asked of Prometheus."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from daydream.publish_cmd import prepare_experiment, publish_experiment
from daydream.stack import EmbeddedStack
from services.tracker.db import engine_for
from services.tracker.recorder import Tracker
from shared.settings import Settings
from tests.conftest import EXAMPLE_RAW
from tests.e2e.conftest import FAST_RETRIES
from tests.e2e.prometheus_harness import Prometheus, dashboard_queries

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"


def test_every_dashboard_panel_returns_data_after_an_example_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(EXAMPLE_RAW, data / "1_raw")
    stack = EmbeddedStack(data, llm_base_url=None, fake_llm_latency=0.02, extra_env=FAST_RETRIES)
    stack.start_nats()
    try:
        stack.start_fake_llm()
        stack.start_services()
        targets = list(stack.state().metrics_targets().values())
        with Prometheus(targets, tmp_path / "prometheus") as prometheus:
            prometheus.wait_for_targets_up()
            settings = Settings(data=data, nats_url=stack.nats_url)
            spec = prepare_experiment(data, "monitored", None, None, None, False)
            asyncio.run(publish_experiment(settings, spec))
            tracker = Tracker(data, engine_for(data))
            deadline = time.monotonic() + 90
            while not tracker.progress("monitored").finished:
                assert time.monotonic() < deadline, "the example did not finish"
                time.sleep(0.3)
            time.sleep(8)  # two tracker progress refreshes, several scrapes, consumer polls

            queries = [q for board in sorted(DASHBOARDS.glob("*.json")) for q in dashboard_queries(board)]
            empty = [(title, expr) for title, expr in queries if not prometheus.query(expr)]
            print(f"{len(queries) - len(empty)} of {len(queries)} panel queries returned data")
            assert queries
            assert empty == []
    finally:
        stack.stop()
