"""How the chart runs the pools: one beat, autoscaling, Flower's auth, the generated
configuration, soft shutdown, probes, spools, disruption budgets and metrics."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest
from celery import Celery
from celery.app.defaults import NAMESPACES

from regionvault.config import parse_config
from tests.deploy.chart import (
    DOMAINS,
    argv,
    container,
    env,
    labels,
    merged,
    pod_spec,
    production_shared_values,
    production_values,
    render,
)

ALL_AUTOSCALED = {"domains": {d: {"autoscaling": {"enabled": True}} for d in DOMAINS}}

#: every combination of values the beat and autoscaling checks are run against
COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "defaults-autoscaled-keda": ALL_AUTOSCALED,
    "defaults-autoscaled-hpa": merged(ALL_AUTOSCALED, {"keda": {"enabled": False}}),
    "production": production_values(),
    "production-hpa": merged(production_values(), {"keda": {"enabled": False}}),
    "production-all-autoscaled": merged(production_values(), ALL_AUTOSCALED),
    "production-beat-persistent-replicas-asked": merged(
        production_values(), {"beat": {"replicas": 3, "persistence": {"enabled": True}}}),
    "one-domain-only": {"domains": {"us": {"enabled": False}, "au": {"enabled": False},
                                    "eu": {"autoscaling": {"enabled": True}}}},
    "production-shared-broker": production_shared_values(),
    "defaults-per-domain-one-disabled": {"broker": {"perDomain": True},
                                         "domains": {"au": {"enabled": False}}},
}


# --- beat: one scheduler per broker, always -------------------------------------------------------


@pytest.mark.parametrize("name", COMBINATIONS)
def test_exactly_one_recreated_beat_per_broker(name: str) -> None:
    rendered = render(COMBINATIONS[name])
    beats = rendered.served("beat")
    # one for the shared broker, or one for each enabled domain's own broker (and never for a
    # disabled domain)
    assert set(beats) == rendered.brokers()
    for beat in beats.values():
        assert beat["spec"]["replicas"] == 1
        assert beat["spec"]["strategy"] == {"type": "Recreate"}
        assert argv(container(beat, "beat"))[:4] == ["celery", "-A", "workers", "beat"]
    # Nothing else runs a scheduler (a worker with -B/--beat would be another one).
    for deployment in rendered.of_kind("Deployment"):
        if deployment in beats.values():
            continue
        for c in pod_spec(deployment)["containers"]:
            args = argv(c)
            assert "beat" not in args[:4] and "-B" not in args and "--beat" not in args


@pytest.mark.parametrize("name", COMBINATIONS)
def test_autoscalers_target_only_worker_pools(name: str) -> None:
    rendered = render(COMBINATIONS[name])
    workers = {d["metadata"]["name"]: d for d in rendered.workers().values()}
    beats = {b["metadata"]["name"] for b in rendered.deployments("beat")}
    scalers = rendered.of_kind("ScaledObject") + rendered.of_kind("HorizontalPodAutoscaler")
    autoscaled = {d for d, v in rendered.values["domains"].items()
                  if v["enabled"] and v["autoscaling"]["enabled"]}
    assert len(scalers) == len(autoscaled)
    for scaler in scalers:
        target = scaler["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert target["name"] not in beats
        assert target["name"] in workers
        # a scaled Deployment leaves replicas to the scaler, so an upgrade does not reset it
        assert "replicas" not in workers[target["name"]]["spec"]


def test_keda_scales_each_pool_on_its_own_queue_on_the_shared_broker() -> None:
    rendered = render(production_shared_values())
    values = rendered.values
    scaled = {labels(s)["regionvault.io/domain"]: s for s in rendered.of_kind("ScaledObject")}
    assert set(scaled) == {"us", "eu"}  # au runs a fixed number of workers
    for domain, obj in scaled.items():
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == f"backup.{domain}"
        assert trigger["metadata"]["address"] == "regionvault-broker.backups.svc:6379"
        assert trigger["metadata"]["databaseIndex"] == "0"
        assert trigger["authenticationRef"]["name"] in {
            t["metadata"]["name"] for t in rendered.of_kind("TriggerAuthentication")}
        auto = values["domains"][domain]["autoscaling"]
        assert obj["spec"]["minReplicaCount"] == auto["minReplicas"] >= 1
        assert obj["spec"]["maxReplicaCount"] == auto["maxReplicas"]


def test_without_keda_an_autoscaled_pool_gets_an_hpa() -> None:
    rendered = render(merged(production_values(), {"keda": {"enabled": False}}))
    assert rendered.of_kind("ScaledObject") == [] == rendered.of_kind("TriggerAuthentication")
    hpas = {labels(h)["regionvault.io/domain"]: h
            for h in rendered.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == {"us", "eu"}
    assert hpas["eu"]["spec"]["minReplicas"] == 2 and hpas["eu"]["spec"]["maxReplicas"] == 6


def test_a_pool_may_not_scale_to_zero() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"minReplicas must be at least 1"):
        render({"domains": {"eu": {"autoscaling": {"enabled": True, "minReplicas": 0}}}})


# --- Flower: never without auth, unless development ----------------------------------------------


def test_flower_without_auth_does_not_render() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"flower\.auth\.existingSecret is empty"):
        render({"flower": {"auth": {"existingSecret": ""}}})
    with pytest.raises(helm.HelmRenderError, match=r"flower\.auth\.existingSecret is empty"):
        render(merged(production_values(), {"flower": {"auth": {"existingSecret": ""}}}))


def test_flower_without_auth_renders_in_development_only() -> None:
    rendered = render({"development": True, "flower": {"auth": {"existingSecret": ""}}})
    (flower,) = rendered.deployments("flower")
    assert "REGIONVAULT_FLOWER_BASIC_AUTH" not in env(container(flower, "flower"))
    assert "--dev-no-auth" in argv(container(flower, "flower"))
    assert "WITHOUT auth" in rendered.notes
    assert rendered.config()["development"] is True


@pytest.mark.parametrize("values", [production_values, production_shared_values])
def test_flower_takes_its_credentials_from_the_secret(values: Any) -> None:
    rendered = render(values())
    flowers = rendered.served("flower")
    assert set(flowers) == rendered.brokers()
    ingresses = {i["metadata"]["name"]: i for i in rendered.of_kind("Ingress")}
    assert len(ingresses) == len(flowers)
    for flower in flowers.values():
        c = container(flower, "flower")
        assert argv(c)[:2] == ["regionvault", "flower"]
        assert "--dev-no-auth" not in argv(c)
        ref = env(c)["REGIONVAULT_FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "regionvault-flower-auth", "key": "basic-auth"}
        assert not any("basic-auth" in arg or "basic_auth" in arg for arg in argv(c))
        service = rendered.named("Service", flower["metadata"]["name"])
        pod_labels = flower["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        ingress = ingresses[flower["metadata"]["name"]]
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
    hosts = [i["spec"]["rules"][0]["host"] for i in ingresses.values()]
    assert len(set(hosts)) == len(hosts)  # each Flower under a host of its own


def test_disabled_flower_needs_no_auth() -> None:
    rendered = render({"flower": {"enabled": False, "auth": {"existingSecret": ""}}})
    assert rendered.deployments("flower") == []


# --- the generated configuration ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["defaults", "production", "one-domain-only",
                                  "production-shared-broker", "defaults-per-domain-one-disabled"])
def test_configmap_holds_a_valid_regionvault_configuration(name: str) -> None:
    rendered = render(COMBINATIONS[name])
    config = parse_config(rendered.config(), origin="the chart's ConfigMap", env={})
    assert {d.value for d in config.domains} == rendered.enabled_domains()
    for domain, dcfg in config.domains.items():
        values = rendered.values["domains"][domain.value]
        assert (dcfg.aws_region, dcfg.s3_bucket) == (
            values["aws"]["region"], values["aws"]["s3Bucket"])
        assert (dcfg.gcp_location, dcfg.gcs_bucket) == (
            values["gcp"]["location"], values["gcp"]["gcsBucket"])
        assert [s.name for s in dcfg.sources] == [s["name"] for s in values["sources"]]
    assert config.development is False
    assert config.step_timeout_seconds == rendered.values["config"]["stepTimeoutSeconds"]


def test_configmap_carries_extra_configuration() -> None:
    config = parse_config(render(production_values()).config(), origin="ConfigMap", env={})
    eu = config.domain("eu")
    assert eu.drill.scratch_dsn is not None
    assert str(eu.drill.scratch_dsn.file) == "/run/secrets/regionvault/eu/dsn-drill-scratch"
    (catalog,) = [s for s in eu.sources if s.name == "catalog"]
    assert catalog.check is not None and catalog.check.expect == "true"


def test_journeys_sources_render_with_their_kind_stores_and_cloud_files_container() -> None:
    au = {"domains": {"au": {
        "extraConfig": {"swift": {
            "region": "SYD", "container": "acme-journeys-au", "user": "acme-backups",
            "api_key": {"file": "/run/secrets/regionvault/au/cloud-files-key"}}},
        "sources": [
            {"name": "journeys-accounts", "kind": "mysql", "dataClass": "pii", "port": 3306,
             "extraConfig": {"stores": {"primary": "swift", "replica": "gcs"}}},
            {"name": "journeys-events", "kind": "bigtable", "dataClass": "pii", "port": 443,
             "extraConfig": {"tables": ["events"],
                             "stores": {"primary": "swift", "replica": "gcs"}}},
            {"name": "accounts", "dataClass": "pii"},
        ]}}}
    config = parse_config(render(au).config(), origin="ConfigMap", env={})
    dcfg = config.domain("au")
    kinds = {s.name: s.kind for s in dcfg.sources}
    assert kinds == {"journeys-accounts": "mysql", "journeys-events": "bigtable",
                     "accounts": "postgres"}
    assert dcfg.swift is not None and dcfg.swift.region == "SYD"
    for source in dcfg.sources:
        expected = ("s3", "gcs") if source.name == "accounts" else ("swift", "gcs")
        assert dcfg.stores_for(source).names == expected
    assert config.source("au", "journeys-events").tables == ("events",)


def test_the_chart_cannot_write_what_regionvault_would_reject() -> None:
    """parse_config is the judge: a region outside the domain renders, and is refused there."""
    rendered = render({"domains": {"eu": {"aws": {"region": "us-east-2"}}}})
    with pytest.raises(Exception, match=r"outside domain 'eu'"):
        parse_config(rendered.config(), origin="ConfigMap", env={})


def test_workers_beat_and_flower_read_the_same_configuration() -> None:
    rendered = render(production_values())
    configmap = rendered.config_map()
    for deployment in rendered.of_kind("Deployment"):
        spec = pod_spec(deployment)
        (volume,) = [v for v in spec["volumes"] if "configMap" in v]
        assert volume["configMap"]["name"] == configmap["metadata"]["name"]
        c = spec["containers"][0]
        assert env(c)["REGIONVAULT_CONFIG"]["value"] == "/etc/regionvault/config.yaml"
        mount = {"name": volume["name"], "mountPath": "/etc/regionvault", "readOnly": True}
        assert mount in c["volumeMounts"]
        assert "checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"]


# --- soft shutdown and probes ------------------------------------------------------------------


def test_workers_stop_with_celerys_soft_shutdown() -> None:
    rendered = render(production_values())
    soft = rendered.values["worker"]["softShutdownTimeoutSeconds"]
    for domain, deployment in rendered.workers().items():
        worker = container(deployment, "worker")
        args = argv(worker)
        settings = args[args.index("--") + 1:]
        # Celery's own parser reads these settings, and each is a real worker setting.
        parsed = Celery().loader.cmdline_config_parser(settings, namespace="worker")
        assert parsed == {"worker_soft_shutdown_timeout": float(soft)}
        assert "soft_shutdown_timeout" in NAMESPACES["worker"]
        # SIGTERM from Kubernetes starts the soft (not the unbounded warm) shutdown...
        assert env(worker)["REMAP_SIGTERM"]["value"] == "SIGQUIT"
        # ...which ends before Kubernetes kills the pod.
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace >= soft + 60, (domain, grace, soft)
        # a rolling update never takes a pool below its size
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_grace_period_can_be_set_but_defaults_above_the_soft_shutdown() -> None:
    rendered = render({"worker": {"softShutdownTimeoutSeconds": 600}})
    graces = {pod_spec(d)["terminationGracePeriodSeconds"] for d in rendered.workers().values()}
    assert graces == {720}
    rendered = render({"worker": {"terminationGracePeriodSeconds": 9000}})
    graces = {pod_spec(d)["terminationGracePeriodSeconds"] for d in rendered.workers().values()}
    assert graces == {9000}


def test_probes_ping_the_worker_itself_over_the_broker() -> None:
    rendered = render(production_values())
    for domain, deployment in rendered.workers().items():
        worker = container(deployment, "worker")
        args = argv(worker)
        assert args[args.index("-n") + 1] == f"{domain}@%h"  # %h is the pod's hostname
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = worker[probe]["exec"]["command"]
            script = command[-1]
            assert command[:2] == ["sh", "-c"]
            assert "celery -A workers inspect ping" in script
            assert f'--destination "{domain}@${{HOSTNAME}}"' in script
            assert "sleep" not in script
            assert worker[probe]["timeoutSeconds"] > 10


# --- spool, disruption budgets, metrics ----------------------------------------------------------


def spool_volume(deployment: dict[str, Any]) -> dict[str, Any]:
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == "spool"]
    return volume


def test_spool_is_one_volume_per_domain_shared_by_its_pool() -> None:
    rendered = render(production_values())
    claims = {c["metadata"]["name"]: c for c in rendered.of_kind("PersistentVolumeClaim")}
    for domain, deployment in rendered.workers().items():
        volume = spool_volume(deployment)
        mount = [m for m in container(deployment, "worker")["volumeMounts"] if m["name"] == "spool"]
        assert mount == [{"name": "spool", "mountPath": f"/var/lib/regionvault/spool/{domain}"}]
        # production pools have more than one pod: a ReadWriteMany claim of the domain
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert labels(claim)["regionvault.io/domain"] == domain
    # three spools and the state of each beat (one per domain's broker in production)
    assert len(claims) == 3 + len(rendered.served("beat")) == 6


def test_single_worker_without_autoscaling_gets_an_emptydir_spool() -> None:
    rendered = render({})
    for deployment in rendered.workers().values():
        assert "emptyDir" in spool_volume(deployment)
    assert rendered.of_kind("PersistentVolumeClaim") == []


@pytest.mark.parametrize("pool", [{"replicas": 2}, {"autoscaling": {"enabled": True}}])
def test_an_emptydir_spool_is_refused_for_a_pool_of_many(pool: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"spool\.type emptyDir needs a single replica"):
        render({"domains": {"eu": {**pool, "spool": {"type": "emptyDir"}}}})
    rendered = render({"domains": {"eu": pool}})  # auto picks a shared claim instead
    assert "persistentVolumeClaim" in spool_volume(rendered.workers()["eu"])


def test_each_pool_has_a_disruption_budget() -> None:
    rendered = render(production_values())
    budgets = {labels(b)["regionvault.io/domain"]: b
               for b in rendered.of_kind("PodDisruptionBudget")}
    assert set(budgets) == set(rendered.workers())
    for domain, deployment in rendered.workers().items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert budgets[domain]["spec"]["selector"]["matchLabels"] == selector
        assert budgets[domain]["spec"]["maxUnavailable"] == 1


def test_metrics_port_is_declared_and_scraped_per_pool() -> None:
    for variant, kind in (("podMonitor", "PodMonitor"), ("serviceMonitor", "ServiceMonitor")):
        other = {"podMonitor": "serviceMonitor", "serviceMonitor": "podMonitor"}[variant]
        rendered = render(merged(production_values(), {
            "metrics": {variant: {"enabled": True}, other: {"enabled": False}}}))
        monitors = {labels(m)["regionvault.io/domain"]: m for m in rendered.of_kind(kind)}
        assert set(monitors) == set(rendered.workers())
        for domain, deployment in rendered.workers().items():
            worker = container(deployment, "worker")
            assert {"name": "metrics", "containerPort": 9808, "protocol": "TCP"} in worker["ports"]
            assert env(worker)["REGIONVAULT_METRICS_PORT"]["value"] == "9808"
            pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            selector = monitors[domain]["spec"]["selector"]["matchLabels"]
            if kind == "ServiceMonitor":
                service = rendered.named("Service", f"{deployment['metadata']['name']}-metrics")
                assert selector.items() <= labels(service).items()
                selector = service["spec"]["selector"]
            assert selector.items() <= pod_labels.items()
            assert selector["regionvault.io/domain"] == domain


def test_keda_reads_the_broker_address_and_database_from_the_broker_url() -> None:
    rendered = render({"broker": {"url": "redis://queue-redis/2"},
                       "domains": {"eu": {"autoscaling": {"enabled": True}}}})
    (scaled,) = rendered.of_kind("ScaledObject")
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert (metadata["address"], metadata["databaseIndex"]) == ("queue-redis:6379", "2")
    assert "authenticationRef" not in scaled["spec"]["triggers"][0]
