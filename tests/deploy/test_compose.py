"""docker-compose.yml: valid Compose, commands that exist, health-checked dependencies, and the
same domain pinning as the chart (each worker its own queue, secrets, spool and stores)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from regionvault.config import parse_config
from tests.deploy.chart import DOMAINS, check_worker_guard, queues, walk_files
from tests.deploy.compose import (
    COMPOSE_CONFIG,
    REPO,
    as_argv,
    check_entry_point,
    compose,
    healthcheck_commands,
    shell_commands,
)

#: the Compose specification's JSON Schema as check-jsonschema ships it (vendored by that
#: package from the compose-spec project), so the test needs no network
COMPOSE_SCHEMA = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"


def regionvault_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the regionvault image (built from the repository's Dockerfile)."""
    return {name: svc for name, svc in doc["services"].items()
            if svc.get("build", {}).get("context") == "." or svc.get("image") == "regionvault:dev"}


def workers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Worker services by the domain they serve."""
    found: dict[str, dict[str, Any]] = {}
    for svc in regionvault_services(doc).values():
        argv = as_argv(svc["command"])
        if argv[:4] == ["celery", "-A", "workers", "worker"]:
            domain = svc["environment"]["REGIONVAULT_DOMAIN"]
            assert domain not in found, f"two worker services for domain {domain}"
            found[domain] = svc
    return found


def config() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_CONFIG.read_text())


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    validator.validate(compose())
    # the schema is not vacuous: a misspelt key is refused
    broken = compose()
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def test_regionvault_services_run_only_entry_points_of_this_package() -> None:
    doc = compose()
    services = regionvault_services(doc)
    assert set(services) == {f"worker-{d}" for d in DOMAINS} | {"beat", "flower"}
    ran = set()
    for name, svc in services.items():
        assert "entrypoint" not in svc, f"{name} overrides the image's entrypoint"
        ran.add(check_entry_point(as_argv(svc["command"])))
        test = svc.get("healthcheck", {}).get("test")
        if test is not None:
            for argv in healthcheck_commands(test):
                assert check_entry_point(argv) == "celery inspect", argv
    assert ran == {"celery worker", "celery beat", "regionvault"}
    assert as_argv(services["flower"]["command"])[:2] == ["regionvault", "flower"]


def test_the_entry_point_check_refuses_what_does_not_exist() -> None:
    with pytest.raises(AssertionError):
        check_entry_point(["regionvault-worker", "--domain", "eu"])
    with pytest.raises(AssertionError):
        check_entry_point(["celery", "-A", "workers", "scheduler"])
    with pytest.raises(AssertionError):
        check_entry_point(["celery", "-A", "regionvault.workers", "worker"])
    with pytest.raises(AssertionError):
        check_entry_point(["regionvault", "backups"])
    assert check_entry_point(["regionvault", "backup", "--domain", "eu"]) == "regionvault"
    # shell one-liners are read command by command
    assert shell_commands('unset A; exec celery -A workers inspect ping -d "eu@$H"') == [
        ["celery", "-A", "workers", "inspect", "ping", "-d", "eu@$H"]]
    (sleep,) = shell_commands("sleep 5")
    with pytest.raises(AssertionError):
        check_entry_point(sleep)


def test_one_worker_per_domain_consumes_exactly_its_queue() -> None:
    doc = compose()
    pools = workers(doc)
    assert set(pools) == set(DOMAINS)
    for domain, svc in pools.items():
        argv = as_argv(svc["command"])
        assert queues(argv) == [f"backup.{domain}"]
        assert argv[argv.index("-n") + 1] == f"{domain}@%h"
        check_worker_guard(domain, queues(argv))
        # soft shutdown: SIGTERM becomes it, and Compose waits longer than it
        settings = argv[argv.index("--") + 1:]
        (soft,) = [int(s.split("=")[1]) for s in settings if s.startswith("worker.soft_shutdown")]
        assert svc["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
        assert int(svc["stop_grace_period"].rstrip("s")) > soft


def test_every_service_a_worker_depends_on_has_a_health_check() -> None:
    doc = compose()
    for domain, svc in workers(doc).items():
        dependencies = svc["depends_on"]
        assert set(dependencies) == {"redis", "postgres", "s3", f"gcs-{domain}"}
        for dependency, how in dependencies.items():
            assert how["condition"] == "service_healthy", (domain, dependency)
            assert doc["services"][dependency].get("healthcheck", {}).get("test"), dependency
    # and nothing anywhere waits on a health check that does not exist
    for name, svc in doc["services"].items():
        for dependency, how in (svc.get("depends_on") or {}).items():
            if how.get("condition") == "service_healthy":
                assert doc["services"][dependency].get("healthcheck"), (name, dependency)


def test_each_worker_gets_only_its_own_domains_secrets() -> None:
    doc = compose()
    cfg = config()
    for domain, svc in workers(doc).items():
        granted = set(svc["secrets"])
        assert all(s.startswith(f"{domain}-") for s in granted), granted
        # every secret file the configuration names for this domain is granted to its worker
        named = {path.removeprefix("/run/secrets/") for path in walk_files(cfg["domains"][domain])}
        assert named == granted
    for name, svc in doc["services"].items():
        if name.startswith("worker-"):
            continue
        for secret in svc.get("secrets", []):
            assert not secret.endswith(("-key", "-dsn")), f"{name} holds domain secret {secret}"


def test_each_worker_has_its_own_spool_and_gcs() -> None:
    doc = compose()
    cfg = config()
    for domain, svc in workers(doc).items():
        spools = [v for v in svc["volumes"] if isinstance(v, str) and v.startswith("spool-")]
        assert spools == [f"spool-{domain}:/var/lib/regionvault/spool/{domain}"]
        endpoint = urlsplit(svc["environment"]["REGIONVAULT_GCS_ENDPOINT"])
        emulator = doc["services"][endpoint.hostname]
        assert endpoint.hostname == f"gcs-{domain}"
        assert emulator["environment"]["BUCKET"] == cfg["domains"][domain]["gcs_bucket"]
        assert emulator["environment"]["LOCATION"].lower() == cfg["domains"][domain]["gcp_location"]
    for volume in {v.split(":")[0] for s in doc["services"].values()
                   for v in s.get("volumes", []) if isinstance(v, str)}:
        if not volume.startswith("."):
            assert volume in doc["volumes"], f"{volume} is not a named volume"


def test_s3_buckets_are_the_configurations_in_their_regions() -> None:
    wanted = {f"{d}:{c['s3_bucket']}:{c['aws_region']}" for d, c in config()["domains"].items()}
    created = set(compose()["services"]["s3"]["environment"]["RV_S3_BUCKETS"].split())
    assert created == wanted


def test_compose_configuration_is_valid_for_every_worker() -> None:
    doc = compose()
    image_env = DockerfileParser(path=str(REPO / "Dockerfile")).envs
    for name, svc in regionvault_services(doc).items():
        mounts = [v for v in svc["volumes"] if v.endswith(":ro") and "regionvault.yaml" in v]
        source, target, _ = mounts[0].split(":")
        assert (REPO / source).resolve() == COMPOSE_CONFIG
        assert target == image_env["REGIONVAULT_CONFIG"], name
        overrides = {k: v for k, v in svc.get("environment", {}).items()
                     if k.startswith("REGIONVAULT_")}
        parsed = parse_config(config(), origin=f"{COMPOSE_CONFIG} in {name}", env=overrides)
        assert parsed.development is True
        assert {d.value for d in parsed.domains} == set(DOMAINS)


def test_no_secret_is_written_into_the_compose_file() -> None:
    doc = compose()
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b|BASIC_AUTH|DSN", re.IGNORECASE)
    for name, svc in doc["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if secretish.search(key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), (name, key)
        assert not re.search(r"postgres(ql)?://[^@/\s]+:[^@/\s]+@", json.dumps(svc)), name
    for secret in doc["secrets"].values():
        assert secret["file"].startswith("./deploy/compose/secrets/")
    ignored = (REPO / "deploy" / "compose" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored


def test_postgres_init_scripts_run_as_programs() -> None:
    """The postgres image runs an executable *.sh in docker-entrypoint-initdb.d and sources a
    non-executable one (whose `set -u` would then leak into the image's own entrypoint)."""
    postgres = compose()["services"]["postgres"]
    # postgres:18 keeps its data in /var/lib/postgresql/18/docker, under its VOLUME
    assert "postgres-data:/var/lib/postgresql" in postgres["volumes"]
    (init,) = [v for v in postgres["volumes"] if v.endswith(":/docker-entrypoint-initdb.d:ro")]
    scripts = sorted((REPO / init.split(":")[0]).glob("*.sh"))
    assert scripts
    for script in scripts:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        text = script.read_text()
        # one role per domain, owning only that domain's databases
        assert f"for domain in {' '.join(DOMAINS)}; do" in text
        assert "REVOKE ALL ON DATABASE" in text


def test_init_secrets_creates_every_secret_compose_reads(tmp_path: Path) -> None:
    script = tmp_path / "init-secrets.sh"
    shutil.copy(REPO / "deploy" / "compose" / "init-secrets.sh", script)
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=30)
    created = tmp_path / "secrets"
    doc = compose()
    for secret in doc["secrets"].values():
        path = created / Path(secret["file"]).name
        assert path.read_text().strip(), path
        assert path.stat().st_mode & 0o004  # readable by the containers' own users
    for domain in DOMAINS:
        assert len(base64.b64decode((created / f"{domain}.key").read_text())) == 32
        dsn = (created / f"{domain}-accounts.dsn").read_text().strip()
        assert urlsplit(dsn).path == f"/{domain}_accounts"
        assert urlsplit(dsn).username == f"rv_{domain}"
    assert (created.stat().st_mode & 0o777) == 0o700
    flower_env = doc["services"]["flower"]["env_file"][0]
    flower_secret = (created / Path(flower_env).name).read_text()
    assert flower_secret.startswith("REGIONVAULT_FLOWER_BASIC_AUTH=operator:")
    before = {p.name: p.read_text() for p in created.iterdir()}
    subprocess.run(["sh", str(script)], check=True, capture_output=True, timeout=30)
    assert {p.name: p.read_text() for p in created.iterdir()} == before  # kept, not replaced
