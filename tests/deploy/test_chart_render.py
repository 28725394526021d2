"""The chart renders with Helm's engine, every manifest is valid Kubernetes, Helm's lint passes.

Built-in kinds are validated by kubernetes-validate (offline, strict: unknown fields fail)
against Kubernetes 1.33; the four custom resources (KEDA ScaledObject and
TriggerAuthentication, prometheus-operator PodMonitor and ServiceMonitor) against the structural
schemas in tests/deploy/schemas (see the README there).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from tests.deploy.chart import (
    CHART,
    DOMAINS,
    KUBERNETES_VERSION,
    Obj,
    merged,
    production_shared_values,
    production_values,
    render,
)

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda-triggerauthentication.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring-podmonitor.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring-servicemonitor.json",
}


def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    resources = [
        (s["$id"], Resource.from_contents(s))
        for s in (json.loads(p.read_text()) for p in SCHEMAS.glob("*.json"))
    ]
    registry = Registry().with_resources(resources)
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: Obj) -> None:
    """Validate one rendered object; raises on any schema error."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRD_SCHEMAS:
        _crd_validator(*key).validate(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production": production_values(),
    "production-hpa": merged(production_values(), {"keda": {"enabled": False}}),
    "production-servicemonitor": merged(production_values(), {
        "metrics": {"podMonitor": {"enabled": False}, "serviceMonitor": {"enabled": True}}}),
    "development-no-flower-auth": {"development": True,
                                   "flower": {"auth": {"existingSecret": ""}}},
    "production-shared-broker": production_shared_values(),
    "defaults-per-domain": {"broker": {"perDomain": True},
                            "domains": {d: {"autoscaling": {"enabled": True}} for d in DOMAINS}},
}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_manifest_is_valid(name: str) -> None:
    rendered = render(VALUE_SETS[name])
    assert len(rendered.objects) >= 10
    for obj in rendered.objects:
        try:
            validate(obj)
        except Exception as exc:
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']} is invalid ({name}): {exc}") from None


def test_production_values_render_every_kind_the_chart_can_make() -> None:
    kinds = {o["kind"] for name in ("production", "production-shared-broker")
             for o in render(VALUE_SETS[name]).objects}
    assert kinds >= {"ConfigMap", "Deployment", "ServiceAccount", "PersistentVolumeClaim",
                     "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication",
                     "NetworkPolicy", "PodMonitor", "Service", "Ingress"}
    hpa_kinds = {o["kind"] for o in render(VALUE_SETS["production-hpa"]).objects}
    assert "HorizontalPodAutoscaler" in hpa_kinds
    assert "ServiceMonitor" in {
        o["kind"] for o in render(VALUE_SETS["production-servicemonitor"]).objects}


def test_validation_rejects_what_a_cluster_would_reject() -> None:
    """The validators are not vacuous: a misspelt field fails, built-in and custom alike."""
    rendered = render(VALUE_SETS["production"])
    deployment = json.loads(json.dumps(rendered.of_kind("Deployment")[0]))
    deployment["spec"]["replicaz"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = json.loads(json.dumps(rendered.of_kind("ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["listname"] = "backup.eu"
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = json.loads(json.dumps(rendered.of_kind("PodMonitor")[0]))
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def _lint(values: dict[str, Any], chart: Path = CHART) -> dict[str, Any]:
    return helm.lint(chart, values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_passes(name: str) -> None:
    report = _lint(VALUE_SETS[name])
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == [], report


def test_helm_lint_reports_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "regionvault"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: {}\n")
    report = _lint({}, broken)
    assert report["errors"], report


def test_chart_yaml_has_a_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "regionvault"
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", chart["version"])
    assert chart["appVersion"]


def test_notes_name_every_enabled_pool() -> None:
    rendered = render(VALUE_SETS["production"])
    for domain in DOMAINS:
        assert f"rv-regionvault-worker-{domain}" in rendered.notes
        assert f"queue backup.{domain}" in rendered.notes
        # production runs a broker per domain: each one's beat and Flower are named
        assert f"deployment/rv-regionvault-beat-{domain} (exactly one pod)" in rendered.notes
        assert f"svc/rv-regionvault-flower-{domain} 5555" in rendered.notes
    shared = render(VALUE_SETS["production-shared-broker"]).notes
    assert "deployment/rv-regionvault-beat (always exactly one pod)" in shared
    assert "svc/rv-regionvault-flower 5555" in shared


# --- values.yaml is documented line by line ---------------------------------------------------

_KEY = re.compile(r"([A-Za-z][\w.-]*):(\s|$)")


def undocumented_keys(text: str) -> tuple[list[str], set[str]]:
    """Keys of a values file with neither a comment line right above nor a comment after them
    (list items and their contents are values, not keys). Returns (undocumented, documented)."""
    stack: list[tuple[int, str]] = []
    missing: list[str] = []
    documented: set[str] = set()
    comment_above = False
    list_indent: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment_above = False
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            comment_above = True
            continue
        if list_indent is not None and indent > list_indent:
            continue
        list_indent = None
        if stripped.startswith("-"):
            list_indent = indent
            comment_above = False
            continue
        match = _KEY.match(stripped)
        if not match:
            comment_above = False
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [match.group(1)])
        stack.append((indent, match.group(1)))
        if comment_above or " # " in stripped:
            documented.add(path)
        else:
            missing.append(path)
        comment_above = False
    return missing, documented


def test_values_yaml_is_documented_line_by_line() -> None:
    missing, documented = undocumented_keys((CHART / "values.yaml").read_text())
    # eu and au repeat the fields of us, which documents each of them once.
    not_explained = [
        key for key in missing
        if not (key.startswith(("domains.eu.", "domains.au."))
                and "domains.us." + key.split(".", 2)[2] in documented)
    ]
    assert not_explained == []
    assert len(documented) > 80


def test_the_documentation_check_finds_an_undocumented_key() -> None:
    missing, _ = undocumented_keys("# -- documented\na: 1\nb: 2\nc:\n  # -- yes\n  d: 3\n")
    assert missing == ["b", "c"]
