"""The provisioned dashboards and alert only ask for series something actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from faststream.prometheus.container import MetricsContainer
from prometheus_client import CollectorRegistry

from shared.metrics import DAYDREAM_METRICS

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = sorted((DEPLOY / "dashboards").glob("*.json"))
ALERT_RULES = sorted((DEPLOY / "provisioning" / "alerting").glob("*.yaml"))

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def exposed_names(collectors) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for collector in collectors
        for family in collector.describe()
        for suffix in suffixes[family.type]
    }


def faststream_names() -> set[str]:
    container = MetricsContainer(CollectorRegistry(), custom_label_names=[])
    return exposed_names(getattr(container, slot) for slot in MetricsContainer.__slots__ if not slot.startswith("_"))


KNOWN_SERIES = exposed_names(DAYDREAM_METRICS) | faststream_names()


def metric_names(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that name series (not functions, labels or keywords)."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", bare)
    return {
        name
        for name, call in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(?)", bare)
        if not call and name.lower() not in PROMQL_WORDS
    }


def panels(dashboard: dict) -> list[dict]:
    flat = []
    for panel in dashboard["panels"]:
        flat += [panel, *panel.get("panels", [])]
    return flat


def data_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in panels(dashboard) if panel["type"] != "row"]


def alert_rules() -> list[dict]:
    return [rule for path in ALERT_RULES for group in yaml.safe_load(path.read_text()).get("groups", [])
            for rule in group["rules"]]


def alert_exprs() -> list[str]:
    return [query["model"]["expr"] for rule in alert_rules() for query in rule["data"] if "expr" in query["model"]]


def provisioned_datasource_uids() -> set[str]:
    path = DEPLOY / "provisioning" / "datasources" / "prometheus.yaml"
    return {source["uid"] for source in yaml.safe_load(path.read_text())["datasources"]}


def test_metric_name_parsing_finds_series_only() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(a_bucket{stage="x"}[5m]))) '
            '/ on (model) group_left b_total or vector(0)')
    assert metric_names(expr) == {"a_bucket", "b_total"}


def test_there_is_a_dashboard_and_an_alert_rule() -> None:
    assert DASHBOARDS and alert_exprs()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_panel_queries_the_provisioned_prometheus(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    uids = provisioned_datasource_uids()
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    for panel in data_panels(dashboard):
        assert panel["datasource"]["uid"] in uids, f"{path.name}: panel {panel['title']!r} has no provisioned datasource"
        assert panel.get("targets"), f"{path.name}: panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr"), f"{path.name}: panel {panel['title']!r} target {target.get('refId')} has no expr"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_uses_only_series_that_are_exported(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    unknown = {
        (panel["title"], name)
        for panel in data_panels(dashboard)
        for target in panel["targets"]
        for name in metric_names(target["expr"])
        if name not in KNOWN_SERIES
    }
    assert not unknown, (
        f"{path.name}: series defined neither in shared/metrics.py nor by FastStream: {sorted(unknown)} "
        "(the NATS exporter's are not on dashboards: the e2e test could not prove them)"
    )


def dashboard_exprs() -> set[str]:
    return {
        target["expr"]
        for path in DASHBOARDS
        for panel in data_panels(json.loads(path.read_text()))
        for target in panel["targets"]
    }


def test_every_daydream_series_is_on_a_dashboard() -> None:
    """Each series shared/metrics.py exports answers a question the dashboards must show
    (throughput, queue depth, in flight vs cap, latency, errors and 429s, cost, parse failures,
    progress); one that no panel plots is one nobody watches."""
    plotted = {name for expr in dashboard_exprs() for name in metric_names(expr)}
    unplotted = [next(iter(metric.describe())).name for metric in DAYDREAM_METRICS if not exposed_names([metric]) & plotted]
    assert unplotted == []


def test_alert_uses_exported_series_and_is_on_a_dashboard() -> None:
    plotted = dashboard_exprs()
    for expr in alert_exprs():
        assert metric_names(expr) <= KNOWN_SERIES, f"alert uses unknown series: {metric_names(expr) - KNOWN_SERIES}"
        assert expr in plotted, "the alert's expression should be plotted, so a firing alert can be read"


def test_an_alert_fires_above_five_percent_task_failures() -> None:
    failure_rules = [rule for rule in alert_rules()
                     if any("daydream_tasks_failed_total" in query["model"].get("expr", "") for query in rule["data"])]
    conditions = [query["model"] for rule in failure_rules for query in rule["data"] if query["refId"] == rule["condition"]]
    evaluators = [c["evaluator"] for model in conditions if model.get("type") == "threshold" for c in model["conditions"]]
    assert {"type": "gt", "params": [0.05]} in evaluators


def test_the_alert_is_sent_to_a_provisioned_contact_point() -> None:
    """An alert with no contact point only shows in Grafana's UI, where nobody is looking."""
    provisioned = [yaml.safe_load(path.read_text()) for path in ALERT_RULES]
    receivers = {point["name"]: point["receivers"] for doc in provisioned for point in doc.get("contactPoints", [])}
    policies = [policy for doc in provisioned for policy in doc.get("policies", [])]
    assert policies and all(policy["receiver"] in receivers for policy in policies)
    for receiver in receivers[policies[0]["receiver"]]:
        assert receiver["type"] == "webhook" and receiver["settings"]["url"].startswith("$")


def test_alert_rules_point_at_the_provisioned_datasource() -> None:
    uids = provisioned_datasource_uids() | {"__expr__"}
    for rule in alert_rules():
        assert {query["datasourceUid"] for query in rule["data"]} <= uids, rule["title"]
        assert rule["condition"] in {query["refId"] for query in rule["data"]}, rule["title"]
