"""The broker topologies of the chart, read off the rendered manifests and checked against
what regionvault's own Celery app does with them.

With ``broker.perDomain`` every domain's worker, beat and Flower is started with its
``REGIONVAULT_DOMAIN``, and the app (workers/app.py, imported in a fresh interpreter with the
rendered configuration and the pod's environment) connects it to that domain's broker and no
other; its NetworkPolicy allows that broker and no other; its KEDA trigger reads that broker.
A domain broker's password comes from a Secret of that domain alone
(``domains.<d>.broker.existingSecret``), as ``REGIONVAULT_BROKER_URL_<D>`` in that domain's pods
and a TriggerAuthentication of that domain's KEDA trigger, never in another domain's pods nor in
the ConfigMap. Without it, one broker, one beat and one Flower serve every domain, as before.
"""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import helm_python as helm
import pytest
import typer.main
import yaml

from regionvault.config import parse_config
from regionvault.domains import DOMAIN_TABLE, Domain
from tests.deploy.chart import (
    DOMAIN_LABEL,
    DOMAINS,
    REGION_LABEL,
    Obj,
    Rendered,
    argv,
    container,
    container_env_values,
    env,
    host_port,
    labels,
    merged,
    pod_process_view,
    pod_spec,
    process_view,
    production_shared_values,
    production_values,
    render,
    secret_names,
    secret_placeholder,
)
from tests.deploy.compose import env_after_script, shell_commands

PER_DOMAIN: dict[str, dict[str, Any]] = {
    "production": production_values(),
    "defaults-per-domain": {"broker": {"perDomain": True}},
    "per-domain-au-disabled-eu-own-backend": {
        "broker": {"perDomain": True},
        "domains": {"au": {"enabled": False},
                    "eu": {"broker": {"resultBackend": "redis://regionvault-results-eu:6380/1"}}},
    },
    # eu's result backend on a Redis of its own, with its own password; us's without a Secret
    "production-eu-backend-secret-us-open": merged(production_values(), {"domains": {
        "eu": {"broker": {"resultBackend": "redis://regionvault-results-eu.backups.svc:6380/1",
                          "resultBackendKey": "result-backend"}},
        "us": {"broker": {"existingSecret": ""}}}}),
}
SHARED: dict[str, dict[str, Any]] = {
    "defaults": {},
    "production-shared-broker": production_shared_values(),
}


BROKER_ENV = ("REGIONVAULT_BROKER_URL", "REGIONVAULT_RESULT_BACKEND")


def password_of(domain: str) -> str:
    """The password of a domain's broker in these tests."""
    return f"pw-of-{domain}-broker"


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f":{password}@{parts.netloc}"))


def broker_secrets(values: dict[str, Any]) -> dict[tuple[str, str], str]:
    """What the test puts into each domain's broker Secret: its URLs with that domain's
    password, and the bare password for KEDA."""
    held: dict[tuple[str, str], str] = {}
    for domain, d in values["domains"].items():
        b = d["broker"]
        if not b["existingSecret"]:
            continue
        held[(b["existingSecret"], b["urlKey"])] = with_password(b["url"], password_of(domain))
        if b["resultBackendKey"]:
            held[(b["existingSecret"], b["resultBackendKey"])] = with_password(
                b["resultBackend"], password_of(domain))
        if b["passwordKey"]:
            held[(b["existingSecret"], b["passwordKey"])] = password_of(domain)
    return held


def expected_urls(values: dict[str, Any], domain: str) -> tuple[str, str]:
    """Broker and result backend a process of ``domain`` must connect to, read off the
    values alone: with a Secret, its URLs with the password the test put there."""
    b = values["domains"][domain]["broker"]
    broker, backend = b["url"], b["resultBackend"]
    if b["existingSecret"]:
        broker = with_password(broker, password_of(domain))
        if b["resultBackendKey"]:
            backend = with_password(backend, password_of(domain))
    return broker, backend or broker


