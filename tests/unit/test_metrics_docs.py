"""Every metric in bridge/metrics.py is documented in the README (name, type, labels) and shown
in the Grafana dashboard, and the dashboard uses no metric that does not exist."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase

from bridge import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
README = ROOT / "README.md"
_METRIC_NAME = re.compile(r"\bari_bridge_[a-z0-9_]+")


#: prometheus_client's classes, and the lean ones of the call path.
METRIC_TYPES = (MetricWrapperBase, metrics.LoopMetric)


def _defined() -> dict[str, Any]:
    """Name as documented (counters with ``_total``) -> metric object."""
    found: dict[str, Any] = {}
    for attribute in metrics.__all__:
        metric = getattr(metrics, attribute)
        if isinstance(metric, METRIC_TYPES):
            base = metric.describe()[0].name
            found[base + "_total" if metric._type == "counter" else base] = metric
    return found


def _series(name: str, metric: Any) -> set[str]:
    """The sample names Prometheus stores for a metric."""
    if metric._type == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def _expressions(node: Any) -> list[str]:
    """Every PromQL query in the dashboard: panel targets and template variables."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, str | dict):
                found.extend([value] if isinstance(value, str) else _expressions(value))
            else:
                found.extend(_expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_expressions(item))
    return found


def test_metrics_py_defines_every_metric_it_exports() -> None:
    defined = _defined()
    assert len(defined) == len([a for a in metrics.__all__
                                if isinstance(getattr(metrics, a), METRIC_TYPES)])
    assert "ari_bridge_calls_ended_total" in defined and "ari_bridge_calls_active" in defined


def test_the_dashboard_uses_only_metrics_that_exist_and_shows_every_one() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _expressions(dashboard)
    assert queries, "the dashboard has no queries"
    used = {name for query in queries for name in _METRIC_NAME.findall(query)}
    defined = _defined()
    series = {s: name for name, metric in defined.items() for s in _series(name, metric)}
    assert sorted(used - set(series)) == [], "the dashboard names metrics that do not exist"
    shown = {series[name] for name in used}
    assert sorted(set(defined) - shown) == [], "metrics missing from the dashboard"


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            for variable in re.findall(r"\$([a-z_]+)", target["expr"]):
                assert variable in variables or variable.startswith("__"), variable


def _readme_rows() -> dict[str, list[str]]:
    """The README's metrics table: name -> [type, labels, meaning]."""
    text = README.read_text()
    section = text.split("## Health and metrics", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`(ari_bridge_[a-z0-9_]+)`", cells[0]) if cells else None
        if match and len(cells) == 4:
            rows[match.group(1)] = cells[1:]
    return rows


@pytest.mark.parametrize("name", sorted(_defined()))
def test_the_readme_documents_each_metric_with_its_type_and_labels(name: str) -> None:
    rows = _readme_rows()
    assert name in rows, f"{name} is not in the README's metrics table"
    kind, labels, meaning = rows[name]
    metric = _defined()[name]
    assert kind == metric._type
    assert re.findall(r"`([a-z_]+)`", labels) == list(metric._labelnames)
    assert len(meaning) > 20


def test_the_readme_documents_no_metric_that_does_not_exist() -> None:
    assert sorted(set(_readme_rows()) - set(_defined())) == []


def test_the_readme_documents_the_probes_and_the_drain() -> None:
    section = README.read_text().split("## Health and metrics", 1)[1].split("\n## ", 1)[0]
    for needle in ("GET /livez", "GET /readyz", "GET /healthz", "GET /metrics", "SIGTERM",
                   "service.drain_timeout_s", "503"):
        assert needle in section, needle
