"""The chart's observability extras: the Grafana dashboard as a ConfigMap for Grafana's sidecar
(``dashboards.*``), and the OpenTelemetry environment of every pod (``tracing.*``)."""

from __future__ import annotations

import json
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from regionvault import tracing
from tests.deploy.chart import (
    CHART,
    DOMAINS,
    KUBERNETES_VERSION,
    Obj,
    Rendered,
    container_env_values,
    labels,
    merged,
    pod_spec,
    production_shared_values,
    production_values,
    render,
)

DASHBOARD = CHART / "dashboards" / "regionvault.json"
ENDPOINT = "http://otel-collector.observability.svc:4318"
OTEL = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES")
SERVICES = {"worker": "regionvault-worker", "beat": "regionvault-beat",
            "flower": "regionvault-flower"}


def _dashboards(rendered: Rendered) -> list[Obj]:
    return [o for o in rendered.of_kind("ConfigMap") if "regionvault.json" in o.get("data", {})]


# --- the dashboard ConfigMap --------------------------------------------------------------------


@pytest.mark.parametrize("values", [
    pytest.param({"dashboards": {"enabled": True}}, id="defaults"),
    pytest.param(merged(production_values(), {"dashboards": {"enabled": True}}),
                 id="production"),
])
def test_the_dashboard_configmap_holds_the_dashboard_for_the_sidecar(
        values: dict[str, Any]) -> None:
    rendered = render(values)
    (cm,) = _dashboards(rendered)
    kubernetes_validate.validate(cm, KUBERNETES_VERSION, strict=True)
    assert cm["metadata"]["name"] == "rv-regionvault-dashboard"
    assert labels(cm)["grafana_dashboard"] == "1"
    assert labels(cm)["app.kubernetes.io/component"] == "dashboard"
    assert list(cm["data"]) == ["regionvault.json"]
    # byte for byte the chart's file (Helm reads it with .Files.Get), and valid JSON
    assert cm["data"]["regionvault.json"] == DASHBOARD.read_text().rstrip("\n")
    assert json.loads(cm["data"]["regionvault.json"]) == json.loads(DASHBOARD.read_text())
    # the configuration's ConfigMap is still there, and the pods mount that one
    assert "config.yaml" in rendered.config_map()["data"]


def test_the_production_example_files_the_dashboard_in_a_folder() -> None:
    values = production_values()["dashboards"]
    assert values["annotations"] == {"grafana_folder": "Backups"}
    (cm,) = _dashboards(render(merged(production_values(), {"dashboards": {"enabled": True}})))
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Backups"}


def test_the_sidecar_label_and_annotations_are_configurable() -> None:
    (cm,) = _dashboards(render({"dashboards": {
        "enabled": True, "label": "grafana.example.com/dashboard", "labelValue": "regionvault",
        "annotations": {"k8s-sidecar-target-directory": "/tmp/dashboards/backups"}}}))
    assert labels(cm)["grafana.example.com/dashboard"] == "regionvault"
    assert "grafana_dashboard" not in labels(cm)
    assert cm["metadata"]["annotations"] == {
        "k8s-sidecar-target-directory": "/tmp/dashboards/backups"}


def test_no_dashboard_configmap_unless_enabled() -> None:
    defaults = render({})
    assert defaults.values["dashboards"]["enabled"] is False
    assert _dashboards(defaults) == []


@pytest.mark.parametrize("values", [
    pytest.param(production_values(), id="production"),
    pytest.param(production_shared_values(), id="production-shared-broker"),
])
def test_the_production_example_ships_the_dashboard(values: dict[str, Any]) -> None:
    (cm,) = _dashboards(render(values))
    assert labels(cm)["grafana_dashboard"] == "1"


def test_an_empty_sidecar_label_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"dashboards\.label is empty"):
        render({"dashboards": {"enabled": True, "label": ""}})


