"""Key operations over in-memory stores (both the S3 and the GCS role) and a managed keyring
file: init, rotate, rewrap, retire, key usage, and crypto-shredding one backup.

The domain context has no fixed keyring: it reads the keyring file as a worker does, so a
``rotate`` reaches it with no restart. Manifests are written as the chain writes them (every
wrapping from ``ctx.keyring.wrap``, signed by ``write_manifest``) and marked verified.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import pytest

from regionvault import context as context_module
from regionvault import keys, manifest_store
from regionvault.checksums import crc32c_of_bytes
from regionvault.config import Config, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.erasure import erase
from regionvault.errors import (
    BackupBusy,
    BackupErased,
    ConfigError,
    KeyInUse,
    NotFound,
    TransientStoreError,
    WrongKeyError,
)
from regionvault.keyring import (
    KEY_BYTES,
    Keyring,
    KeyringDocument,
    LocalWrapper,
    new_data_key,
    read_keyring_document,
)
from regionvault.manifest import (
    MANIFEST_VERSION,
    BackupRef,
    Manifest,
    Step,
    expiry_for,
    new_backup_id,
    parse_manifest,
)
from regionvault.manifest_store import data_key_context, read_manifest, write_manifest
from regionvault.progress import no_progress
from regionvault.restore import _restore_from, erased_error, load_manifest
from regionvault.stores.base import ObjectInfo
from regionvault.stores.memory import MemoryStore
from tests.unit import config_data
from tests.unit.test_chain import T0, Clock

NOW = T0 + timedelta(days=1)
ROLES = ("s3", "gcs")


class RecordingStore(MemoryStore):
    """A MemoryStore that records the key of every write, and can be told to fail writes
    after a number of them (a store going away, or the process being killed)."""

    def __init__(self, bucket: str, location: str, *, clock: Clock,
                 lock_mode: str | None = None, versioned: bool | None = None) -> None:
        super().__init__(bucket, location, clock=clock, lock_mode=lock_mode, versioned=versioned)
        self.puts: list[str] = []
        self.fail_after: int | None = None
        self.failure: Exception = TransientStoreError("the store went away")

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str,
                   retain_until: datetime | None = None) -> ObjectInfo:
        if self.fail_after is not None:
            if self.fail_after <= 0:
                raise self.failure
            self.fail_after -= 1
        self.puts.append(key)
        return super().put_stream(key, stream, size, crc32c=crc32c, retain_until=retain_until)


class S3Copy(RecordingStore):
    name = "s3"


class GCSCopy(RecordingStore):
    name = "gcs"


@dataclass
class Rig:
    ctx: DomainContext
    s3: RecordingStore
    gcs: RecordingStore
    clock: Clock
    keyring_file: Path
    #: backup id -> its data key, as it was made
    data_keys: dict[str, bytes] = field(default_factory=dict)

    @property
    def stores(self) -> tuple[RecordingStore, RecordingStore]:
        return self.s3, self.gcs

    def document(self) -> KeyringDocument:
        return read_keyring_document(self.keyring_file, Domain.EU)

    def current_local(self) -> str:
        entry = self.document().current("local")
        assert entry is not None
        return entry.id

    def only(self, key_id: str) -> Keyring:
        """A keyring holding nothing but ``key_id`` (read from the keyring file)."""
        entry = next(k for k in self.document().keys if k.id == key_id)
        assert entry.material is not None
        return Keyring.local_only(Domain.EU, {key_id: base64.b64decode(entry.material)},
                                  current=key_id)

    def keys_of(self, backup_id: str) -> tuple[str, str]:
        ref = BackupRef.parse(backup_id)
        return manifest_store.keys_of(ref, self.ctx.config.source(Domain.EU, ref.source))

    def manifest(self, role: str, backup_id: str) -> Manifest:
        found = read_manifest(self.ctx, self.ctx.store(role), self.keys_of(backup_id)[1])
        assert found is not None
        return found

    def objects(self) -> dict[tuple[str, str], bytes]:
        return {(store.name, key): store.get_bytes(key) for store in self.stores
                for key in store.list_keys("") if key.endswith(".rvb")}

    def forget_puts(self) -> None:
        for store in self.stores:
            store.puts.clear()


def managed_config(tmp_path: Path) -> Config:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    del data["domains"]["eu"]["key"]
    data["domains"]["eu"]["keyring"] = {"file": str(tmp_path / "eu.keyring.json"),
                                        "wrappers": ["local"]}
    return parse_config(data, origin="test", env={})


def make_rig(tmp_path: Path, *, lock_mode: str | None = None,
             versioned: bool | None = None) -> Rig:
    config = managed_config(tmp_path)
    keys.init(config, Domain.EU)
    clock = Clock(NOW)
    s3 = S3Copy("rv-eu-primary", "eu-central-1", clock=clock, lock_mode=lock_mode,
                versioned=versioned)
    gcs = GCSCopy("rv-eu-replica", "europe-west4", clock=clock, lock_mode=lock_mode,
                  versioned=versioned)
    ctx = DomainContext(config, Domain.EU, clock=clock, s3=s3, gcs=gcs)
    dcfg_keyring = config.domain(Domain.EU).keyring
    assert dcfg_keyring is not None
    return Rig(ctx, s3, gcs, clock, dcfg_keyring.file)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    return make_rig(tmp_path)


def backup(rig: Rig, source: str = "accounts", *, at: datetime = T0,
           roles: tuple[str, ...] = ROLES, verified: tuple[str, ...] = ROLES,
           retain_until: datetime | None = None) -> str:
    """A backup written as the chain writes it: its object and its signed manifest in each
    of ``roles``, the manifest marked verified in ``verified``."""
    ctx = rig.ctx
    backup_id = new_backup_id(Domain.EU, source, at)
    ref = BackupRef.parse(backup_id)
    src = ctx.config.source(Domain.EU, source)
    okey, mkey = rig.keys_of(backup_id)
    data_key = new_data_key()
    ciphertext = os.urandom(4096)
    manifest = Manifest(
        backup_id=backup_id, domain=Domain.EU, source=source, source_kind=src.kind,
        data_class=src.data_class, created_at=at,
        expires_at=expiry_for(at, ctx.config.retention.period_for(src.data_class)),
        wrappings=ctx.keyring.wrap(data_key, data_key_context(ref)),
        plaintext_size=5000, plaintext_sha256=hashlib.sha256(b"plain").hexdigest(),
        ciphertext_size=len(ciphertext), ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
        ciphertext_crc32c=crc32c_of_bytes(ciphertext), object_key=okey,
        s3_bucket=ctx.dcfg.s3_bucket, gcs_bucket=ctx.dcfg.gcs_bucket,
    )
    for step in (Step.DUMP, Step.ENCRYPT, Step.UPLOAD, Step.REPLICATE):
        manifest = manifest.with_step(step, at)
    for role in roles:
        store = ctx.store(role)
        store.put_stream(okey, io.BytesIO(ciphertext), len(ciphertext),
                         crc32c=crc32c_of_bytes(ciphertext), retain_until=retain_until)
        copy = manifest.with_step(Step.VERIFY, at) if role in verified else manifest
        write_manifest(ctx, store, mkey, copy)
    rig.data_keys[backup_id] = bytes(data_key)
    return backup_id


def backups(rig: Rig) -> list[str]:
    """Three verified backups of two sources (so two data classes), in both stores."""
    return [backup(rig, "accounts", at=T0), backup(rig, "accounts", at=T0 + timedelta(hours=1)),
            backup(rig, "catalog", at=T0)]


def assert_opens(rig: Rig, backup_id: str, keyring: Keyring | None = None) -> None:
    """Every copy's manifest verifies and its wrappings open to the backup's own data key."""
    for role in ROLES:
        manifest = rig.manifest(role, backup_id)
        context = data_key_context(BackupRef.parse(backup_id))
        opened = (keyring or rig.ctx.keyring).open_all(manifest.wrappings, context)
        assert bytes(opened) == rig.data_keys[backup_id], f"{role} copy of {backup_id}"


# --- init and rotate -------------------------------------------------------------------------


def test_init_writes_a_current_local_key_and_refuses_a_second_init(tmp_path: Path) -> None:
    config = managed_config(tmp_path)
    path = tmp_path / "eu.keyring.json"
    doc = keys.init(config, Domain.EU)
    (entry,) = doc.keys
    assert (entry.wrapper, entry.current) == ("local", True)
    assert entry.id.startswith("eu-")
    assert entry.material is not None and len(base64.b64decode(entry.material)) == KEY_BYTES
    assert read_keyring_document(path, Domain.EU, ("local",)) == doc
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ctx = DomainContext(config, Domain.EU)
    assert ctx.keyring.current_ids() == {"local": entry.id}

    written = path.read_bytes()
    with pytest.raises(ConfigError, match="exists already; use 'regionvault keys rotate'"):
        keys.init(config, Domain.EU)
    assert path.read_bytes() == written  # the first key was not replaced


def test_init_imports_static_keys_as_previous_ones(tmp_path: Path) -> None:
    config = managed_config(tmp_path)
    static = os.urandom(KEY_BYTES)
    key_file = tmp_path / "eu-2026.key"
    key_file.write_text(base64.b64encode(static).decode() + "\n")
    doc = keys.init(config, Domain.EU, imports=[keys.read_import(f"eu-2026={key_file}")])
    imported = next(k for k in doc.keys if k.id == "eu-2026")
    assert not imported.current
    keyring = DomainContext(config, Domain.EU).keyring
    assert keyring.holds("eu-2026") and keyring.current_ids()["local"] != "eu-2026"
    # what the static key wrapped still opens
    old = Keyring.local_only(Domain.EU, {"eu-2026": static}, current="eu-2026")
    data_key = new_data_key()
    context = data_key_context(BackupRef.parse("eu.accounts.20261101T020000Z.1a2b3c4d"))
    assert keyring.unwrap(old.wrap(data_key, context), context) == data_key


def test_keys_operations_refuse_a_static_domain(tmp_path: Path) -> None:
    data = config_data("eu")
    config = parse_config(data, origin="test", env={})
    with pytest.raises(ConfigError, match="uses static keys"):
        keys.init(config, Domain.EU)
    with pytest.raises(ConfigError, match="uses static keys"):
        keys.rotate(config, Domain.EU)


def test_rotate_makes_a_new_current_key_and_keeps_the_old(rig: Rig) -> None:
    old = rig.current_local()
    backup_id = backup(rig)
    assert rig.ctx.keyring.current_ids() == {"local": old}
    rotated = keys.rotate(rig.ctx.config, Domain.EU)
    new = rotated["local"]
    assert new != old
    doc = rig.document()
    assert {k.id: k.current for k in doc.keys} == {old: False, new: True}
    # the same context (a running worker) wraps with the new key from now on ...
    assert rig.ctx.keyring.current_ids() == {"local": new}
    assert rig.ctx.keyring.holds(old)
    # ... and what the old key wrapped and signed still reads and opens
    assert rig.manifest("s3", backup_id).mac is not None
    assert rig.manifest("s3", backup_id).mac.key_id == old  # type: ignore[union-attr]
    assert_opens(rig, backup_id)


def test_rotate_refuses_a_wrapper_the_domain_does_not_use(rig: Rig) -> None:
    before = rig.keyring_file.read_bytes()
    with pytest.raises(ConfigError, match="does not use wrapper"):
        keys.rotate(rig.ctx.config, Domain.EU, only=["aws-kms"])
    assert rig.keyring_file.read_bytes() == before


# --- rewrap ----------------------------------------------------------------------------------


def test_rewrap_moves_every_manifest_to_the_new_key_and_leaves_the_objects(rig: Rig) -> None:
    ids = backups(rig)
    old = rig.current_local()
    new = keys.rotate(rig.ctx.config, Domain.EU)["local"]
    objects = rig.objects()
    assert len(objects) == 6
    rig.forget_puts()

    report = keys.rewrap(rig.ctx)

    assert (report.rewrapped, report.already, report.left) == (6, 0, [])
    assert (report.remaining, report.checked) == (0, 6)
    assert rig.objects() == objects  # byte-identical
    for store in rig.stores:
        assert [k for k in store.puts if k.endswith(".rvb")] == []  # no object written
        assert sorted(store.puts) == sorted(rig.keys_of(b)[1] for b in ids)  # one PUT each
    new_only = rig.only(new)
    for backup_id in ids:
        for role in ROLES:
            manifest = rig.manifest(role, backup_id)
            assert [(w.wrapper, w.key_id) for w in manifest.wrappings] == [("local", new)]
            assert manifest.mac is not None and manifest.mac.key_id == new
            assert old not in manifest.key_ids()
            assert manifest.version == MANIFEST_VERSION and manifest.verified
        # the new wrappings open, with the new key alone, to the data key made for the backup
        assert_opens(rig, backup_id, new_only)


def test_rewrap_run_again_has_nothing_to_do(rig: Rig) -> None:
    backups(rig)
    keys.rotate(rig.ctx.config, Domain.EU)
    keys.rewrap(rig.ctx)
    rig.forget_puts()
    again = keys.rewrap(rig.ctx)
    assert (again.rewrapped, again.already, again.remaining) == (0, 6, 0)
    assert rig.s3.puts == rig.gcs.puts == []


@pytest.mark.parametrize("failure", [
    pytest.param(RuntimeError("killed"), id="process-killed"),
    pytest.param(TransientStoreError("s3 went away"), id="store-went-away"),
])
def test_an_interrupted_rewrap_completes_when_run_again(rig: Rig, failure: Exception) -> None:
    ids = backups(rig)
    old = rig.current_local()
    new = keys.rotate(rig.ctx.config, Domain.EU)["local"]
    rig.s3.fail_after, rig.s3.failure = 2, failure

    if isinstance(failure, RuntimeError):
        with pytest.raises(RuntimeError, match="killed"):
            keys.rewrap(rig.ctx)
        on_new = 2
    else:
        first = keys.rewrap(rig.ctx)
        # the s3 failure is reported and the others still moved
        assert first.rewrapped == 5 and first.remaining == 1
        assert len(first.left) == 1 and first.left[0].startswith("s3 eu/")
        assert "s3 went away" in first.left[0]
        on_new = 5
    copies = [rig.manifest(role, b) for b in ids for role in ROLES]
    assert sum(m.mac is not None and m.mac.key_id == new for m in copies) == on_new
    for backup_id in ids:  # half-way, every backup still opens, old key or new
        assert_opens(rig, backup_id)

    rig.s3.fail_after = None
    second = keys.rewrap(rig.ctx)
    assert (second.rewrapped, second.already) == (6 - on_new, on_new)
    assert (second.remaining, second.left) == (0, [])
    assert [u.key_id for u in keys.key_usage(rig.ctx)] == [new]
    assert old not in [u.key_id for u in keys.key_usage(rig.ctx)]


def test_rewrap_from_the_current_key_is_refused(rig: Rig) -> None:
    with pytest.raises(ConfigError, match="is current"):
        keys.rewrap(rig.ctx, from_key=rig.current_local())


def test_rewrap_leaves_a_manifest_whose_chain_may_still_run(rig: Rig) -> None:
    running = backup(rig, at=NOW - timedelta(minutes=5), verified=())
    keys.rotate(rig.ctx.config, Domain.EU)
    report = keys.rewrap(rig.ctx)
    assert report.rewrapped == 0 and report.remaining == 2
    assert len(report.left) == 2 and all("may still be running" in x for x in report.left)
    assert all(running in x for x in report.left)


# --- retire and key usage --------------------------------------------------------------------


def test_retire_is_refused_while_manifests_need_the_key_and_works_after_rewrap(
    rig: Rig,
) -> None:
    ids = backups(rig)
    old = rig.current_local()
    new = keys.rotate(rig.ctx.config, Domain.EU)["local"]
    before = rig.keyring_file.read_bytes()
    with pytest.raises(KeyInUse, match=f"key '{old}' is still needed by 6 manifest copies") \
            as info:
        keys.retire(rig.ctx, old)
    assert f"--from-key {old}" in str(info.value)
    assert rig.keyring_file.read_bytes() == before  # nothing was removed

    keys.rewrap(rig.ctx)
    assert keys.retire(rig.ctx, old) == f"local key {old} removed from the keyring"

    doc = rig.document()
    assert [k.id for k in doc.keys] == [new]
    assert [(r.id, r.wrapper) for r in doc.retired] == [(old, "local")]
    keyring = rig.ctx.keyring  # re-read from the file
    assert not keyring.holds(old) and old in keyring.retired
    for backup_id in ids:
        assert_opens(rig, backup_id)


def test_retire_of_the_current_key_is_refused(rig: Rig) -> None:
    current = rig.current_local()
    with pytest.raises(KeyInUse, match=f"'{current}' is the current local key"):
        keys.retire(rig.ctx, current)
    assert [k.id for k in rig.document().keys] == [current]


def test_retire_of_an_unknown_key_names_the_held_ones(rig: Rig) -> None:
    with pytest.raises(ConfigError, match=f"holds no key 'eu-1999' \\(holds: "
                                          f"{rig.current_local()}\\)"):
        keys.retire(rig.ctx, "eu-1999")


def test_key_usage_reports_ids_copies_and_whether_they_are_held(rig: Rig) -> None:
    assert keys.key_usage(rig.ctx) == []
    ids = backups(rig)
    old = rig.current_local()
    new = keys.rotate(rig.ctx.config, Domain.EU)["local"]
    (usage,) = keys.key_usage(rig.ctx)
    assert (usage.key_id, usage.held, usage.retired) == (old, True, False)
    assert usage.copies == {"s3": 3, "gcs": 3}

    keys.rewrap(rig.ctx)
    keys.retire(rig.ctx, old)
    (usage,) = keys.key_usage(rig.ctx)
    assert (usage.key_id, usage.held, usage.retired, usage.copies) == (
        new, True, False, {"s3": 3, "gcs": 3})

    # a manifest that names a retired key and one the domain never held
    ref = BackupRef.parse(ids[0])
    context = data_key_context(ref)
    data_key = rig.data_keys[ids[0]]
    gone = LocalWrapper(Domain.EU, {old: bytearray(os.urandom(KEY_BYTES)),
                                    "eu-never": bytearray(os.urandom(KEY_BYTES))}, old)
    stale = gone.wrap(data_key, context)
    gone.current_key_id = "eu-never"
    stranger = gone.wrap(data_key, context)
    _, mkey = rig.keys_of(ids[0])
    manifest = rig.manifest("s3", ids[0])
    write_manifest(rig.ctx, rig.s3, mkey,
                   manifest.model_copy(update={"wrappings": (stale, stranger)}))
    usage_by_id = {u.key_id: u for u in keys.key_usage(rig.ctx)}
    assert set(usage_by_id) == {old, new, "eu-never"}
    assert (usage_by_id[old].held, usage_by_id[old].retired) == (False, True)
    assert (usage_by_id["eu-never"].held, usage_by_id["eu-never"].retired) == (False, False)
    assert usage_by_id["eu-never"].copies == {"s3": 1}
    assert usage_by_id[new].copies == {"s3": 3, "gcs": 3}  # the MAC of that copy names it


# --- erasure ---------------------------------------------------------------------------------


def test_erase_shreds_the_backup_in_both_stores(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    rig = make_rig(tmp_path, versioned=True)  # older manifest versions are kept, as on S3
    backup_id = backup(rig)
    kept = backup(rig, "catalog")
    okey, mkey = rig.keys_of(backup_id)

    outcome = erase(rig.ctx, backup_id, reason=" GDPR art. 17 request 4711 ", by="dpo@example")

    record = outcome.record
    assert (record.erased_at, record.by, record.reason) == (NOW, "dpo@example",
                                                            "GDPR art. 17 request 4711")
    assert outcome.objects == {"s3": "deleted", "gcs": "deleted"}
    # the version of the manifest that still held the wrappings is gone too
    assert outcome.manifests == {role: "erasure record written, 1 older version(s) removed"
                                 for role in ROLES}
    for role in ROLES:
        store = rig.ctx.store(role)
        manifest = rig.manifest(role, backup_id)  # read back: its MAC verifies
        assert manifest.erasure == record and manifest.wrappings == ()
        assert manifest.erased and not manifest.verified and manifest.state() == "erased"
        assert manifest.mac is not None and manifest.mac.key_id == rig.current_local()
        assert parse_manifest(rig.ctx, store.get_bytes(mkey), "test", key=mkey) == manifest
        # no older version of the manifest still holds a wrapping
        assert rig.s3.versions(mkey) == 1 and rig.gcs.versions(mkey) == 1
        with pytest.raises(NotFound):
            store.get_bytes(okey)
        # restore refuses it, saying when it was erased
        loaded = load_manifest(rig.ctx, backup_id, role)
        assert "erased on 2026-11-02T02:00:00+00:00 by dpo@example" in str(erased_error(loaded))
        with pytest.raises(BackupErased, match="was erased on 2026-11-02"):
            _restore_from(rig.ctx, backup_id, "postgresql:///unused", role, False, no_progress)
        # no key the domain holds opens it
        with pytest.raises(WrongKeyError):
            rig.ctx.keyring.unwrap(manifest.wrappings,
                                   data_key_context(BackupRef.parse(backup_id)))
    assert_opens(rig, kept)  # the other backup is untouched


def test_erase_keeps_a_locked_object_unreadable(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    rig = make_rig(tmp_path, lock_mode="governance")
    backup_id = backup(rig, retain_until=NOW + timedelta(days=20))
    okey, _ = rig.keys_of(backup_id)
    outcome = erase(rig.ctx, backup_id, reason="request 4712", by="dpo")
    for role in ROLES:
        assert outcome.objects[role].startswith("kept, unreadable: ")
        assert rig.ctx.store(role).get_bytes(okey)  # still there, locked ...
        assert rig.manifest(role, backup_id).wrappings == ()  # ... with no key to open it


def test_erase_again_keeps_the_first_record(rig: Rig) -> None:
    backup_id = backup(rig)
    first = erase(rig.ctx, backup_id, reason="request 1", by="dpo")
    rig.clock.now = NOW + timedelta(hours=3)
    second = erase(rig.ctx, backup_id, reason="request 2", by="someone else")
    assert second.record == first.record
    for role in ROLES:
        assert rig.manifest(role, backup_id).erasure == first.record


def test_erase_of_a_backup_not_verified_in_both_stores_is_busy(rig: Rig) -> None:
    only_s3 = backup(rig, roles=("s3",))
    unverified = backup(rig, "catalog", verified=("s3",))
    for backup_id in (only_s3, unverified):
        with pytest.raises(BackupBusy, match=f"backup {backup_id} is not verified in both"):
            erase(rig.ctx, backup_id, reason="request", by="dpo")
    # nothing was written: the wrappings are all there
    assert rig.manifest("s3", only_s3).wrappings
    for role in ROLES:
        assert rig.manifest(role, unverified).wrappings and not rig.manifest(
            role, unverified).erased


@pytest.mark.parametrize("reason", ["", "   \n"])
def test_erase_needs_a_reason(rig: Rig, reason: str) -> None:
    backup_id = backup(rig)
    with pytest.raises(ConfigError, match="needs a reason"):
        erase(rig.ctx, backup_id, reason=reason, by="dpo")
    assert_opens(rig, backup_id)


def test_erase_of_an_unknown_backup_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound, match="nothing to erase"):
        erase(rig.ctx, "eu.accounts.20261101T020000Z.0badf00d", reason="r", by="dpo")


def test_erased_backups_are_resigned_by_rewrap_and_do_not_block_retire(rig: Rig) -> None:
    erased, kept = backup(rig), backup(rig, "catalog")
    erase(rig.ctx, erased, reason="request", by="dpo")
    old = rig.current_local()
    new = keys.rotate(rig.ctx.config, Domain.EU)["local"]
    report = keys.rewrap(rig.ctx)
    assert (report.rewrapped, report.remaining) == (4, 0)
    for role in ROLES:
        manifest = rig.manifest(role, erased)
        assert manifest.erased and manifest.wrappings == ()
        assert manifest.key_ids() == (new,)
    keys.retire(rig.ctx, old)
    assert_opens(rig, kept)
