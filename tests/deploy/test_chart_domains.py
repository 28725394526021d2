"""Domain pinning, read off the rendered manifests.

Each domain's pool consumes exactly its own queue, mounts exactly its own Secret, runs only on
nodes of its own region and reaches only its own sources; no Deployment holds two domains'
Secrets; disabling a domain removes every object it had.
"""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from regionvault.domains import DOMAIN_TABLE, Domain
from tests.deploy.chart import (
    DOMAIN_LABEL,
    DOMAINS,
    REGION_LABEL,
    Rendered,
    argv,
    check_worker_guard,
    container,
    env,
    labels,
    merged,
    pod_spec,
    production_values,
    queues,
    render,
    secret_names,
    walk_files,
)

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production": production_values(),
}


def domain_secrets(rendered: Rendered) -> dict[str, str]:
    """Secret name -> the domain it belongs to (every domain, enabled or not)."""
    return {v["secretName"]: d for d, v in rendered.values["domains"].items()}


@pytest.fixture(params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(VALUE_SETS[request.param])


def test_one_worker_deployment_per_enabled_domain(rendered: Rendered) -> None:
    assert set(rendered.workers()) == rendered.enabled_domains() == set(DOMAINS)


def test_each_worker_consumes_exactly_its_own_queue(rendered: Rendered) -> None:
    for domain, deployment in rendered.workers().items():
        worker = container(deployment, "worker")
        args = argv(worker)
        assert args[:4] == ["celery", "-A", "workers", "worker"]
        assert queues(args) == [f"backup.{domain}"]
        assert env(worker)["REGIONVAULT_DOMAIN"]["value"] == domain
        # regionvault's own start-up guard accepts the pool as deployed...
        check_worker_guard(domain, queues(args))
        # ...and would refuse it under any other domain.
        for other in set(DOMAINS) - {domain}:
            with pytest.raises(RuntimeError, match="must consume exactly"):
                check_worker_guard(other, queues(args))


def test_each_worker_mounts_exactly_its_own_domains_secret(rendered: Rendered) -> None:
    owners = domain_secrets(rendered)
    for domain, deployment in rendered.workers().items():
        own = rendered.values["domains"][domain]["secretName"]
        # besides it, only the broker's credentials: the shared broker's, or with
        # broker.perDomain its own domain's broker's
        broker = (rendered.values["domains"][domain]["broker"] if rendered.per_domain_brokers()
                  else rendered.values["broker"])
        secrets = secret_names(deployment)
        assert {s for s in secrets if s in owners} == {own}
        assert secrets - {own} <= ({broker["existingSecret"]} - {""})
        worker = container(deployment, "worker")
        mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
        (volume,) = [v for v in pod_spec(deployment)["volumes"]
                     if v.get("secret", {}).get("secretName") == own]
        assert mounts[volume["name"]] == f"/run/secrets/regionvault/{domain}"


def test_no_deployment_mounts_two_domains_secrets(rendered: Rendered) -> None:
    owners = domain_secrets(rendered)
    deployments = rendered.of_kind("Deployment")
    # + a beat and a Flower per broker (the shared one, or each domain's own)
    assert len(deployments) == len(rendered.workers()) + 2 * len(rendered.brokers())
    for deployment in deployments:
        held = {owners[s] for s in secret_names(deployment) if s in owners}
        assert len(held) <= 1, (deployment["metadata"]["name"], held)
        if labels(deployment)["app.kubernetes.io/component"] != "worker":
            assert held == set(), f"{deployment['metadata']['name']} holds a domain Secret"


def test_each_worker_runs_only_in_its_domains_region(rendered: Rendered) -> None:
    for domain, deployment in rendered.workers().items():
        affinity = pod_spec(deployment)["affinity"]["nodeAffinity"]
        terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms, "no required node affinity"
        table = DOMAIN_TABLE[Domain(domain)]
        inside = table.allowed_aws_regions | table.allowed_gcp_locations
        # Terms are alternatives: every one of them must pin the region.
        for term in terms:
            (expression,) = [e for e in term["matchExpressions"] if e["key"] == REGION_LABEL]
            assert expression["operator"] == "In"
            assert expression["values"] == rendered.values["domains"][domain]["nodeRegions"]
            assert set(expression["values"]) <= inside, (domain, expression["values"])


def test_configuration_points_each_domain_only_at_its_own_secret_files(
        rendered: Rendered) -> None:
    config = rendered.config()
    for domain, domain_config in config["domains"].items():
        files = list(walk_files(domain_config))
        assert files, f"domain {domain} names no secret file"
        for path in files:
            assert path.startswith(f"/run/secrets/regionvault/{domain}/"), path
    for domain, deployment in rendered.workers().items():
        worker_env = env(container(deployment, "worker"))
        for name in ("AWS_SHARED_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"):
            if name in worker_env:
                assert worker_env[name]["value"].startswith(f"/run/secrets/regionvault/{domain}/")


def test_each_pool_has_its_own_network_policy(rendered: Rendered) -> None:
    values = rendered.values
    for domain, deployment in rendered.workers().items():
        (policy,) = rendered.policies_for(deployment)
        assert labels(policy)[DOMAIN_LABEL] == domain
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert policy["spec"]["podSelector"]["matchLabels"] == selector
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        peers = [peer for rule in policy["spec"]["egress"] for peer in rule["to"]]
        own_sources = [p for s in values["domains"][domain]["sources"]
                       for p in s.get("networkPeers", [])]
        for other in set(DOMAINS) - {domain}:
            for source in values["domains"][other]["sources"]:
                for peer in source.get("networkPeers", []):
                    assert peer in own_sources or peer not in peers, (domain, other, peer)
        for peer in own_sources:
            assert peer in peers
        stores = values["domains"][domain]["networkPolicy"]
        assert {
            "to": [{"ipBlock": {"cidr": cidr}} for cidr in stores["storeCidrs"]],
            "ports": [{"protocol": "TCP", "port": port} for port in stores["storePorts"]],
        } in policy["spec"]["egress"]


def test_production_sources_of_one_domain_are_not_reachable_from_another() -> None:
    rendered = render(production_values())
    workers = rendered.workers()
    policies = {d: p for d in workers for p in rendered.policies_for(workers[d])}
    eu_peers = [p for rule in policies["eu"]["spec"]["egress"] for p in rule["to"]]
    us_peers = [p for rule in policies["us"]["spec"]["egress"] for p in rule["to"]]
    assert {"ipBlock": {"cidr": "10.20.20.0/24"}} in eu_peers  # eu's accounts
    assert {"ipBlock": {"cidr": "10.20.20.0/24"}} not in us_peers
    assert {"ipBlock": {"cidr": "10.10.20.0/24"}} not in eu_peers  # us's accounts


@pytest.mark.parametrize("domain", DOMAINS)
def test_disabling_a_domain_removes_all_of_its_objects(domain: str) -> None:
    full = render(production_values())
    without = render(merged(production_values(), {"domains": {domain: {"enabled": False}}}))
    own = {(o["kind"], o["metadata"]["name"]) for o in full.labelled(domain)}
    assert {kind for kind, _ in own} >= {
        "Deployment", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"}
    # Exactly the domain's objects are gone, nothing else...
    assert without.identities() == full.identities() - own
    # ...nothing that names it is left, and it left the configuration (beat stops scheduling it).
    assert without.labelled(domain) == []
    for kind, name in without.identities():
        assert not name.endswith(f"-{domain}"), (kind, name)
    assert domain not in without.config()["domains"]
    assert f"backup.{domain}" not in str(without.objects)
    assert without.values["domains"][domain]["secretName"] not in str(without.objects)


def test_disabling_every_domain_leaves_only_shared_objects() -> None:
    rendered = render({"domains": {d: {"enabled": False} for d in DOMAINS}})
    assert rendered.workers() == {}
    assert rendered.config()["domains"] == {}
    assert all(DOMAIN_LABEL not in labels(o) for o in rendered.objects)


def test_an_unknown_domain_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"domains\.uk is not a regulatory domain"):
        render({"domains": {"uk": {"enabled": True}}})


def test_a_pool_without_node_regions_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"domains\.eu\.nodeRegions is empty"):
        render({"domains": {"eu": {"nodeRegions": []}}})