def broker_env(c: Obj) -> dict[str, Obj]:
    """A container's variables that say where a broker is (shared or a domain's)."""
    return {name: e for name, e in env(c).items() if name.startswith(BROKER_ENV)}


def own_hosts(rendered: Rendered, domain: str) -> set[str]:
    """host:port of a domain's broker and result backend, as the values give them."""
    broker = rendered.values["domains"][domain]["broker"]
    return {host_port(url) for url in (broker["url"], broker["resultBackend"]) if url}


def egress_peers(policy: Obj) -> list[Obj]:
    return [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", [])]


def assert_pinned(rendered: Rendered, domain: str, deployment: Obj) -> None:
    """The pods of ``deployment`` serve ``domain`` and reach its broker and no other: the
    process connects there (with the password of its own broker's Secret, if it has one),
    nothing in the pod names another domain's broker or its Secret, and its NetworkPolicy lets
    it reach its own broker's peers, on its port, and no other's."""
    name = deployment["metadata"]["name"]
    assert labels(deployment)[DOMAIN_LABEL] == domain, name
    (c,) = pod_spec(deployment)["containers"]
    assert env(c)["REGIONVAULT_DOMAIN"]["value"] == domain, name
    config = rendered.config()["domains"][domain]
    own = rendered.values["domains"][domain]["broker"]
    # the ConfigMap names the broker without credentials; the process, started with the
    # pod's environment and Secrets holding what broker_secrets says, connects with them
    assert config["broker_url"] == own["url"], name
    assert config.get("result_backend", "") == own["resultBackend"], name
    view = pod_process_view(rendered, deployment, broker_secrets(rendered.values))
    assert (view.broker_url, view.result_backend) == expected_urls(rendered.values, domain), name
    mine = own_hosts(rendered, domain)
    assert {host_port(view.broker_url), host_port(view.result_backend)} <= mine, name
    # its own broker's Secret and no other: exactly REGIONVAULT_BROKER_URL_<D> (and
    # REGIONVAULT_RESULT_BACKEND_<D>) from it, only when it has one
    expected_env = {}
    if own["existingSecret"]:
        expected_env[f"REGIONVAULT_BROKER_URL_{domain.upper()}"] = own["urlKey"]
        if own["resultBackendKey"]:
            expected_env[f"REGIONVAULT_RESULT_BACKEND_{domain.upper()}"] = own["resultBackendKey"]
    refs = {var: e["valueFrom"]["secretKeyRef"] for var, e in broker_env(c).items()}
    assert {var: ref["key"] for var, ref in refs.items()} == expected_env, name
    assert {ref["name"] for ref in refs.values()} <= {own["existingSecret"]}, name
    others = set(DOMAINS) - {domain}
    theirs = {s for o in others for s in (rendered.values["domains"][o]["secretName"],
                                          rendered.values["domains"][o]["broker"]["existingSecret"])}
    assert not secret_names(deployment) & (theirs - {""}), name
    for other in others:
        assert password_of(other) not in view.broker_url + view.result_backend, (name, other)
    text = json.dumps(deployment)
    for other in others:
        for hp in own_hosts(rendered, other):
            assert hp.split(":")[0] not in text, (name, other, hp)
    # the network: its own broker's peers on its port, never another domain's broker
    (policy,) = rendered.policies_for(deployment)
    peers = egress_peers(policy)
    port = host_port(own["url"]).split(":")[1]
    assert {"to": own["networkPeers"],
            "ports": [{"protocol": "TCP", "port": int(port)}]} in policy["spec"]["egress"], name
    for other in others:
        for peer in rendered.values["domains"][other]["broker"]["networkPeers"]:
            assert peer not in peers, (name, other, peer)
    for peer in rendered.values["broker"]["networkPeers"]:  # nor the (unused) shared one
        assert peer not in peers or peer in own["networkPeers"], (name, peer)


@pytest.fixture(params=list(PER_DOMAIN))
def per_domain(request: pytest.FixtureRequest) -> Rendered:
    return render(PER_DOMAIN[request.param])


def test_every_domain_has_its_own_worker_beat_and_flower(per_domain: Rendered) -> None:
    enabled = per_domain.enabled_domains()
    assert set(per_domain.workers()) == enabled
    assert set(per_domain.served("beat")) == enabled
    assert set(per_domain.served("flower")) == enabled
    # and no shared scheduler or Flower is left over
    assert None not in per_domain.served("beat") and None not in per_domain.served("flower")


def test_each_domains_pods_reach_only_their_own_broker(per_domain: Rendered) -> None:
    checked = 0
    for component in ("worker", "beat", "flower"):
        for deployment in per_domain.deployments(component):
            assert_pinned(per_domain, labels(deployment)[DOMAIN_LABEL], deployment)
            checked += 1
    assert checked == 3 * len(per_domain.enabled_domains())


def test_a_domains_beat_publishes_only_that_domains_schedule(per_domain: Rendered) -> None:
    for domain, beat in per_domain.served("beat").items():
        assert domain is not None
        view = pod_process_view(per_domain, beat)
        assert view.beat, f"the beat of {domain} would publish nothing"
        assert {(d, q) for _, d, q in view.beat} == {(domain, f"backup.{domain}")}
        names = {name for name, _, _ in view.beat}
        assert {f"reconcile-{domain}", f"expire-{domain}"} <= names
        if per_domain.values["domains"][domain]["sources"]:
            assert f"backup-{domain}" in names


def test_a_domains_flower_serves_that_domain(per_domain: Rendered) -> None:
    for domain, flower in per_domain.served("flower").items():
        args = argv(container(flower, "flower"))
        assert args[:2] == ["regionvault", "flower"]
        assert f"--domain={domain}" in args


def test_a_domains_beat_and_flower_run_inside_the_domain(per_domain: Rendered) -> None:
    for component in ("beat", "flower"):
        for domain, deployment in per_domain.served(component).items():
            assert domain is not None
            affinity = pod_spec(deployment)["affinity"]["nodeAffinity"]
            terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            for term in terms["nodeSelectorTerms"]:
                (expression,) = [e for e in term["matchExpressions"] if e["key"] == REGION_LABEL]
                regions = per_domain.values["domains"][domain]["nodeRegions"]
                assert expression == {"key": REGION_LABEL, "operator": "In", "values": regions}
                table = DOMAIN_TABLE[Domain(domain)]
                assert set(regions) <= table.allowed_aws_regions | table.allowed_gcp_locations


def test_the_configuration_names_each_domains_own_broker(per_domain: Rendered) -> None:
    config = parse_config(per_domain.config(), origin="the chart's ConfigMap", env={})
    assert config.shared_broker_domains() == []
    hosts = set()
    for domain in config.domains:
        broker = per_domain.values["domains"][domain.value]["broker"]
        assert config.has_own_broker(domain)
        assert config.broker_for(domain) == broker["url"]
        assert config.backend_for(domain) == (broker["resultBackend"] or broker["url"])
        hosts.add(host_port(broker["url"]))
    assert len(hosts) == len(config.domains)
    # no shared broker is written: every process of the chart serves one domain
    assert "broker_url" not in per_domain.config()
    assert "result_backend" not in per_domain.config()


@pytest.mark.parametrize("name", [*PER_DOMAIN, *SHARED])
def test_worker_probes_ping_the_worker_on_its_own_broker(name: str) -> None:
    """Each probe is `celery inspect ping` in the worker's container: it must ask on the
    broker the worker consumes from, or every probe of every pod fails."""
    rendered = render({**PER_DOMAIN, **SHARED}[name])
    configmap = rendered.config_map()
    secrets = broker_secrets(rendered.values)
    for domain, deployment in rendered.workers().items():
        worker = container(deployment, "worker")
        own = pod_process_view(rendered, deployment, secrets)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            shell, flag, script = worker[probe]["exec"]["command"]
            assert (shell, flag) == ("sh", "-c")
            (ping,) = shell_commands(script)
            assert ping[:5] == ["celery", "-A", "workers", "inspect", "ping"]
            probe_env = env_after_script(container_env_values(worker, secrets), script)
            view = process_view(configmap["data"]["config.yaml"], probe_env)
            assert view.broker_url == own.broker_url, (name, domain, probe)
            if rendered.per_domain_brokers():  # with its own broker's password, if any
                assert view.broker_url == expected_urls(rendered.values, domain)[0]
    # not vacuous: with broker.perDomain a ping that drops the domain asks on no broker of it
    rendered = render(production_values())
    worker = container(rendered.workers()["eu"], "worker")
    probe_env = env_after_script(container_env_values(worker), "unset REGIONVAULT_DOMAIN; x")
    view = process_view(rendered.config_map()["data"]["config.yaml"], probe_env)
    assert host_port(view.broker_url) not in own_hosts(rendered, "eu")


def test_keda_reads_each_pools_queue_on_its_own_broker() -> None:
    rendered = render(production_values())
    auths = {a["metadata"]["name"]: a for a in rendered.of_kind("TriggerAuthentication")}
    scaled = {labels(s)[DOMAIN_LABEL]: s for s in rendered.of_kind("ScaledObject")}
    assert set(scaled) == {"us", "eu"}  # au runs a fixed number of workers
    for domain, obj in scaled.items():
        (trigger,) = obj["spec"]["triggers"]
        broker = rendered.values["domains"][domain]["broker"]
        url = broker["url"]
        assert trigger["metadata"]["listName"] == f"backup.{domain}"
        assert trigger["metadata"]["address"] == host_port(url)
        assert trigger["metadata"]["databaseIndex"] == "0"
        tls = "true" if url.startswith("rediss:") else "false"
        assert trigger["metadata"]["enableTLS"] == tls
        # the password: from this domain's broker Secret, through a TriggerAuthentication of
        # this domain that no other domain's trigger uses
        auth = auths[trigger["authenticationRef"]["name"]]
        assert labels(auth)[DOMAIN_LABEL] == domain
        assert auth["spec"] == {"secretTargetRef": [
            {"parameter": "password", "name": broker["existingSecret"],
             "key": broker["passwordKey"]}]}
        assert broker_secrets(rendered.values)[(broker["existingSecret"], broker["passwordKey"])] \
            == password_of(domain)
    refs = [s["spec"]["triggers"][0]["authenticationRef"]["name"] for s in scaled.values()]
    assert len(set(refs)) == len(refs) == len(auths)  # one each, none shared, none left over
    assert scaled["eu"]["spec"]["triggers"][0]["metadata"]["enableTLS"] == "true"
    # KEDA's own address of a broker, when its operator reaches it by another name
    rendered = render(merged(production_values(), {"domains": {"us": {"broker": {
        "url": "redis://broker-us:6379/3", "kedaAddress": "broker-us.backups.svc:6379"}}}}))
    scaled = {labels(s)[DOMAIN_LABEL]: s for s in rendered.of_kind("ScaledObject")}
    (trigger,) = scaled["us"]["spec"]["triggers"]
    assert trigger["metadata"]["address"] == "broker-us.backups.svc:6379"
    assert trigger["metadata"]["databaseIndex"] == "3"
    # a broker without a Secret: its trigger connects without a password
    rendered = render(PER_DOMAIN["production-eu-backend-secret-us-open"])
    scaled = {labels(s)[DOMAIN_LABEL]: s for s in rendered.of_kind("ScaledObject")}
    assert "authenticationRef" not in scaled["us"]["spec"]["triggers"][0]
    (auth,) = rendered.of_kind("TriggerAuthentication")
    assert labels(auth)[DOMAIN_LABEL] == "eu"


def test_a_domains_broker_secret_reaches_only_that_domains_pods() -> None:
    """REGIONVAULT_BROKER_URL_<D> from D's broker Secret is in D's worker (and so its probes),
    beat and Flower, and in no pod of another domain; nothing of it is in the ConfigMap."""
    rendered = render(production_values())
    secrets = broker_secrets(rendered.values)
    assert {name for name, _ in secrets} == {f"regionvault-broker-{d}" for d in DOMAINS}
    configmap = rendered.config_map()
    for domain in DOMAINS:
        assert password_of(domain) not in json.dumps(configmap)
    holders: dict[str, set[str]] = {d: set() for d in DOMAINS}
    for deployment in rendered.of_kind("Deployment"):
        served = labels(deployment)[DOMAIN_LABEL]
        (c,) = pod_spec(deployment)["containers"]
        for var, entry in broker_env(c).items():
            ref = entry["valueFrom"]["secretKeyRef"]
            assert (var, ref["name"]) == (f"REGIONVAULT_BROKER_URL_{served.upper()}",
                                          f"regionvault-broker-{served}"), served
            holders[served].add(labels(deployment)["app.kubernetes.io/component"])
        for other in set(DOMAINS) - {served}:
            assert f"regionvault-broker-{other}" not in secret_names(deployment)
        # the process started from this pod connects with its own domain's password
        view = pod_process_view(rendered, deployment, secrets)
        assert urlsplit(view.broker_url).password == password_of(served)
        assert urlsplit(view.result_backend).password == password_of(served)
    assert holders == {d: {"worker", "beat", "flower"} for d in DOMAINS}
    # the result backend's own Secret key, and a domain whose broker has no Secret
    rendered = render(PER_DOMAIN["production-eu-backend-secret-us-open"])
    eu = rendered.workers()["eu"]
    assert set(broker_env(container(eu, "worker"))) == {"REGIONVAULT_BROKER_URL_EU",
                                                        "REGIONVAULT_RESULT_BACKEND_EU"}
    view = pod_process_view(rendered, eu, broker_secrets(rendered.values))
    assert view.result_backend == with_password(
        "redis://regionvault-results-eu.backups.svc:6380/1", password_of("eu"))
    for deployment in rendered.of_kind("Deployment"):
        if labels(deployment)[DOMAIN_LABEL] == "us":
            assert broker_env(pod_spec(deployment)["containers"][0]) == {}
            assert pod_process_view(rendered, deployment).broker_url == \
                "redis://regionvault-broker-us.backups.svc:6379/0"


def test_the_production_example_runs_a_broker_per_domain() -> None:
    values = production_values()
    assert values["broker"]["perDomain"] is True
    rendered = render(values)
    config = rendered.config()
    assert {d: c["flower_url"] for d, c in config["domains"].items()} == {
        d: f"https://flower-{d}.backups.example.com/flower" for d in DOMAINS}
    ingresses = {i["spec"]["rules"][0]["host"]: i for i in rendered.of_kind("Ingress")}
    for domain, flower in rendered.served("flower").items():
        ingress = ingresses[f"flower-{domain}.backups.example.com"]
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["name"] == flower["metadata"]["name"]
        assert labels(ingress)[DOMAIN_LABEL] == domain


@pytest.mark.parametrize("name", list(SHARED))
def test_off_keeps_one_shared_broker_beat_and_flower(name: str) -> None:
    rendered = render(SHARED[name])
    assert rendered.brokers() == {None}
    config = rendered.config()
    for domain_config in config["domains"].values():
        assert not {"broker_url", "result_backend", "flower_url"} & set(domain_config)
    (beat,) = rendered.deployments("beat")
    (flower,) = rendered.deployments("flower")
    assert set(rendered.served("beat")) == set(rendered.served("flower")) == {None}
    assert not any(a.startswith("--domain") for a in argv(container(flower, "flower")))
    secret = rendered.values["broker"]["existingSecret"]
    shared = (secret_placeholder(secret, rendered.values["broker"]["urlKey"]) if secret
              else rendered.values["broker"]["url"])
    assert config["broker_url"] == rendered.values["broker"]["url"]
    for deployment in [*rendered.workers().values(), beat, flower]:
        # the domains' broker Secrets (set in the production example) are unused here
        (c,) = pod_spec(deployment)["containers"]
        assert set(broker_env(c)) <= set(BROKER_ENV), deployment["metadata"]["name"]
        view = pod_process_view(rendered, deployment)
        assert view.broker_url == view.result_backend == shared, deployment["metadata"]["name"]
        (policy,) = rendered.policies_for(deployment)
        assert {"to": rendered.values["broker"]["networkPeers"],
                "ports": [{"protocol": "TCP", "port": rendered.values["broker"]["port"]}]} \
            in policy["spec"]["egress"]
    # the one beat publishes every domain's entries, each to that domain's queue
    entries = pod_process_view(rendered, beat).beat
    assert {d for _, d, _ in entries} == rendered.enabled_domains()
    assert all(q == f"backup.{d}" for _, d, q in entries)


def test_the_pinning_check_fails_on_a_pod_that_reaches_another_broker() -> None:
    """assert_pinned is not vacuous: each way a pod could reach another domain's broker fails."""
    rendered = render(production_values())
    beat = rendered.served("beat")["eu"]
    assert_pinned(rendered, "eu", beat)
    # a configuration that sends eu's processes to us's broker: the process says so
    objects = copy.deepcopy(list(rendered.objects))
    (configmap,) = [o for o in objects
                    if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {})]
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    config["domains"]["eu"]["broker_url"] = config["domains"]["us"]["broker_url"]
    configmap["data"]["config.yaml"] = yaml.safe_dump(config)
    misrouted = Rendered(tuple(objects), rendered.notes, rendered.values)
    with pytest.raises(AssertionError):
        assert_pinned(misrouted, "eu", beat)
    # a pod that names another domain's broker anywhere
    flower = copy.deepcopy(rendered.served("flower")["eu"])
    container(flower, "flower")["env"].append(
        {"name": "EXTRA", "value": "redis://regionvault-broker-us.backups.svc:6379/0"})
    with pytest.raises(AssertionError):
        assert_pinned(rendered, "eu", flower)
    # a pod that reads another domain's broker Secret, even under an unused name
    flower = copy.deepcopy(rendered.served("flower")["eu"])
    container(flower, "flower")["env"].append({"name": "UNUSED", "valueFrom": {
        "secretKeyRef": {"name": "regionvault-broker-us", "key": "url"}}})
    with pytest.raises(AssertionError):
        assert_pinned(rendered, "eu", flower)
    # a pod of eu without its broker's credentials: its process connects without a password
    beat = copy.deepcopy(rendered.served("beat")["eu"])
    (c,) = pod_spec(beat)["containers"]
    c["env"] = [e for e in c["env"] if e["name"] != "REGIONVAULT_BROKER_URL_EU"]
    with pytest.raises(AssertionError):
        assert_pinned(rendered, "eu", beat)
    # a NetworkPolicy that also lets eu's pods reach us's broker
    us_peers = rendered.values["domains"]["us"]["broker"]["networkPeers"]
    widened = render(merged(production_values(), {"domains": {"eu": {"networkPolicy": {
        "extraEgress": [{"to": us_peers, "ports": [{"protocol": "TCP", "port": 6379}]}]}}}}))
    with pytest.raises(AssertionError):
        assert_pinned(widened, "eu", widened.workers()["eu"])
    # a domain whose configuration points at another domain's broker
    with pytest.raises(helm.HelmRenderError, match=r"are both regionvault-broker-us"):
        render(merged(production_values(), {"domains": {"au": {"broker": {
            "url": "redis://regionvault-broker-us.backups.svc:6379/1"}}}}))


