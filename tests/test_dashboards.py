"""The Grafana dashboard and the Prometheus alert rules in deploy/ query only metrics the
server exports: a renamed or removed metric fails here, not on an operator's wall."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from openmaas.server.app import create_app
from openmaas.settings import Settings
from tests.support.metrics import metric_names

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "openmaas.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
NAME = re.compile(r"\bopenmaas_[a-z0-9_]+")
WANTED_ALERTS = {  # what the rules must watch (issue 14)
    "error rate": "OpenMaaSHighErrorRate",
    "latency": "OpenMaaSSlowFirstToken",
    "open circuits": "OpenMaaSCircuitOpen",
    "a stuck usage writer": "OpenMaaSUsageWriterStuck",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The metric names a live application exports, scraped."""
    settings = Settings(
        home=tmp_path_factory.mktemp("dashboards") / "home",
        embedded_models=False,
        fake_models={"fake-echo": {"text": "hello"}},
        metrics_token="t",
    )
    with TestClient(create_app(settings)) as client:
        reply = client.get("/metrics", headers={"Authorization": "Bearer t"})
        assert reply.status_code == 200
        return metric_names(reply.text)


def _expressions(node: Any) -> list[str]:
    """Every ``expr`` (a panel target's query) anywhere in a dashboard."""
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in _expressions(value)]
    if isinstance(node, list):
        return [e for value in node for e in _expressions(value)]
    return []


def test_every_dashboard_panel_queries_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [e for panel in dashboard["panels"] for e in _expressions(panel)]
    assert len(queries) >= len(dashboard["panels"]) > 0
    variables = [e for v in dashboard["templating"]["list"] for e in _expressions(v)]
    unknown = {name for query in queries + variables for name in NAME.findall(query)} - exported
    assert unknown == set()
    assert all(NAME.search(query) for query in queries), "a panel queries no metric of ours"


def test_every_alert_rule_queries_exported_metrics(exported: set[str]) -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    unknown = {name for rule in rules for name in NAME.findall(rule["expr"])} - exported
    assert unknown == set()
    for rule in rules:
        assert NAME.search(rule["expr"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warn"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    assert set(WANTED_ALERTS.values()) <= {rule["alert"] for rule in rules}


def test_a_name_the_server_does_not_export_is_caught(exported: set[str]) -> None:
    """The check itself: a query with a misspelt metric is found."""
    assert "openmaas_requests_total" in exported
    assert set(NAME.findall("rate(openmaas_request_total[5m])")) - exported