def test_helm_lint_passes_with_the_dashboard() -> None:
    report = helm.lint(CHART, merged(production_values(), {"dashboards": {"enabled": True}}),
                       strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


# --- tracing ----------------------------------------------------------------------------------


def _pods(rendered: Rendered) -> list[tuple[str, str | None, Obj]]:
    """(component, domain served or None, container) of every regionvault container."""
    found = []
    for deployment in rendered.of_kind("Deployment"):
        component = labels(deployment)["app.kubernetes.io/component"]
        for c in pod_spec(deployment)["containers"]:
            served = container_env_values(c).get("REGIONVAULT_DOMAIN")
            found.append((component, served, c))
    return found


COLLECTOR = [{"namespaceSelector": {"matchLabels": {
    "kubernetes.io/metadata.name": "observability"}}}]
TRACED = {
    "defaults": {"tracing": {"otlpEndpoint": ENDPOINT, "networkPeers": COLLECTOR}},
    "production": production_values(),
    "production-shared-broker": production_shared_values(),
}


def _endpoint(values: dict[str, Any], served: str | None) -> str:
    """Where a process serving ``served`` (None: every domain) sends traces: its domain's
    own collector if the domain names one, else the installation's."""
    own = (values["domains"].get(served or "", {}).get("tracing") or {}).get("otlpEndpoint")
    return str(own or values["tracing"]["otlpEndpoint"])


def _untraced(values: dict[str, Any]) -> dict[str, Any]:
    return merged(values, {"tracing": {"otlpEndpoint": ""}, "domains": {
        d: {"tracing": {"otlpEndpoint": ""}} for d in values.get("domains", {})}})


@pytest.mark.parametrize("name", TRACED)
def test_every_pod_gets_the_tracing_environment_when_an_endpoint_is_set(name: str) -> None:
    rendered = render(TRACED[name])
    assert rendered.values["tracing"]["otlpEndpoint"]
    pods = _pods(rendered)
    assert {component for component, _, _ in pods} == set(SERVICES)
    for component, served, c in pods:
        values = container_env_values(c)
        where = f"{name}: {component} {served}"
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == _endpoint(rendered.values, served), where
        assert values["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf", where
        assert values["OTEL_SERVICE_NAME"] == SERVICES[component], where
        if served is None:  # a shared beat or Flower serves every domain: no domain attribute
            assert "OTEL_RESOURCE_ATTRIBUTES" not in values, where
        else:
            assert values["OTEL_RESOURCE_ATTRIBUTES"] == f"regionvault.domain={served}", where
        # regionvault's own switch reads these the same way
        assert tracing.enabled_by_env(values), where
    # every worker serves a domain, so every worker's spans name it
    workers = [served for component, served, _ in pods if component == "worker"]
    assert sorted(w for w in workers if w) == sorted(DOMAINS)


@pytest.mark.parametrize("values", [
    pytest.param({}, id="defaults"),
    pytest.param(_untraced(production_values()), id="production-without-endpoint"),
    pytest.param(_untraced(production_shared_values()), id="production-shared-without-endpoint"),
])
def test_no_pod_gets_an_otel_variable_without_an_endpoint(values: dict[str, Any]) -> None:
    rendered = render(values)
    for component, served, c in _pods(rendered):
        present = [e["name"] for e in c.get("env", []) if e["name"].startswith("OTEL_")]
        assert present == [], f"{component} {served}: {present}"
        assert not tracing.enabled_by_env(container_env_values(c))


def test_a_protocol_regionvault_does_not_speak_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"tracing\.protocol is \"grpc\""):
        render({"tracing": {"otlpEndpoint": ENDPOINT, "protocol": "grpc"}})
    # without an endpoint nothing is rendered, so nothing is checked
    render({"tracing": {"otlpEndpoint": "", "protocol": "grpc"}})


def test_the_tracing_values_are_off_by_default() -> None:
    assert render({}).values["tracing"] == {"otlpEndpoint": "", "protocol": "http/protobuf",
                                            "networkPeers": []}


def _egress_to_collectors(rendered: Rendered, component: str, domain: str) -> list[Obj]:
    """The egress rules of ``component``'s NetworkPolicy for ``domain`` that lead to a
    collector (their comment is gone once rendered: found by the port they open)."""
    [policy] = [p for p in rendered.of_kind("NetworkPolicy")
                if labels(p)["app.kubernetes.io/component"] == component
                and p["spec"]["podSelector"]["matchLabels"].get(
                    "regionvault.io/domain", domain) == domain]
    return [rule for rule in policy["spec"]["egress"]
            if {"protocol": "TCP", "port": 4318} in rule.get("ports", [])]


def test_each_domains_pods_may_reach_its_own_collector_and_no_other() -> None:
    rendered = render(production_values())
    for domain in DOMAINS:
        own = rendered.values["domains"][domain]["tracing"]["networkPeers"]
        for component in ("worker", "beat", "flower"):
            rules = _egress_to_collectors(rendered, component, domain)
            assert [rule["to"] for rule in rules] == [own], (component, domain, rules)
        others = [rendered.values["domains"][d]["tracing"]["networkPeers"]
                  for d in DOMAINS if d != domain]
        assert own not in others


def test_an_endpoint_without_peers_is_refused_while_network_policies_are_on() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"no networkPeers say where that collector"):
        render({"tracing": {"otlpEndpoint": ENDPOINT}})
    with pytest.raises(helm.HelmRenderError, match=r"otel-collector-eu"):
        render(merged(production_values(), {"domains": {"eu": {"tracing": {
            "otlpEndpoint": "http://otel-collector-eu:4318", "networkPeers": []}}}}))
    # without NetworkPolicies there is nothing to open
    render({"tracing": {"otlpEndpoint": ENDPOINT}, "networkPolicy": {"enabled": False}})
