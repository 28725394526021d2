"""The backup chain over in-memory stores, a temporary spool and a fake source (no servers).

The source is the one thing replaced: ``regionvault.chain.open_source`` returns a fake that
streams known bytes, so these tests check the chain's own logic. The chain tells the two copies
apart by the store's ``name`` (as ``S3Store`` and ``GCSStore`` report it), so the in-memory
stand-ins carry the production names; ``test_plain_memory_store_in_the_s3_role`` shows what
happens with a plain ``MemoryStore``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from regionvault import chain, manifest_store
from regionvault import context as context_module
from regionvault.config import Config, SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import (
    IntegrityError,
    ResidencyError,
    StepOrderError,
    UnknownSourceError,
)
from regionvault.keyring import Keyring
from regionvault.lease import Ownership
from regionvault.manifest import BackupRef, Manifest, Step, parse_manifest
from regionvault.sources import DumpInfo
from regionvault.stores.memory import MemoryStore
from regionvault.streamformat import decrypt_chunks
from tests.unit import config_data

MARKER = b"RV-UNIT-PLAINTEXT-MARKER"
PIECES = tuple(MARKER + b" row %04d " % i + bytes(range(256)) * 8 for i in range(6))
PAYLOAD = b"".join(PIECES)
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
KEY_ID = "eu-2026"


class S3Role(MemoryStore):
    """A MemoryStore standing in for S3Store (same contract, same name)."""

    name = "s3"


class GCSRole(MemoryStore):
    """A MemoryStore standing in for GCSStore (same contract, same name)."""

    name = "gcs"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class FakeSource:
    """A source that streams PIECES, calling ``between`` after each piece."""

    name: str
    between: Callable[[], None]
    kind: str = "postgres"

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        for piece in PIECES:
            write(piece)
            self.between()
        return DumpInfo(row_counts={"public.customers": len(PIECES)})

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        raise AssertionError("restore is not part of the backup chain")


@dataclass
class Rig:
    ctx: DomainContext
    s3: MemoryStore
    gcs: MemoryStore
    clock: Clock
    spool_root: Path
    opened: list[str] = field(default_factory=list)

    def scan_for_plaintext(self) -> None:
        """No spool file (complete or partial) and no stored object holds source bytes."""
        if self.spool_root.exists():
            for path in self.spool_root.rglob("*"):
                if path.is_file():
                    assert MARKER not in path.read_bytes(), f"plaintext in spool file {path}"
        for store in (self.s3, self.gcs):
            for key in store.list_keys(""):
                assert MARKER not in store.get_bytes(key), f"plaintext in {store.name}:{key}"

    def spool_files(self) -> list[str]:
        return [p.name for p in self.ctx.spool.files()]


def make_config(tmp_path: Path) -> Config:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    return parse_config(data, origin="test", env={})


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    # residency is cached per process; each test starts with a fresh cache
    monkeypatch.setattr(context_module, "_residency_checked", set())
    config = make_config(tmp_path)
    clock = Clock(T0)
    s3 = S3Role("rv-eu-primary", "eu-central-1")
    gcs = GCSRole("rv-eu-replica", "europe-west4")
    keyring = Keyring.local_only(Domain.EU, {KEY_ID: os.urandom(32)}, current=KEY_ID)
    ctx = DomainContext(config, Domain.EU, clock=clock, s3=s3, gcs=gcs, keyring=keyring)
    built = Rig(ctx=ctx, s3=s3, gcs=gcs, clock=clock, spool_root=config.spool_for(Domain.EU))

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        assert domain is Domain.EU
        built.opened.append(src.name)
        return FakeSource(name=src.name, between=built.scan_for_plaintext)

    monkeypatch.setattr(chain, "open_source", open_source)
    return built


def keys_of(backup_id: str, rig: Rig) -> tuple[str, str]:
    ref = BackupRef.parse(backup_id)
    return manifest_store.keys_of(ref, rig.ctx.config.source(ref.domain, ref.source))


def stored_manifest(store: MemoryStore, backup_id: str, rig: Rig) -> Manifest:
    _, mkey = keys_of(backup_id, rig)
    return parse_manifest(rig.ctx, store.get_bytes(mkey), mkey, key=mkey)


def restore_bytes(store: MemoryStore, backup_id: str, rig: Rig) -> bytes:
    """Decrypt and decompress a stored copy by hand, from its manifest and the domain key."""
    ref = BackupRef.parse(backup_id)
    manifest = stored_manifest(store, backup_id, rig)
    data_key = rig.ctx.keyring.unwrap(manifest.wrappings, manifest_store.data_key_context(ref))
    okey, _ = keys_of(backup_id, rig)
    compressed = b"".join(decrypt_chunks(store.open_read(okey), data_key,
                                         manifest_store.stream_context(ref, "backup-stream")))
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed)).read()


def run_steps(rig: Rig, backup_id: str, *, scan: bool = True) -> list[chain.StepOutcome]:
    outcomes = []
    steps: list[Callable[[DomainContext, str], chain.StepOutcome]] = [
        chain.dump, chain.encrypt, chain.upload, chain.replicate,
        lambda ctx, bid: chain.verify(ctx, bid, deep=True),
    ]
    for step in steps:
        outcomes.append(step(rig.ctx, backup_id))
        if scan:
            rig.scan_for_plaintext()
    return outcomes


def backup_at(rig: Rig, when: datetime, source: str = "accounts") -> str:
    rig.clock.now = when
    backup_id = chain.new_backup(rig.ctx, source)
    run_steps(rig, backup_id, scan=False)
    return backup_id


# --- the whole chain -------------------------------------------------------------------------


def test_chain_reaches_verified_and_both_copies_restore(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    outcomes = run_steps(rig, backup_id)
    assert [o.step for o in outcomes] == [Step.DUMP, Step.ENCRYPT, Step.UPLOAD, Step.REPLICATE,
                                          Step.VERIFY]
    assert not any(o.skipped for o in outcomes)
    for store in (rig.s3, rig.gcs):
        manifest = stored_manifest(store, backup_id, rig)
        assert manifest.state() == "verified"
        assert manifest.plaintext_size == len(PAYLOAD)
        assert manifest.plaintext_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
        assert [w.key_id for w in manifest.wrappings] == [KEY_ID]
        assert restore_bytes(store, backup_id, rig) == PAYLOAD
    assert rig.spool_files() == []
    assert rig.opened == ["accounts"]


def test_object_and_manifest_land_under_the_domain_layout(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    run_steps(rig, backup_id)
    expected = [f"eu/pii/accounts/{backup_id}.manifest.json", f"eu/pii/accounts/{backup_id}.rvb"]
    assert list(rig.s3.list_keys("")) == expected
    assert list(rig.gcs.list_keys("")) == expected


def test_each_step_twice_gives_the_same_result(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    okey, mkey = keys_of(backup_id, rig)
    assert chain.dump(rig.ctx, backup_id).skipped is False
    assert chain.dump(rig.ctx, backup_id).skipped is True
    assert chain.encrypt(rig.ctx, backup_id).skipped is False
    assert chain.encrypt(rig.ctx, backup_id).skipped is True
    assert chain.upload(rig.ctx, backup_id).skipped is False
    s3_object = rig.s3.get_bytes(okey)
    assert chain.upload(rig.ctx, backup_id).skipped is True
    assert chain.replicate(rig.ctx, backup_id).skipped is False
    assert chain.replicate(rig.ctx, backup_id).skipped is True
    first = chain.verify(rig.ctx, backup_id, deep=True)
    second = chain.verify(rig.ctx, backup_id, deep=True)
    assert (first.step, first.detail) == (second.step, second.detail)
    rig.scan_for_plaintext()
    for store in (rig.s3, rig.gcs):
        assert sorted(store.list_keys("")) == sorted([okey, mkey])
        assert store.get_bytes(okey) == s3_object
        assert stored_manifest(store, backup_id, rig).state() == "verified"
    assert rig.opened == ["accounts"]  # the source was dumped once
    assert rig.spool_files() == []


def test_later_steps_rerun_after_verify_change_nothing(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    run_steps(rig, backup_id)
    before = {key: rig.s3.get_bytes(key) for key in rig.s3.list_keys("")}
    assert chain.encrypt(rig.ctx, backup_id).skipped is True
    assert chain.upload(rig.ctx, backup_id).skipped is True
    assert chain.replicate(rig.ctx, backup_id).skipped is True
    assert {key: rig.s3.get_bytes(key) for key in rig.s3.list_keys("")} == before
    assert rig.spool_files() == []


def test_dump_rerun_after_verify_is_a_no_op(rig: Rig) -> None:
    """A redelivered or operator-retried dump of a finished backup must not dump again.

    verify empties the spool, so dump must also ask the store whether the backup went further;
    otherwise it would dump again and leave backup.rvb/dump.json behind that nothing cleans up
    (invariant 3: no stray spool files).
    """
    backup_id = chain.new_backup(rig.ctx, "accounts")
    run_steps(rig, backup_id)
    outcome = chain.dump(rig.ctx, backup_id)
    assert (outcome.skipped, rig.opened, rig.spool_files()) == (True, ["accounts"], []), (
        f"dump of the already verified backup {backup_id} ran again: outcome "
        f"{outcome.detail!r}, source opened {len(rig.opened)} times, stray spool files "
        f"{rig.spool_files()}"
    )


# --- step order ------------------------------------------------------------------------------


def test_upload_before_dump_asks_for_dump(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    with pytest.raises(StepOrderError, match="run step 'dump'") as info:
        chain.upload(rig.ctx, backup_id)
    assert info.value.rerun_step == "dump"
    assert backup_id in str(info.value)
    assert list(rig.s3.list_keys("")) == []


def test_upload_before_encrypt_asks_for_encrypt_once_dumped(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    chain.dump(rig.ctx, backup_id)
    with pytest.raises(StepOrderError) as info:
        chain.upload(rig.ctx, backup_id)
    assert info.value.rerun_step == "encrypt"
    assert list(rig.s3.list_keys("")) == []


def test_encrypt_before_dump_asks_for_dump(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    with pytest.raises(StepOrderError) as info:
        chain.encrypt(rig.ctx, backup_id)
    assert info.value.rerun_step == "dump"


def test_replicate_and_verify_before_upload_ask_for_upload(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    chain.dump(rig.ctx, backup_id)
    chain.encrypt(rig.ctx, backup_id)
    for step in (chain.replicate, chain.verify):
        with pytest.raises(StepOrderError) as info:
            step(rig.ctx, backup_id)
        assert info.value.rerun_step == "upload"
    assert list(rig.gcs.list_keys("")) == []


def test_verify_before_replicate_asks_for_replicate(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload):
        step(rig.ctx, backup_id)
    with pytest.raises(StepOrderError) as info:
        chain.verify(rig.ctx, backup_id)
    assert info.value.rerun_step == "replicate"
    assert stored_manifest(rig.s3, backup_id, rig).state() == "uploaded"


# --- verification ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store_name", "keep_checksum", "deep"),
    [
        pytest.param("s3", False, True, id="s3-rewritten-deep"),
        pytest.param("s3", False, False, id="s3-rewritten-shallow"),
        pytest.param("s3", True, True, id="s3-silent-damage-deep"),
        pytest.param("gcs", False, True, id="gcs-rewritten-deep"),
        pytest.param("gcs", True, True, id="gcs-silent-damage-deep"),
    ],
)
def test_verify_detects_a_corrupted_copy(
    rig: Rig, store_name: str, keep_checksum: bool, deep: bool
) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload, chain.replicate):
        step(rig.ctx, backup_id)
    okey, _ = keys_of(backup_id, rig)
    store = rig.ctx.store(store_name)
    assert isinstance(store, MemoryStore)
    store.corrupt(okey, 100, keep_checksum=keep_checksum)
    with pytest.raises(IntegrityError) as info:
        chain.verify(rig.ctx, backup_id, deep=deep)
    message = str(info.value)
    assert backup_id in message
    assert f"{store_name} copy" in message
    for each in (rig.s3, rig.gcs):
        assert stored_manifest(each, backup_id, rig).state() == "replicated"


def test_replicate_refuses_a_damaged_s3_copy(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload):
        step(rig.ctx, backup_id)
    okey, _ = keys_of(backup_id, rig)
    rig.s3.corrupt(okey, 0)
    with pytest.raises(StepOrderError) as info:
        chain.replicate(rig.ctx, backup_id)
    assert info.value.rerun_step == "upload"
    assert list(rig.gcs.list_keys("")) == []


# --- one pass over the data ------------------------------------------------------------------


def spool_bytes(rig: Rig) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in rig.ctx.spool.files() if not p.name.startswith(".")}


def count_s3_reads(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    original = rig.s3.open_read

    def open_read(key: str) -> io.BytesIO:
        reads.append(key)
        return original(key)  # type: ignore[return-value]

    monkeypatch.setattr(rig.s3, "open_read", open_read)
    return reads


def test_dump_writes_the_finished_object_once(rig: Rig) -> None:
    """After dump the spool holds the compressed, encrypted object (about C bytes) and its
    metadata; encrypt writes no second copy, only the manifest, and drops the metadata."""
    backup_id = chain.new_backup(rig.ctx, "accounts")
    chain.dump(rig.ctx, backup_id)
    after_dump = spool_bytes(rig)
    assert set(after_dump) == {"backup.rvb", "dump.json"}, after_dump
    assert after_dump["backup.rvb"] < len(PAYLOAD) / 3  # compressed, not the P bytes
    chain.encrypt(rig.ctx, backup_id)
    after_encrypt = spool_bytes(rig)
    assert set(after_encrypt) == {"backup.rvb", "manifest.json"}, after_encrypt
    assert after_encrypt["backup.rvb"] == after_dump["backup.rvb"]
    draft = parse_manifest(rig.ctx, rig.ctx.spool.read_bytes(backup_id, "manifest.json"), "spool")
    assert draft.ciphertext_size == after_dump["backup.rvb"]
    assert draft.plaintext_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert draft.row_counts == {"public.customers": len(PIECES)}


def test_a_dump_that_starts_over_removes_what_a_dead_owner_left(rig: Rig) -> None:
    """A worker killed mid-dump leaves its partial object; the next owner's dump removes it
    before writing, so the spool never needs room for two copies."""
    backup_id = chain.new_backup(rig.ctx, "accounts")
    directory = rig.ctx.spool.dir_for(backup_id)
    directory.mkdir(parents=True)
    dead = directory / "backup.rvb.3.4242.partial"
    dead.write_bytes(b"x" * 4096)
    rig.ctx.spool.advance_fence(backup_id, 5)
    chain.dump(rig.ctx, backup_id, owner=Ownership(token=5))
    assert not dead.exists()
    assert set(spool_bytes(rig)) == {"backup.rvb", "dump.json"}


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_encrypt_refuses_a_damaged_spool_object_and_asks_for_dump(rig: Rig, damage: str) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    chain.dump(rig.ctx, backup_id)
    path = rig.ctx.spool.path(backup_id, "backup.rvb")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-20:]
    path.write_bytes(bytes(data))
    with pytest.raises(StepOrderError) as info:
        chain.encrypt(rig.ctx, backup_id)
    assert info.value.rerun_step == "dump"
    assert "failed its checks" in str(info.value)
    assert spool_bytes(rig) == {}  # removed, so the dump that follows starts over
    run_steps(rig, backup_id)
    assert restore_bytes(rig.gcs, backup_id, rig) == PAYLOAD


OLD_DUMP_META = b'{"key_id": "eu-2026", "wrapped_key": "AAAA", "started_at": "2026-11-01T02:00:00+00:00", "source_kind": "postgres", "size": 10, "row_counts": {}}'  # noqa: E501


def test_a_dump_spooled_by_the_two_pass_version_is_taken_again(rig: Rig) -> None:
    """A backup dumped before the upgrade left dump.rvs and its dump.json, and no object: dump
    must run again rather than take the old dump.json for a finished dump."""
    backup_id = chain.new_backup(rig.ctx, "accounts")
    rig.ctx.spool.write_bytes(backup_id, "dump.rvs", b"sealed with a spool key")
    rig.ctx.spool.write_bytes(backup_id, "dump.json", OLD_DUMP_META)
    with pytest.raises(StepOrderError) as info:
        chain.encrypt(rig.ctx, backup_id)
    assert info.value.rerun_step == "dump"
    assert chain.dump(rig.ctx, backup_id).skipped is False
    run_steps(rig, backup_id)
    assert restore_bytes(rig.gcs, backup_id, rig) == PAYLOAD


def test_encrypt_asks_for_dump_when_dump_json_is_of_another_version(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    chain.dump(rig.ctx, backup_id)
    rig.ctx.spool.write_bytes(backup_id, "dump.json", OLD_DUMP_META)
    with pytest.raises(StepOrderError) as info:
        chain.encrypt(rig.ctx, backup_id)
    assert info.value.rerun_step == "dump"
    assert "dump.json cannot be read" in str(info.value)
    assert spool_bytes(rig) == {}  # both removed, so the dump that follows starts over
    run_steps(rig, backup_id)
    assert restore_bytes(rig.gcs, backup_id, rig) == PAYLOAD


def test_replicate_sends_the_spool_copy_and_reads_nothing_from_s3(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = count_s3_reads(rig, monkeypatch)
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload):
        step(rig.ctx, backup_id)
    outcome = chain.replicate(rig.ctx, backup_id)
    assert outcome.detail.endswith("(from spool)"), outcome.detail
    assert reads == []
    assert restore_bytes(rig.gcs, backup_id, rig) == PAYLOAD


@pytest.mark.parametrize("loss", ["spool gone", "spool copy damaged"])
def test_replicate_streams_from_s3_when_the_spool_cannot_serve(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, loss: str) -> None:
    reads = count_s3_reads(rig, monkeypatch)
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload):
        step(rig.ctx, backup_id)
    path = rig.ctx.spool.path(backup_id, "backup.rvb")
    if loss == "spool gone":
        rig.ctx.spool.clean(backup_id)
    else:  # same size, one bit off: only the CRC32C check of the upload can tell
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x80
        path.write_bytes(bytes(data))
    outcome = chain.replicate(rig.ctx, backup_id)
    assert outcome.detail.endswith("(from s3)"), outcome.detail
    okey, _ = keys_of(backup_id, rig)
    assert reads == [okey]
    assert rig.gcs.get_bytes(okey) == rig.s3.get_bytes(okey)
    chain.verify(rig.ctx, backup_id, deep=True)
    assert restore_bytes(rig.gcs, backup_id, rig) == PAYLOAD


# --- residency and bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    [chain.dump, chain.encrypt, chain.upload, chain.replicate, chain.verify, chain.expire],
    ids=["dump", "encrypt", "upload", "replicate", "verify", "expire"],
)
def test_backup_of_another_domain_is_refused(
    rig: Rig, step: Callable[[DomainContext, str], chain.StepOutcome]
) -> None:
    foreign = "us.accounts.20261101T020000Z.1a2b3c4d"
    with pytest.raises(ResidencyError, match="domain 'us'"):
        step(rig.ctx, foreign)
    assert rig.opened == []
    assert rig.spool_files() == []
    assert list(rig.s3.list_keys("")) == list(rig.gcs.list_keys("")) == []


def test_unknown_source_is_refused(rig: Rig) -> None:
    with pytest.raises(UnknownSourceError, match="'billing'"):
        chain.dump(rig.ctx, "eu.billing.20261101T020000Z.1a2b3c4d")
    with pytest.raises(UnknownSourceError, match="accounts, catalog"):
        chain.new_backup(rig.ctx, "billing")
    assert rig.opened == []


def test_upload_refuses_a_bucket_outside_the_domain(rig: Rig) -> None:
    misplaced = S3Role("rv-eu-primary", "us-east-2")
    ctx = DomainContext(rig.ctx.config, Domain.EU, clock=rig.clock, s3=misplaced, gcs=rig.gcs,
                        keyring=rig.ctx.keyring)
    backup_id = chain.new_backup(ctx, "accounts")
    chain.dump(ctx, backup_id)
    chain.encrypt(ctx, backup_id)
    with pytest.raises(ResidencyError, match="us-east-2"):
        chain.upload(ctx, backup_id)
    assert list(misplaced.list_keys("")) == []


def test_plain_memory_store_in_the_s3_role(rig: Rig) -> None:
    """A plain MemoryStore in the S3 role, in the domain's AWS region, must be accepted.

    The expected region follows the role the store plays in the context (S3 or GCS), not the
    name the store gives itself.
    """
    plain_s3 = MemoryStore("rv-eu-primary", "eu-central-1")
    plain_gcs = MemoryStore("rv-eu-replica", "europe-west4")
    ctx = DomainContext(rig.ctx.config, Domain.EU, clock=rig.clock, s3=plain_s3, gcs=plain_gcs,
                        keyring=rig.ctx.keyring)
    backup_id = chain.new_backup(ctx, "accounts")
    chain.dump(ctx, backup_id)
    chain.encrypt(ctx, backup_id)
    try:
        chain.upload(ctx, backup_id)
    except ResidencyError as exc:
        pytest.fail(f"upload to an S3-role bucket in eu-central-1 was refused: {exc}")
    assert len(list(plain_s3.list_keys(""))) == 2


# --- expiry ----------------------------------------------------------------------------------


def test_expire_removes_pii_backups_past_29_days_and_keeps_newer(rig: Rig) -> None:
    old = backup_at(rig, T0)
    middle = backup_at(rig, T0 + timedelta(days=15))
    newest = backup_at(rig, T0 + timedelta(days=25))
    catalog = backup_at(rig, T0, source="catalog")  # metadata: 365 days
    rig.clock.now = T0 + timedelta(days=40)
    outcome = chain.expire(rig.ctx, newest)
    assert outcome.detail == "removed 1, kept 2"
    for store in (rig.s3, rig.gcs):
        assert not any(old in key for key in store.list_keys(""))
        for kept in (middle, newest, catalog):
            okey, mkey = keys_of(kept, rig)
            assert {okey, mkey} <= set(store.list_keys(""))
        assert Step.EXPIRE in stored_manifest(store, newest, rig).steps
        assert restore_bytes(store, middle, rig) == PAYLOAD


def test_expire_removes_even_the_newest_verified_pii_backup_past_29_days(rig: Rig) -> None:
    only = backup_at(rig, T0)
    rig.clock.now = T0 + timedelta(days=40)
    assert chain.expire(rig.ctx, only).detail == "removed 1, kept 0"
    assert list(rig.s3.list_keys("")) == list(rig.gcs.list_keys("")) == []


def test_expire_keeps_the_newest_verified_metadata_backup_past_retention(rig: Rig) -> None:
    first = backup_at(rig, T0, source="catalog")
    second = backup_at(rig, T0 + timedelta(days=1), source="catalog")
    rig.clock.now = T0 + timedelta(days=400)
    assert chain.expire(rig.ctx, second).detail == "removed 1, kept 1"
    for store in (rig.s3, rig.gcs):
        keys = list(store.list_keys(""))
        assert not any(first in key for key in keys)
        assert len([key for key in keys if second in key]) == 2


def test_expire_twice_is_idempotent(rig: Rig) -> None:
    backup_at(rig, T0)
    newest = backup_at(rig, T0 + timedelta(days=20))
    rig.clock.now = T0 + timedelta(days=40)
    assert chain.expire(rig.ctx, newest).detail == "removed 1, kept 1"
    after_first = sorted(rig.s3.list_keys(""))
    assert chain.expire(rig.ctx, newest).detail == "removed 0, kept 1"
    assert sorted(rig.s3.list_keys("")) == after_first == sorted(keys_of(newest, rig))
