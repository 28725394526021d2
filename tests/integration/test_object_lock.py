"""Immutable copies (issue 11, acceptance 5) against moto's real S3 server.

With ``object_lock`` on, a backup object is locked until the moment the expiry sweep is due to
remove it (``regionvault.object_lock.retain_until``, which the chain's upload and replicate pass
to the stores). Here a real backup is made by the chain's own steps into a bucket
``regionvault provision`` created, with S3Store on moto and a MemoryStore for the GCS replica
(the GCS emulator ignores object retention), its creation time set so that its lock ends a few
seconds from now. Before then a delete is refused, both through
``S3Store.delete`` (``ObjectLocked``) and by a plain credential deleting the version with boto3
(``AccessDenied``), and an expiry sweep whose clock runs ahead of S3's reports the refusal and
carries on; once the lock has passed, the real expiry path (``expiry.sweep_domain``) removes the
backup and no version of it remains.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from regionvault import chain, expiry
from regionvault import context as context_module
from regionvault.checksums import crc32c_of_bytes
from regionvault.config import DataClass, SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import ObjectLocked
from regionvault.keyring import Keyring
from regionvault.manifest import OBJECT_SUFFIX
from regionvault.object_lock import retain_until
from regionvault.provision import check_locks, provision
from regionvault.stores.s3 import S3Store, make_s3_client
from tests.stores.conftest import (
    ServerProcess,
    fake_aws_environment,
    new_bucket_name,
    start_moto,
)
from tests.unit import config_data
from tests.unit.test_chain import KEY_ID, Clock, FakeSource, GCSRole

EU = Domain.EU
REGION = "eu-central-1"  # config_data's region of domain eu
#: how far in the future the lock of the backup under test ends
LOCK_SECONDS = 8


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with fake_aws_environment():
        server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
        try:
            yield server
        finally:
            server.stop()


@dataclass
class Rig:
    ctx: DomainContext
    s3: S3Store
    gcs: GCSRole
    #: the workers' clock: the backup's created_at, the sweep's now
    clock: Clock
    #: a plain credential's own client on the same server (no bypass of anything)
    client: Any

    @property
    def bucket(self) -> str:
        return self.s3.bucket

    def versions(self, prefix: str = "eu/") -> list[tuple[str, str]]:
        """Every version and delete marker under ``prefix``: (key, kind)."""
        response = self.client.list_object_versions(Bucket=self.bucket, Prefix=prefix)
        return sorted([(v["Key"], "version") for v in response.get("Versions", [])]
                      + [(m["Key"], "delete marker") for m in response.get("DeleteMarkers", [])])


@pytest.fixture
def rig(tmp_path: Path, moto: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    data = config_data("eu")
    data["development"] = True  # an http:// endpoint
    data["spool_dir"] = str(tmp_path / "spool")
    data["s3"] = {"endpoint_url": moto.url, "part_size_mib": 5}
    # pii_days 28: the sweep's cutoff and the lifecycle backstop are the same 28 days, so the
    # lock ends exactly when the sweep is due (with 29 it ends at the backstop, 22 h earlier)
    data["retention"] = {"pii_days": 28}
    domain = data["domains"]["eu"]
    domain["s3_bucket"] = new_bucket_name()
    domain["object_lock"] = {"mode": "governance"}
    config = parse_config(data, origin="test", env={})
    clock = Clock(datetime.now(UTC))
    gcs = GCSRole("rv-eu-replica", "europe-west4", lock_mode="governance")
    keyring = Keyring.local_only(EU, {KEY_ID: os.urandom(32)}, current=KEY_ID)
    ctx = DomainContext(config, EU, clock=clock, gcs=gcs, keyring=keyring)

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        return FakeSource(name=src.name, between=lambda: None)

    monkeypatch.setattr(chain, "open_source", open_source)
    # The bucket does not exist: provision creates it with Object Lock (and its rules).
    (s3_outcome,) = provision(ctx, stores=("s3",))
    assert s3_outcome.lock is not None and s3_outcome.lock.created
    assert check_locks(ctx, stores=("s3",)) == []
    s3 = ctx.s3
    assert isinstance(s3, S3Store) and s3.lock_mode == "governance"
    return Rig(ctx, s3, gcs, clock, make_s3_client(REGION, moto.url))


def backup_locked_for_a_few_seconds(rig: Rig) -> tuple[str, str, datetime]:
    """A verified pii backup made by the chain's steps, created so long ago that its lock
    (``retain_until``) ends LOCK_SECONDS from now; its object key, manifest key, lock end."""
    retention = rig.ctx.config.retention
    lifetime = retain_until(rig.clock.now, DataClass.PII, retention) - rig.clock.now
    assert lifetime == timedelta(days=28)
    created = datetime.now(UTC) + timedelta(seconds=LOCK_SECONDS) - lifetime
    rig.clock.now = created
    until = retain_until(created, DataClass.PII, retention)
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload, chain.replicate):
        step(rig.ctx, backup_id)
    chain.verify(rig.ctx, backup_id)
    stem = f"eu/pii/accounts/{backup_id}"
    return stem + OBJECT_SUFFIX, stem + ".manifest.json", until


def wait_until(moment: datetime) -> None:
    while (left := (moment - datetime.now(UTC)).total_seconds()) > 0:
        time.sleep(min(left, 0.5))


def test_a_locked_backup_cannot_be_deleted_early_and_expiry_removes_it_on_time(rig: Rig) -> None:
    okey, mkey, until = backup_locked_for_a_few_seconds(rig)
    locked_until = until.replace(microsecond=0)  # S3 keeps whole seconds, never later
    assert rig.s3.stat(okey).retain_until == locked_until
    assert rig.gcs.stat(okey).retain_until == locked_until
    assert rig.s3.stat(mkey).retain_until is None  # the manifest is never locked
    assert datetime.now(UTC) < locked_until, "the chain took longer than the lock"

    # 1. Through the store: refused, naming the object and the date.
    with pytest.raises(ObjectLocked) as refused:
        rig.s3.delete(okey)
    assert f"s3://{rig.bucket}/{okey}" in str(refused.value)
    assert locked_until.isoformat() in str(refused.value)

    # 2. A plain credential deleting the version itself: AccessDenied.
    [version] = rig.client.list_object_versions(Bucket=rig.bucket, Prefix=okey)["Versions"]
    with pytest.raises(ClientError) as denied:
        rig.client.delete_object(Bucket=rig.bucket, Key=okey, VersionId=version["VersionId"])
    assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert rig.s3.get_bytes(okey)  # still there, whole

    # 3. A sweep whose clock runs ahead of S3's finds the backup due, is refused, reports it
    # and carries on; the manifest stays so the next sweep finds the backup again.
    rig.clock.now = locked_until + timedelta(seconds=1)
    early = expiry.sweep_domain(rig.ctx, rig.clock.now)
    for role in ("s3", "gcs"):
        sweep = early.stores[role]
        assert sweep.removed_total == 0 and not sweep.complete
        assert any("not removed yet (still locked)" in e and okey in e for e in sweep.errors)
    assert (okey, "version") in rig.versions() and (mkey, "version") in rig.versions()

    # 4. Once the lock has passed by S3's own clock, the real sweep removes the backup.
    wait_until(locked_until + timedelta(seconds=1))
    rig.clock.now = datetime.now(UTC)
    report = expiry.sweep_domain(rig.ctx, rig.clock.now)
    assert report.complete, report.summary()
    assert report.stores["s3"].removed == {"pii": 1}
    assert report.stores["gcs"].removed == {"pii": 1}
    assert rig.versions() == []  # no version and no delete marker of object or manifest
    assert rig.gcs.versions(okey) == rig.gcs.versions(mkey) == 0


def test_a_plain_delete_only_hides_a_locked_object_and_the_store_removes_every_version(
        rig: Rig) -> None:
    """A stolen credential's DeleteObject without a version only adds a delete marker: the
    locked bytes stay. S3Store.delete removes the marker and the version once the lock ends."""
    key = "eu/pii/accounts/hand.rvb"
    until = datetime.now(UTC) + timedelta(seconds=3)
    data = b"locked bytes"
    rig.s3.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data),
                      retain_until=until)
    rig.client.delete_object(Bucket=rig.bucket, Key=key)  # succeeds: a delete marker
    assert rig.versions(key) == [(key, "delete marker"), (key, "version")]
    with pytest.raises(ObjectLocked):
        rig.s3.delete(key)
    assert rig.versions(key) == [(key, "delete marker"), (key, "version")]

    wait_until(until.replace(microsecond=0) + timedelta(seconds=1))
    rig.s3.delete(key)
    assert rig.versions(key) == []


@pytest.mark.parametrize(("mode", "bypass_refused"), [("governance", False),
                                                      ("compliance", True)])
def test_only_compliance_mode_refuses_a_governance_bypass(
        rig: Rig, moto: ServerProcess, mode: str, bypass_refused: bool) -> None:
    """Governance mode yields to a credential allowed s3:BypassGovernanceRetention (regionvault
    never sends the bypass); compliance mode yields to nobody before the date."""
    store = S3Store(rig.bucket, REGION, endpoint_url=moto.url, lock_mode=mode)
    key = f"eu/pii/accounts/{mode}.rvb"
    store.put_stream(key, io.BytesIO(b"x"), 1, crc32c=crc32c_of_bytes(b"x"),
                     retain_until=datetime.now(UTC) + timedelta(days=1))
    [version] = rig.client.list_object_versions(Bucket=rig.bucket, Prefix=key)["Versions"]
    delete = {"Bucket": rig.bucket, "Key": key, "VersionId": version["VersionId"],
              "BypassGovernanceRetention": True}
    if bypass_refused:
        with pytest.raises(ClientError, match="AccessDenied"):
            rig.client.delete_object(**delete)
    else:
        rig.client.delete_object(**delete)
        assert rig.versions(key) == []