def test_the_flower_command_takes_the_domain_it_serves() -> None:
    """The chart runs `regionvault flower --domain=D`: the console script has that option."""
    from regionvault_cli import app

    command = typer.main.get_command(app).commands["flower"]  # type: ignore[attr-defined]
    (domain,) = [p for p in command.params if p.name == "domain"]
    assert "--domain" in domain.opts


@pytest.mark.parametrize(("values", "message"), [
    ({"domains": {"eu": {"broker": {"url": "redis://:hunter2@redis-eu:6379/0"}}}},
     r"domains\.eu\.broker\.url carries a user or password"),
    ({"domains": {"eu": {"broker": {"resultBackend": "redis://rv:pw@results-eu:6379/0"}}}},
     r"domains\.eu\.broker\.resultBackend carries a user or password"),
    ({"domains": {"au": {"broker": {"url": "redis://regionvault-redis-eu-master/0"}}}},
     r"domains\.eu\.broker and domains\.au\.broker are both regionvault-redis-eu-master:6379"),
    ({"domains": {"us": {"broker": {"url": "amqp://rabbit-us:5672//"}}}},
     r"domains\.us\.broker\.url must be a redis:// or rediss:// URL"),
    ({"domains": {"us": {"broker": {"url": ""}}}}, r"domains\.us\.broker\.url is empty"),
    ({"domains": {"eu": {"broker": {"url": "rediss://redis-eu:6380/0"}}}},
     r"domains\.eu\.broker\.url is a rediss:// URL without ssl_cert_reqs"),
    ({"domains": {"au": {"broker": {"networkPeers": []}}}},
     r"domains\.au\.broker\.networkPeers is empty"),
    ({"domains": {"eu": {"broker": {"url": "redis://:hunter2@redis-eu:6379/0",
                                    "existingSecret": "regionvault-broker-eu"}}}},
     r"domains\.eu\.broker\.url carries a user or password.*domains\.eu\.broker\.existingSecret"),
    ({"domains": {"eu": {"broker": {"existingSecret": "regionvault-eu"}}}},
     r"domains\.eu\.broker\.existingSecret is regionvault-eu, the domain's own Secret"),
    ({"domains": {"eu": {"broker": {"existingSecret": "regionvault-us"}}}},
     r"domains\.eu\.broker\.existingSecret is regionvault-us, domain us's Secret"),
    ({"domains": {"us": {"broker": {"existingSecret": "regionvault-brokers"}},
                  "au": {"broker": {"existingSecret": "regionvault-brokers"}}}},
     r"domains\.(us|au)\.broker\.existingSecret and domains\.(us|au)\.broker\.existingSecret "
     r"are both regionvault-brokers"),
    ({"domains": {"eu": {"broker": {"existingSecret": "regionvault-broker-eu", "urlKey": ""}}}},
     r"domains\.eu\.broker\.urlKey is empty"),
    ({"domains": {"eu": {"broker": {"existingSecret": "regionvault-broker-eu",
                                    "resultBackendKey": "result-backend"}}}},
     r"domains\.eu\.broker\.resultBackendKey is set but resultBackend is empty"),
    ({"domains": {"eu": {"broker": {"resultBackend": "redis://results-eu:6379/0",
                                    "resultBackendKey": "result-backend"}}}},
     r"domains\.eu\.broker\.resultBackendKey is set but existingSecret is empty"),
    ({"domains": {"eu": {"autoscaling": {"enabled": True}, "broker": {
        "existingSecret": "regionvault-broker-eu", "passwordKey": ""}}}},
     r"domains\.eu\.broker\.passwordKey is empty, but KEDA scales domain eu's pool"),
    ({"broker": {"existingSecret": "regionvault-broker"}}, r"broker\.existingSecret is set"),
    ({"keda": {"passwordSecret": "regionvault-broker"}}, r"keda\.passwordSecret is set"),
    ({"flower": {"ingress": {"enabled": True}}}, r"domains\.us\.flower\.host is empty"),
])
def test_what_a_broker_per_domain_refuses(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(merged({"broker": {"perDomain": True}}, values))


def test_a_disabled_domain_has_no_broker_beat_or_flower() -> None:
    rendered = render(PER_DOMAIN["per-domain-au-disabled-eu-own-backend"])
    assert rendered.labelled("au") == []
    assert "regionvault-redis-au" not in json.dumps(rendered.objects)
    # a disabled domain's broker is not checked either (its values may be anything)
    render({"broker": {"perDomain": True},
            "domains": {"au": {"enabled": False, "broker": {"url": "", "networkPeers": []}}}})
