"""The Grafana dashboard (one copy, in the chart: charts/regionvault/dashboards/regionvault.json)
parses, every PromQL expression in it parses and names only metrics the workers export, every
panel is about the chosen domain, and each thing on-call needs has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from tests.deploy.chart import CHART
from tests.metric_names import EXPORTED, metric_names, selectors

DASHBOARD = CHART / "dashboards" / "regionvault.json"
DEPLOY_README = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "README.md"

#: the value that stands for the chosen domain while an expression is parsed
DOMAIN = "__chosen_domain__"
#: Grafana's variables, by what they stand for in a query Prometheus receives
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m", "${__rate_interval}": "5m", "$__interval": "1m",
    "${__interval}": "1m", "$__range": "1d", "${__range}": "1d",
    "$domain": DOMAIN, "${domain}": DOMAIN,
}
#: the labels a series of one domain carries: domain, or for the residency guard's counter
#: the domain of the worker that refused the task
DOMAIN_LABELS = {"domain", "worker_domain"}


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def _panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in data["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels inside a collapsed row
    return found


def _concrete(expr: str) -> str:
    """A Grafana query as Prometheus would receive it (its variables replaced)."""
    for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
    assert "$" not in expr, f"a Grafana variable this test does not know in {expr!r}"
    return expr


def _panel_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target."""
    return [(panel["title"], target["expr"]) for panel in _panels(_dashboard())
            for target in panel.get("targets", []) if target.get("expr")]


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


def _variable_exprs() -> list[tuple[str, str]]:
    """(variable name, PromQL) of every query variable: the selector of label_values(...),
    or a query_result(...)'s expression, or the query itself."""
    found = []
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        if match:
            assert match["selector"], f"variable {variable['name']}: label_values needs a metric"
            text = match["selector"]
        elif text.startswith("query_result("):
            text = text.removeprefix("query_result(").removesuffix(")")
        found.append((variable["name"], text))
    return found


def test_the_dashboard_is_a_grafana_dashboard_with_its_variables() -> None:
    data = _dashboard()
    assert 36 <= data["schemaVersion"] <= 41
    assert data["uid"] and data["title"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["domain"]["type"] == "query"
    ids = [p["id"] for p in _panels(data)]
    assert len(ids) == len(set(ids)), "two panels share an id"
    for panel in _panels(data):
        if panel["type"] == "row":
            continue
        # every panel queries the chosen Prometheus, not a datasource of the author's Grafana
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(("where", "expr"), [*_panel_exprs(), *_variable_exprs()])
def test_every_expression_parses_and_names_only_exported_metrics(where: str, expr: str) -> None:
    names = metric_names(promql_parser.parse(_concrete(expr)))
    assert names, f"{where}: selects no metric"
    unknown = names - EXPORTED
    assert not unknown, f"{where}: names metrics no worker exports: {unknown}"


@pytest.mark.parametrize(("title", "expr"), _panel_exprs())
def test_every_panel_shows_the_chosen_domain_only(title: str, expr: str) -> None:
    for selector in selectors(promql_parser.parse(_concrete(expr))):
        chosen = [m for m in selector.matchers.matchers
                  if m.name in DOMAIN_LABELS and m.value == DOMAIN
                  and str(m.op).endswith("Equal") and "Not" not in str(m.op)]
        assert chosen, f"{title}: {selector.name} is not filtered on domain=\"$domain\""


def test_the_domain_filter_check_is_not_vacuous() -> None:
    tree = promql_parser.parse(_concrete('sum(a{domain="$domain"}) / sum(b{domain!="$domain"})'))
    unfiltered = [s.name for s in selectors(tree)
                  if not any(m.name in DOMAIN_LABELS and m.value == DOMAIN
                             and str(m.op).endswith("Equal") and "Not" not in str(m.op)
                             for m in s.matchers.matchers)]
    assert unfiltered == ["b"]


def _quantiles(expr: str) -> set[float]:
    """The quantiles of every histogram_quantile(q, ...) call in an expression."""
    found: set[float] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile":
            found.add(float(node.args[0].val))
        for attribute in ("lhs", "rhs", "expr", "vector_selector", "param"):
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(promql_parser.parse(_concrete(expr)))
    return found


def test_the_dashboard_covers_what_on_call_needs() -> None:
    by_metric: dict[str, set[str]] = {}
    quantiles: set[float] = set()
    for title, expr in _panel_exprs():
        for name in metric_names(promql_parser.parse(_concrete(expr))):
            by_metric.setdefault(name, set()).add(title)
        if "regionvault_step_duration_seconds_bucket" in expr:
            quantiles |= _quantiles(expr)
    required = {
        "freshness": "regionvault_last_verified_backup_timestamp_seconds",
        "RPO": "regionvault_source_rpo_seconds",
        "step durations": "regionvault_step_duration_seconds_bucket",
        "bytes": "regionvault_step_bytes_total",
        "failures": "regionvault_step_failures_total",
        "misroutes": "regionvault_misrouted_tasks_refused_total",
        "queue depth": "regionvault_queue_depth",
        "drills passed": "regionvault_drill_last_success_timestamp_seconds",
        "drills failed": "regionvault_drill_failures_total",
        "oldest pii": "regionvault_oldest_pii_age_seconds",
    }
    missing = {what: metric for what, metric in required.items() if metric not in by_metric}
    assert not missing, f"no panel shows {missing}"
    assert {0.5, 0.95} <= quantiles, f"step duration quantiles shown: {sorted(quantiles)}"
    # age and RPO of a source are on the same panel, so they can be compared
    assert (by_metric["regionvault_last_verified_backup_timestamp_seconds"]
            & by_metric["regionvault_source_rpo_seconds"])


def test_the_chart_holds_the_only_copy_and_deploy_points_to_it() -> None:
    """One copy: Helm reads files only inside the chart (.Files.Get), and a second copy or a
    symlink under deploy/ would drift or be dropped when the chart is packaged."""
    assert not (DEPLOY_README.parent / "regionvault.json").exists()
    assert "charts/regionvault/dashboards/regionvault.json" in DEPLOY_README.read_text()
