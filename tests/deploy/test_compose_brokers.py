"""docker-compose.per-domain-brokers.yml over docker-compose.yml: a Redis, a beat and a Flower
per domain, each domain's containers on a network of their own, connected only to their own
domain's Redis.

The two files are merged here by the Compose specification's rules (tests/deploy/compose.py,
checked against the specification's own examples below); what each container connects to is
asked of regionvault's Celery app, started with the container's configuration file and
environment, as in tests/deploy/test_chart_brokers.py.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from regionvault.config import parse_config
from tests.deploy.chart import DOMAINS, ProcessView, check_worker_guard, process_view, queues
from tests.deploy.compose import (
    COMPOSE_CONFIG,
    PER_DOMAIN_CONFIG,
    REPO,
    as_argv,
    check_entry_point,
    compose,
    enabled_services,
    env_after_script,
    healthcheck_commands,
    load_compose_text,
    merge_compose,
    per_domain_compose,
)

COMPOSE_SCHEMA = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
REDIS = {f"redis-{d}" for d in DOMAINS}


def served_domain(svc: dict[str, Any]) -> str | None:
    return (svc.get("environment") or {}).get("REGIONVAULT_DOMAIN")


def regionvault_containers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in enabled_services(doc).items() if s.get("image") == "regionvault:dev"}


def mounted_config(svc: dict[str, Any]) -> str:
    (mount,) = [v for v in svc["volumes"] if v.split(":")[1] == "/etc/regionvault/config.yaml"]
    return (REPO / mount.split(":")[0]).resolve().read_text()


def container_view(svc: dict[str, Any], env: dict[str, str] | None = None) -> ProcessView:
    """Where the regionvault process of a Compose service connects."""
    environment = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
    return process_view(mounted_config(svc), environment if env is None else env)


# --- the merge itself follows the specification's examples --------------------------------------


def test_the_merge_follows_the_compose_specifications_rules() -> None:
    def merged(base: str, override: str) -> Any:
        return merge_compose(yaml.safe_load(base), load_compose_text(override))

    assert merged("services: {foo: {key1: value1, key2: value2}}",
                  "services: {foo: {key2: VALUE, key3: value3}}") == {
        "services": {"foo": {"key1": "value1", "key2": "VALUE", "key3": "value3"}}}
    assert merged("services: {foo: {dns: [1.1.1.1]}}", "services: {foo: {dns: [8.8.8.8]}}") == {
        "services": {"foo": {"dns": ["1.1.1.1", "8.8.8.8"]}}}
    assert merged('services: {foo: {command: ["echo", "foo"]}}',
                  'services: {foo: {command: ["echo", "bar"]}}') == {
        "services": {"foo": {"command": ["echo", "bar"]}}}
    assert merged("services: {foo: {volumes: ['foo:/work', 'x:/keep']}}",
                  "services: {foo: {volumes: ['bar:/work']}}") == {
        "services": {"foo": {"volumes": ["bar:/work", "x:/keep"]}}}
    assert merged("services: {foo: {ports: ['127.0.0.1:80:80', '443:443']}}",
                  "services: {foo: {ports: ['127.0.0.1:80:80/tcp', '8080:80']}}") == {
        "services": {"foo": {"ports": ["127.0.0.1:80:80/tcp", "443:443", "8080:80"]}}}
    assert merged("services: {foo: {depends_on: {a: {}, b: {}}}}",
                  "services: {foo: {depends_on: !override {c: {}}}}") == {
        "services": {"foo": {"depends_on": {"c": {}}}}}
    assert merged("services: {foo: {depends_on: {a: {}}, ports: ['80:80']}}",
                  "services: {foo: {depends_on: {c: {}}, ports: !reset []}}") == {
        "services": {"foo": {"depends_on": {"a": {}, "c": {}}}}}
    with pytest.raises(AssertionError, match="cannot merge"):
        merged("services: {foo: {environment: {A: '1'}}}",
               "services: {foo: {environment: ['B=2']}}")


# --- the per-domain stack ------------------------------------------------------------------------


def test_the_per_domain_stack_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    doc = per_domain_compose()
    validator.validate(doc)
    # and what Compose would refuse at start: a dependency that is not started, a network or
    # a named volume that is not declared
    started = enabled_services(doc)
    for name, svc in started.items():
        for dependency, how in (svc.get("depends_on") or {}).items():
            assert dependency in started, (name, dependency)
            if how.get("condition") == "service_healthy":
                assert started[dependency].get("healthcheck", {}).get("test"), dependency
        for network in svc.get("networks", []):
            assert network in doc["networks"], (name, network)
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(".") or source in doc["volumes"], (name, volume)


def test_each_domain_has_its_own_redis_beat_and_flower_and_nothing_shared_runs() -> None:
    started = enabled_services(per_domain_compose())
    for domain in DOMAINS:
        assert started[f"redis-{domain}"]["image"].startswith("redis:")
        assert served_domain(started[f"beat-{domain}"]) == domain
        assert served_domain(started[f"flower-{domain}"]) == domain
    assert not {"redis", "beat", "flower"} & set(started)
    beats = [n for n, s in regionvault_containers(per_domain_compose()).items()
             if as_argv(s["command"])[:4] == ["celery", "-A", "workers", "beat"]]
    assert sorted(beats) == sorted(f"beat-{d}" for d in DOMAINS)


def test_each_domains_containers_reach_only_their_own_redis() -> None:
    doc = per_domain_compose()
    started = enabled_services(doc)
    containers = regionvault_containers(doc)
    assert {served_domain(s) for s in containers.values()} == set(DOMAINS)
    for name, svc in containers.items():
        domain = served_domain(svc)
        assert domain is not None, f"{name} serves no domain"
        own = f"redis-{domain}"
        view = container_view(svc)
        assert view.broker_url == view.result_backend == f"redis://{own}:6379/0", name
        # it waits for its own Redis only, and shares a network with no other domain's
        assert {d for d in svc.get("depends_on", {}) if d.startswith("redis")} == {own}, name
        assert svc["networks"] == [f"domain-{domain}"], name
        neighbours = {n for n, s in started.items()
                      if set(s.get("networks", [])) & set(svc["networks"])}
        assert neighbours & (REDIS | {"redis"}) == {own}, (name, neighbours)
        assert not {f"gcs-{d}" for d in DOMAINS if d != domain} & neighbours, (name, neighbours)
        for other in set(DOMAINS) - {domain}:
            assert f"redis-{other}" not in json.dumps(svc), (name, other)
        check_entry_point(as_argv(svc["command"]))


def test_a_domains_beat_publishes_only_that_domains_schedule() -> None:
    started = enabled_services(per_domain_compose())
    for domain in DOMAINS:
        view = container_view(started[f"beat-{domain}"])
        assert {(d, q) for _, d, q in view.beat} == {(domain, f"backup.{domain}")}
        assert f"backup-{domain}" in {n for n, _, _ in view.beat}


def test_a_domains_flower_serves_that_domain_where_the_configuration_says() -> None:
    doc = per_domain_compose()
    config = yaml.safe_load(PER_DOMAIN_CONFIG.read_text())
    published = set()
    for domain in DOMAINS:
        svc = enabled_services(doc)[f"flower-{domain}"]
        argv = as_argv(svc["command"])
        assert argv[:2] == ["regionvault", "flower"] and f"--domain={domain}" in argv
        assert svc["env_file"] == compose()["services"]["flower"]["env_file"]  # its auth
        (port,) = svc["ports"]
        host_ip, host_port, container_port = port.split(":")
        assert f"--port={container_port}" in argv and host_ip == "127.0.0.1"
        assert config["domains"][domain]["flower_url"] == f"http://127.0.0.1:{host_port}"
        published.add(host_port)
    assert len(published) == len(DOMAINS)


def test_worker_health_checks_ask_on_the_workers_own_redis() -> None:
    started = enabled_services(per_domain_compose())
    for domain in DOMAINS:
        svc = started[f"worker-{domain}"]
        argv = as_argv(svc["command"])
        check_worker_guard(domain, queues(argv))
        kind, script = svc["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        (ping,) = healthcheck_commands(svc["healthcheck"]["test"])
        assert ping[:5] == ["celery", "-A", "workers", "inspect", "ping"]
        env = env_after_script({k: str(v) for k, v in svc["environment"].items()}, script)
        assert container_view(svc, env).broker_url == f"redis://redis-{domain}:6379/0"
    # the check is not vacuous: a ping without the domain would ask on no broker of the stack
    unset = env_after_script({"REGIONVAULT_DOMAIN": "eu"}, "unset REGIONVAULT_DOMAIN; exec x")
    assert container_view(started["worker-eu"], unset).broker_url != "redis://redis-eu:6379/0"


def test_the_per_domain_configuration_is_the_base_plus_each_domains_broker() -> None:
    base = yaml.safe_load(COMPOSE_CONFIG.read_text())
    variant = yaml.safe_load(PER_DOMAIN_CONFIG.read_text())
    assert set(variant["domains"]) == set(base["domains"]) == set(DOMAINS)
    added = {"broker_url", "flower_url"}
    for domain in DOMAINS:
        assert set(variant["domains"][domain]) - set(base["domains"][domain]) == added
        host = urlsplit(variant["domains"][domain]["broker_url"]).hostname
        assert host == f"redis-{domain}"
    stripped = {**variant, "domains": {d: {k: v for k, v in c.items() if k not in added}
                                       for d, c in variant["domains"].items()}}
    assert stripped == {k: v for k, v in base.items() if k != "broker_url"}
    config = parse_config(variant, origin=str(PER_DOMAIN_CONFIG), env={})
    assert config.shared_broker_domains() == []


def test_each_domains_containers_hold_only_that_domains_secrets_and_volumes() -> None:
    for name, svc in regionvault_containers(per_domain_compose()).items():
        domain = served_domain(svc)
        assert domain is not None, name
        for secret in svc.get("secrets", []):
            assert secret.startswith(f"{domain}-"), (name, secret)
        named = [v.split(":")[0] for v in svc.get("volumes", []) if not v.startswith(".")]
        for volume in named:
            assert volume in {f"spool-{domain}", f"beat-{domain}-data"}, (name, volume)
