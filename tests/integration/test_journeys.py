"""The Autopilot Journeys sources end to end: a MariaDB database and a Bigtable instance of
the au domain, backed up by the real au workers to Rackspace Cloud Files (a real Swift
cluster, primary) and GCS (replica), verified, listed and restored from either copy."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
import requests

from regionvault.catalogue import list_backups
from regionvault.compliance import load_schema
from regionvault.config import read_source_dsn
from regionvault.devstack import journeys
from regionvault.devstack.stack import DEV_AWS_ENV, DevStack, environment
from regionvault.domains import Domain
from regionvault.drill import list_reports
from regionvault.errors import NotFound
from regionvault.manifest import BackupRef, Step
from regionvault.manifest_store import keys_of, read_manifest
from regionvault.object_lock import backstop_pii_days
from regionvault.restore import restore
from tests.integration.conftest import running_stack
from tests.integration.helpers import config_of, context, regionvault_cli

pytestmark = pytest.mark.stack

AU = Domain.AU
SOURCES = (journeys.MYSQL_SOURCE, journeys.BIGTABLE_SOURCE)


@pytest.fixture(scope="module")
def journeys_stack() -> Iterator[DevStack]:
    # the in-process reads below use moto's credentials for S3
    with (running_stack("rv-test-journeys-", journeys=True, concurrency=2) as dev,
          environment(DEV_AWS_ENV)):
        yield dev


@pytest.fixture(scope="module")
def backups(journeys_stack: DevStack) -> dict[str, str]:
    """One backup of each Journeys source, through the CLI and the real au workers."""
    made = {}
    for source in SOURCES:
        result = regionvault_cli(journeys_stack, "backup", "--domain", "au", "--source",
                                 source, "--wait")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "verified" in result.stdout
        made[source] = result.stdout.split("backup ", 1)[1].split()[0]
    return made


@pytest.mark.parametrize("source", SOURCES)
def test_a_chain_with_cloud_files_primary_and_gcs_replica_ends_verified(
        journeys_stack: DevStack, backups: dict[str, str], source: str) -> None:
    ctx = context(journeys_stack, AU)
    backup_id = backups[source]
    ref = BackupRef.parse(backup_id)
    src = config_of(journeys_stack).source(AU, source)
    okey, mkey = keys_of(ref, src)
    swift, gcs = ctx.store("swift"), ctx.store("gcs")
    for store in (swift, gcs):
        manifest = read_manifest(ctx, store, mkey)
        assert manifest is not None, f"no manifest in {store.name}"
        assert manifest.verified and Step.VERIFY in manifest.steps
        assert (manifest.primary_store, manifest.replica_store) == ("swift", "gcs")
        assert manifest.source_kind == src.kind
        assert manifest.swift_container == journeys.CONTAINER
        info = store.stat(okey)
        assert (info.size, info.crc32c) == (manifest.ciphertext_size,
                                            manifest.ciphertext_crc32c)
        # encrypted at rest: the sample's e-mail addresses are nowhere in the object
        assert b"@example.au" not in store.get_bytes(okey)
    # Cloud Files has no lifecycle rules: the pii object and its manifest carry their own
    # expiry, the 28-day backstop the S3 and GCS rules hold
    backstop = timedelta(days=backstop_pii_days(config_of(journeys_stack).retention))
    for key in (okey, mkey):
        expires = swift.expires_at(key)  # type: ignore[attr-defined]
        assert expires is not None, f"swift:{key} has no X-Delete-At"
        assert timedelta(0) < expires - datetime.now(UTC) <= backstop
    # and nothing of it went to S3: the Journeys sources are not placed there
    with pytest.raises(NotFound):
        ctx.store("s3").stat(okey)
    assert list(ctx.store("s3").list_keys(f"au/pii/{source}/")) == []


def test_the_catalogue_lists_them_from_cloud_files(journeys_stack: DevStack,
                                                   backups: dict[str, str]) -> None:
    ctx = context(journeys_stack, AU)
    for source, backup_id in backups.items():
        assert backup_id in [m.backup_id for m in list_backups(ctx, source)]
    listed = regionvault_cli(journeys_stack, "list", "--domain", "au", "--source",
                             journeys.MYSQL_SOURCE)
    assert listed.returncode == 0, listed.stderr
    assert backups[journeys.MYSQL_SOURCE].split(".")[-1] in listed.stdout


@pytest.mark.parametrize("store", ["swift", "gcs"])
def test_mysql_restores_identical_from_either_copy(journeys_stack: DevStack,
                                                   backups: dict[str, str], store: str) -> None:
    assert journeys_stack.mariadb is not None
    database = f"restored_from_{store}"
    journeys_stack.mariadb.create_database(database)
    target = journeys_stack.mariadb.root_dsn(database)
    restore(context(journeys_stack, AU), backups[journeys.MYSQL_SOURCE], target,
            from_store=store)
    source_dsn = read_source_dsn(config_of(journeys_stack).source(AU, journeys.MYSQL_SOURCE),
                                 AU)
    expected = journeys.fingerprint_mysql(source_dsn)
    assert expected and journeys.fingerprint_mysql(target) == expected


@pytest.mark.parametrize("store", ["swift", "gcs"])
def test_bigtable_restores_every_cell_from_either_copy(journeys_stack: DevStack,
                                                       backups: dict[str, str],
                                                       store: str) -> None:
    service = journeys_stack.bigtable
    assert service is not None
    target = service.dsn(journeys.BIGTABLE_PROJECT, f"restored-{store}-{os.getpid()}")
    restore(context(journeys_stack, AU), backups[journeys.BIGTABLE_SOURCE], target,
            from_store=store)
    source_dsn = read_source_dsn(
        config_of(journeys_stack).source(AU, journeys.BIGTABLE_SOURCE), AU)
    expected = journeys.fingerprint_bigtable(service, source_dsn)
    assert set(expected) == set(journeys.BIGTABLE_TABLES)
    assert journeys.fingerprint_bigtable(service, target) == expected


def test_a_mysql_drill_restores_into_a_scratch_database_and_counts_every_table(
        journeys_stack: DevStack, backups: dict[str, str]) -> None:
    result = regionvault_cli(journeys_stack, "drill", "--domain", "au", "--source",
                             journeys.MYSQL_SOURCE)
    assert result.returncode == 0, result.stdout + result.stderr
    report = list_reports(context(journeys_stack, AU), limit=1)[0]
    [entry] = report.sources
    assert entry.passed and entry.backup_id == backups[journeys.MYSQL_SOURCE]
    assert entry.row_counts_found == entry.row_counts_expected == {
        "accounts": 300, "journey_steps": 1200}
    assert entry.check is not None and entry.check.passed
    assert entry.store in ("swift", "gcs") and entry.scratch_dropped
    assert journeys_stack.mariadb is not None
    assert not journeys_stack.mariadb.execute(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE "
        "'rv\\\\_drill\\\\_%'")


def test_a_bigtable_drill_says_why_it_cannot_run(journeys_stack: DevStack,
                                                 backups: dict[str, str]) -> None:
    result = regionvault_cli(journeys_stack, "drill", "--domain", "au", "--source",
                             journeys.BIGTABLE_SOURCE)
    assert result.returncode != 0
    report = list_reports(context(journeys_stack, AU), limit=1)[0]
    [entry] = report.sources
    assert not entry.passed
    assert entry.error == (
        "bigtable sources have no database to create for a drill or a disaster recovery run: "
        "restore them with 'regionvault restore --target' into an instance you name")


def test_the_stack_runs_the_pools_it_was_asked_for_and_pins_no_pg_tools(
        journeys_stack: DevStack) -> None:
    # `regionvault dev --concurrency N`: each domain's worker runs N pool processes
    worker = journeys_stack.worker_processes[AU]
    children = [p for p in os.listdir("/proc") if p.isdigit()
                and _parent_of(int(p)) == worker.pid]
    assert len(children) == 2, children
    # the tools are chosen by each server's major: the stack sets no REGIONVAULT_PG_BIN of
    # its own, so one the developer configured reaches the workers unchanged
    assert "REGIONVAULT_PG_BIN" not in journeys_stack.env


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _compliance(stack: DevStack) -> dict[str, Any]:
    result = regionvault_cli(stack, "compliance", "--domain", "au", "--json")
    # exit 3 is expected here: no expiry sweep or integrity sample ran on this stack yet
    assert result.returncode in (0, 3), result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, load_schema())
    [report] = document["domains"]
    return report  # type: ignore[no-any-return]


def test_compliance_judges_cloud_files_by_the_expiry_each_pii_object_carries(
        journeys_stack: DevStack, backups: dict[str, str]) -> None:
    report = _compliance(journeys_stack)
    swift = report["stores"]["swift"]
    assert swift["lifecycle"]["read"] is True
    assert [f["label"] for f in swift["lifecycle"]["found"]] == ["X-Delete-At on every pii object"]
    assert swift["oldest_pii"]["key"].startswith("au/pii/journeys-")
    assert not [f for f in report["findings"]
                if f["store"] == "swift" and f["condition"] == "lifecycle-rules"]

    # a pii object written around regionvault, with no expiry of its own, is named
    service = journeys_stack.swift
    assert service is not None
    stray = "au/pii/journeys-accounts/au.journeys-accounts.20261101T000000Z.0000beef.rvb"
    url = f"{service.storage_url(journeys.SWIFT_REGION)}/{journeys.CONTAINER}/{stray}"
    put = requests.put(url, data=b"x" * 10, headers={"X-Auth-Token": service.token()},
                       timeout=30)
    assert put.status_code == 201, put.text
    try:
        report = _compliance(journeys_stack)
        named = [f for f in report["findings"]
                 if f["store"] == "swift" and f["condition"] == "lifecycle-rules"]
        assert len(named) == 1 and stray in named[0]["message"]
        assert "has no X-Delete-At" in named[0]["message"]
        assert report["compliant"] is False
    finally:
        requests.delete(url, headers={"X-Auth-Token": service.token()}, timeout=30)
