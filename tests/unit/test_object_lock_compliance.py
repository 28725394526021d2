"""Object lock in the compliance report: what each bucket's lock holds against the domain's
``object_lock`` setting, and the ``object-lock`` finding when it falls short.

Memory stores built with a lock mode stand in for the buckets (``object_lock_enabled`` False
models a bucket Object Lock was never enabled on); the rest of the rig is the compliance
tests' own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from rich.console import Console

from regionvault import chain
from regionvault import context as context_module
from regionvault.cli.compliance import _store_table
from regionvault.compliance import ComplianceReport, compliance_document, load_schema
from regionvault.config import SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.expiry import MemorySweepLedger
from regionvault.integrity import MemoryReadLedger
from regionvault.keyring import Keyring
from tests.unit import config_data
from tests.unit.test_chain import KEY_ID, T0, Clock, FakeSource, GCSRole, S3Role
from tests.unit.test_compliance import HOUR, Rig, buckets, conditions


def validate(report: ComplianceReport) -> dict[str, Any]:
    document = compliance_document([report], generated_at=report.as_of)
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(
        json.loads(json.dumps(document)))
    return document


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    data["domains"]["eu"]["object_lock"] = {"mode": "compliance"}
    config = parse_config(data, origin="test", env={})
    clock, store_clock = Clock(T0), Clock(T0)
    s3 = S3Role("rv-eu-primary", "eu-central-1", clock=store_clock, lock_mode="compliance")
    gcs = GCSRole("rv-eu-replica", "europe-west4", clock=store_clock, lock_mode="compliance")
    keyring = Keyring.local_only(Domain.EU, {KEY_ID: os.urandom(32)}, current=KEY_ID)
    ctx = DomainContext(config, Domain.EU, clock=clock, s3=s3, gcs=gcs, keyring=keyring)

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        return FakeSource(name=src.name, between=lambda: None)

    monkeypatch.setattr(chain, "open_source", open_source)
    # Object Lock makes a bucket versioned: it holds the versioned rules
    return Rig(ctx, s3, gcs, clock, store_clock, MemorySweepLedger(), MemoryReadLedger(),
               buckets(config, versioned=True))


def test_buckets_that_lock_as_configured_are_reported_and_compliant(rig: Rig) -> None:
    rig.backup(T0)
    rig.loops(T0 + HOUR)
    report = rig.report(T0 + HOUR)
    assert report.compliant, report.findings
    for role in ("s3", "gcs"):
        lock = report.stores[role].object_lock
        assert lock is not None
        assert (lock.mode, lock.read, lock.versioned, lock.lock_enabled, lock.findings) == (
            "compliance", True, True, True, ())
    document = validate(report)
    assert document["domains"][0]["stores"]["s3"]["object_lock"] == {
        "mode": "compliance", "read": True, "versioned": True, "lock_enabled": True,
        "default_retention": None, "findings": [], "error": None}
    console = Console(record=True, width=200)
    console.print(_store_table(report, report.stores["s3"]))
    assert "enabled; backups locked in compliance mode until their expiry" in console.export_text()


def test_a_configured_lock_the_bucket_cannot_hold_is_a_finding(rig: Rig) -> None:
    rig.backup(T0)
    # Object Lock off on the bucket afterwards (a bucket replaced by hand): the next upload
    # would be refused, and the report says why
    rig.s3.object_lock_enabled = False
    rig.loops(T0 + HOUR)
    report = rig.report(T0 + HOUR)
    assert conditions(report) == [("object-lock", "s3")]
    message = report.findings[0].message
    assert message.startswith("s3://rv-eu-primary: object lock (compliance mode) is configured "
                              "for domain eu but the bucket cannot lock objects")
    validate(report)


def test_lock_settings_that_cannot_be_read_are_a_finding(rig: Rig) -> None:
    rig.loops(T0 + HOUR)
    rig.s3.exists = False
    report = rig.report(T0 + HOUR)
    assert ("object-lock", "s3") in conditions(report)
    lock = report.stores["s3"].object_lock
    assert lock is not None and not lock.read and lock.error
    validate(report)


def test_a_domain_without_a_lock_reports_none(rig: Rig, tmp_path: Path) -> None:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    unlocked = DomainContext(parse_config(data, origin="test", env={}), Domain.EU,
                             clock=rig.clock, s3=S3Role("rv-eu-primary", "eu-central-1"),
                             gcs=GCSRole("rv-eu-replica", "europe-west4"),
                             keyring=rig.ctx.keyring)
    rig.ctx = unlocked
    rig.rules = buckets(unlocked.config)
    rig.loops(T0 + HOUR)
    report = rig.report(T0 + HOUR)
    assert all(s.object_lock is None for s in report.stores.values())
    document = compliance_document([report], generated_at=report.as_of)
    assert "object_lock" not in document["domains"][0]["stores"]["s3"]
    jsonschema.validate(json.loads(json.dumps(document)), load_schema())  # schema v1 as it is
