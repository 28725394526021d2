"""One reconciler tick, end to end in this process: memory stores, a real spool directory, the
journal in a real Redis-protocol server, leases in memory, and a recording starter.

What the fault suite shows on the real stack (a dead owner resumed), this shows for the
parts no fault cell reaches in its time: leftovers older than ``orphan_after_seconds`` are
swept, young ones and live ones are not, and a fan-out that never finished is sent again.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from regionvault import chain, manifest_store
from regionvault.config import parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import TransientStoreError
from regionvault.journal import BackupState, Journal, StepState
from regionvault.keyring import Keyring
from regionvault.lease import MemoryLeaseStore
from regionvault.manifest import Step
from regionvault.reconcile import Reconciler
from regionvault.stores.base import IncompleteUpload
from regionvault.stores.memory import MemoryStore
from tests.unit import config_data

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


class S3Role(MemoryStore):
    name = "s3"


class GCSRole(MemoryStore):
    name = "gcs"


class World:
    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        data = config_data("eu")
        data["spool_dir"] = str(tmp_path / "spool")
        data["reconcile"] = {"lease_seconds": 60, "handoff_grace_seconds": 300,
                             "orphan_after_seconds": 3600, "max_resumes": 2}
        self.config = parse_config(data, origin="test", env={})
        self.now = NOW
        self.s3 = S3Role("rv-eu-primary", "eu-central-1", clock=lambda: self.now)
        self.gcs = GCSRole("rv-eu-replica", "europe-west4", clock=lambda: self.now)
        keyring = Keyring.local_only(Domain.EU, {"eu-2026": os.urandom(32)}, current="eu-2026")
        self.ctx = DomainContext(self.config, Domain.EU, clock=lambda: self.now, s3=self.s3,
                                 gcs=self.gcs, keyring=keyring)
        self.journal = Journal.from_url(redis_url)
        self.journal.client.flushdb()
        self.leases = MemoryLeaseStore(lambda: self.now.timestamp())
        self.started: list[tuple[str, Step, int]] = []
        self.fanned: list[str] = []

    def start(self, backup_id: str, step: Step, *, expected_run: int, note: str) -> bool:
        claim = self.journal.claim(backup_id, step, mode="resume", expected_run=expected_run)
        if claim.accepted:
            self.started.append((backup_id, step, claim.run))
        return claim.accepted

    def tick(self) -> dict[str, object]:
        reconciler = Reconciler(self.ctx, self.journal, self.leases, self.start,
                                fan_out=self.fanned.append, clock=lambda: self.now.timestamp())
        return reconciler.tick().as_dict()

    def spool_file(self, backup_id: str, name: str, age: timedelta) -> Path:
        path = self.ctx.spool.path(backup_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ciphertext")
        stamp = (self.now - age).timestamp()
        os.utime(path, (stamp, stamp))
        return path


@pytest.fixture
def world(tmp_path: Path, redis_url: str) -> World:
    return World(tmp_path, redis_url)


def test_a_backup_whose_owner_died_is_resumed_once_from_the_step_the_spool_names(
        world: World) -> None:
    bid = "eu.accounts.20261130T110000Z.0000000a"
    world.journal.claim(bid, Step.DUMP, mode="new")
    world.journal.step(bid, Step.DUMP, StepState.DONE)
    world.journal.step(bid, Step.ENCRYPT, StepState.RUNNING, task_id="t-encrypt")
    world.spool_file(bid, "backup.rvb", timedelta(minutes=1))  # the dump is in the spool:
    world.spool_file(bid, "dump.json", timedelta(minutes=1))  # the object and its dump.json

    held = world.leases.acquire(bid, "somehost/1/t-encrypt", 60_000, step="encrypt", run=1)
    assert world.tick()["resumed"] == []  # the owner lives: hands off
    assert world.started == []

    world.leases.release(held)  # type: ignore[arg-type]  # the owner is gone
    report = world.tick()
    assert world.started == [(bid, Step.ENCRYPT, 2)]
    assert report["resumed"] == [f"{bid} from encrypt"]
    world.tick()  # a second tick (or a second reconciler) starts nothing more
    assert world.started == [(bid, Step.ENCRYPT, 2)]
    record = world.journal.get(bid)
    assert record is not None and record.resumes == 1 and record.run == 2


def test_leftovers_of_no_live_backup_are_swept_when_old_enough(world: World) -> None:
    okey = "eu/pii/accounts/eu.accounts.20261129T020000Z.0000000b.rvb"
    world.now = NOW - timedelta(hours=3)
    world.s3.put_bytes(okey, b"x" * 10)  # an object whose manifest was never written
    world.gcs.put_bytes(okey, b"x" * 10)
    young = "eu/pii/accounts/eu.accounts.20261130T115500Z.0000000c.rvb"
    world.now = NOW - timedelta(minutes=5)
    world.s3.put_bytes(young, b"y")  # too young: its owner may be about to write the manifest
    world.now = NOW
    abandoned = "eu.accounts.20261128T020000Z.0000000d"
    world.spool_file(abandoned, "backup.rvb", timedelta(hours=2))
    world.journal.claim(abandoned, Step.DUMP, mode="new")
    world.journal.step(abandoned, Step.ENCRYPT, StepState.FAILED, detail="bad key")
    live = "eu.accounts.20261130T115900Z.0000000e"
    world.spool_file(live, "backup.rvb", timedelta(hours=2))
    world.leases.acquire(live, "host/2/t", 60_000, step="dump", run=1)

    report = world.tick()
    assert report["swept"] == {"spool": 1, "s3-object": 1, "gcs-object": 1}
    assert not world.ctx.spool.dir_for(abandoned).exists()
    assert world.ctx.spool.dir_for(live).exists()  # a live owner's spool is never touched
    assert list(world.s3.list_keys("eu/")) == [young]
    assert list(world.gcs.list_keys("eu/")) == []
    notes = world.journal.get(abandoned).notes  # type: ignore[union-attr]
    assert any("reconciler removed 1 spool files" in n for n in notes)


def test_open_uploads_of_dead_backups_are_aborted_and_live_ones_kept(world: World) -> None:
    world.s3 = S3Role("rv-eu-primary", "eu-central-1", part_size=5 * 1024 * 1024,
                      clock=lambda: world.now)
    world.ctx.__dict__["s3"] = world.s3
    dead = "eu/pii/accounts/eu.accounts.20261129T020000Z.0000000f.rvb"
    live_id = "eu.accounts.20261130T115000Z.00000010"
    live = f"eu/pii/accounts/{live_id}.rvb"
    world.now = NOW - timedelta(hours=2)
    for key in (dead, live):
        world.s3.fail_upload_after(1)
        with pytest.raises(TransientStoreError):
            world.s3.put_bytes(key, os.urandom(11 * 1024 * 1024))
    world.now = NOW
    assert {u.key for u in world.s3.incomplete_uploads("eu/")} == {dead, live}
    world.leases.acquire(live_id, "host/3/t", 60_000, step="upload", run=1)

    report = world.tick()
    assert report["swept"] == {"s3-upload": 1}
    left: list[IncompleteUpload] = world.s3.incomplete_uploads("eu/")
    assert [u.key for u in left] == [live]


def test_a_fan_out_that_never_finished_is_sent_again(world: World) -> None:
    world.journal.fanout_started("eu", "2026-11-30T02:00:00+00:00")
    world.tick()
    assert world.fanned == []  # it may still be running
    world.now = datetime.now(UTC) + timedelta(minutes=10)
    world.tick()
    assert world.fanned == ["2026-11-30T02:00:00+00:00"]
    world.journal.fanout_done("eu", "2026-11-30T02:00:00+00:00")
    world.fanned.clear()
    world.tick()
    assert world.fanned == []


def test_a_verified_backup_missing_from_the_journal_is_written_back(world: World) -> None:
    bid = "eu.accounts.20261130T100000Z.00000011"
    world.spool_file(bid, "manifest.json", timedelta(minutes=30))  # left after verify
    ref = chain.BackupRef.parse(bid)
    _, mkey = manifest_store.keys_of(ref, world.config.source(Domain.EU, "accounts"))
    manifest = _manifest(bid).with_step(Step.DUMP, NOW).with_step(Step.ENCRYPT, NOW) \
        .with_step(Step.UPLOAD, NOW).with_step(Step.REPLICATE, NOW).with_step(Step.VERIFY, NOW)
    manifest_store.write_manifest(world.ctx, world.s3, mkey, manifest)

    world.tick()
    record = world.journal.get(bid)
    assert record is not None and record.state is BackupState.VERIFIED
    assert record.steps[Step.DUMP].state is StepState.DONE
    assert not world.ctx.spool.dir_for(bid).exists()


def _manifest(bid: str) -> chain.Manifest:
    from regionvault.config import DataClass

    return chain.Manifest(
        backup_id=bid, domain=Domain.EU, source="accounts", source_kind="postgres",
        data_class=DataClass.PII, created_at=NOW, expires_at=NOW + timedelta(days=29),
        key_id="eu-2026", wrapped_data_key="AA==", plaintext_size=1, plaintext_sha256="0" * 64,
        ciphertext_size=1, ciphertext_sha256="0" * 64, ciphertext_crc32c="AAAAAA==",
        object_key=f"eu/pii/accounts/{bid}.rvb")



