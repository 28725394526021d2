"""docker-compose.tracing.yml over docker-compose.yml: an OpenTelemetry Collector, and the
standard OTEL_* variables on the workers, beat and Flower, which turn tracing on exactly as
regionvault decides it (``regionvault.tracing.enabled_by_env``); without the override it is
off everywhere. The files are merged by the Compose specification's rules
(tests/deploy/compose.py) and validated against the specification's schema; no Docker engine
is needed.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from regionvault import tracing
from tests.deploy.compose import REPO, compose, enabled_services, load_compose_text, merge_compose

COMPOSE_SCHEMA = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
TRACING_FILE = REPO / "docker-compose.tracing.yml"
COLLECTOR = "otel-collector"
TRACED = {"worker-us", "worker-eu", "worker-au", "beat", "flower"}


def override() -> dict[str, Any]:
    return load_compose_text(TRACING_FILE.read_text())


def traced_compose() -> dict[str, Any]:
    """What ``docker compose -f docker-compose.yml -f docker-compose.tracing.yml`` sees."""
    return merge_compose(compose(), override())


def environment(svc: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def collector_config() -> dict[str, Any]:
    (mount,) = traced_compose()["services"][COLLECTOR]["volumes"]
    source, target, *_ = mount.split(":")
    assert target == "/etc/otelcol-contrib/config.yaml"
    return yaml.safe_load((REPO / source).resolve().read_text())


def test_the_merged_files_and_the_override_follow_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    validator.validate(traced_compose())
    validator.validate(yaml.safe_load(TRACING_FILE.read_text()))
    broken = traced_compose()
    broken["services"][COLLECTOR]["imgae"] = broken["services"][COLLECTOR].pop("image")
    assert list(validator.iter_errors(broken))


def test_the_collector_image_is_pinned_to_a_version() -> None:
    image = traced_compose()["services"][COLLECTOR]["image"]
    name, _, tag = image.partition(":")
    assert name == "otel/opentelemetry-collector-contrib"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned to a version tag"


def test_the_collector_receives_otlp_http_and_prints_traces_with_the_debug_exporter() -> None:
    config = collector_config()
    http = config["receivers"]["otlp"]["protocols"]["http"]
    assert urlsplit(f"//{http['endpoint']}").port == 4318
    assert "debug" in config["exporters"]
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    assert "debug" in pipeline["exporters"]
    for kind in ("receivers", "processors", "exporters"):
        for component in pipeline.get(kind, []):
            assert component in config[kind], f"{kind} {component} is not defined"


def test_workers_beat_and_flower_send_to_the_collector_over_http_protobuf() -> None:
    doc = traced_compose()
    services = enabled_services(doc)
    for name in TRACED:
        env = environment(services[name])
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf", name
        endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == (
            "http", COLLECTOR, 4318), name
        assert tracing.enabled_by_env(env), name
        assert COLLECTOR in services[name]["depends_on"], name
    # what the base file said stays: each worker still serves its own domain
    for domain in ("us", "eu", "au"):
        assert environment(services[f"worker-{domain}"])["REGIONVAULT_DOMAIN"] == domain
    # nothing else is traced, and the collector gets no secrets
    for name, svc in services.items():
        if name not in TRACED:
            assert not tracing.enabled_by_env(environment(svc)), name
    assert "secrets" not in services[COLLECTOR] and "env_file" not in services[COLLECTOR]


def test_without_the_override_tracing_is_off_in_every_container() -> None:
    for name, svc in enabled_services(compose()).items():
        assert not tracing.enabled_by_env(environment(svc)), name
        assert not any(k.startswith("OTEL_") for k in environment(svc)), name
