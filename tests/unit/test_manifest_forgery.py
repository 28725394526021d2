"""Forged manifests over in-memory stores: every reader checks the MAC, and each one does what
its caller needs with a forgery: verify and the steps fail naming it, the catalogue lists it
without hiding the others, restore refuses it (and never skips it for an older backup in
silence), retention leaves it out. Key rotation keeps what was signed before readable."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from regionvault import catalogue, chain, manifest_store
from regionvault import context as context_module
from regionvault import spool as sp
from regionvault.backup_state import gather_facts
from regionvault.config import SourceConfig
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import IntegrityError, ManifestForged, UnauthenticatedManifest
from regionvault.keyring import Keyring
from regionvault.restore import legacy_warning, load_manifest, select_backup
from tests.unit.test_chain import (
    KEY_ID,
    T0,
    Clock,
    FakeSource,
    GCSRole,
    Rig,
    S3Role,
    backup_at,
    keys_of,
    make_config,
)

BUCKETS = {"s3": "s3://rv-eu-primary/", "gcs": "gs://rv-eu-replica/"}


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    """test_chain's rig: in-memory S3 and GCS, a temporary spool, a fake source."""
    monkeypatch.setattr(context_module, "_residency_checked", set())
    config = make_config(tmp_path)
    clock = Clock(T0)
    s3 = S3Role("rv-eu-primary", "eu-central-1", clock=clock)
    gcs = GCSRole("rv-eu-replica", "europe-west4", clock=clock)
    keyring = Keyring.local_only(Domain.EU, {KEY_ID: b"k" * 32}, current=KEY_ID)
    ctx = DomainContext(config, Domain.EU, clock=clock, s3=s3, gcs=gcs, keyring=keyring)
    built = Rig(ctx=ctx, s3=s3, gcs=gcs, clock=clock, spool_root=config.spool_for(Domain.EU))

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        return FakeSource(name=src.name, between=lambda: None)

    monkeypatch.setattr(chain, "open_source", open_source)
    return built


Edit = Callable[[dict[str, Any]], None]


def forge(rig: Rig, role: str, backup_id: str, edit: Edit) -> str:
    """Edit the stored manifest of ``backup_id`` in ``role`` by hand; return its key."""
    store = rig.s3 if role == "s3" else rig.gcs
    _, mkey = keys_of(backup_id, rig)
    data = json.loads(store.get_bytes(mkey))
    edit(data)
    store.put_bytes(mkey, json.dumps(data, indent=2).encode())
    return mkey


def as_legacy(data: dict[str, Any]) -> None:
    """What a version-1 manifest looked like: the same fields, no MAC."""
    data.pop("mac")
    data["version"] = 1


def later(data: dict[str, Any]) -> None:
    data["created_at"] = "2027-06-01T00:00:00Z"


EDITS: dict[str, Edit] = {
    "created_at": later,
    "data_class": lambda d: d.__setitem__("data_class", "metadata"),
    "steps": lambda d: d["steps"].pop("replicate"),
    "row_counts": lambda d: d["row_counts"].__setitem__("public.customers", 7),
    "expires_at": lambda d: d.__setitem__("expires_at", "2099-01-01T00:00:00Z"),
    "key_id": lambda d: d.__setitem__("key_id", "eu-2019"),
    "wrapped_data_key": lambda d: d.__setitem__("wrapped_data_key", "AAAA"),
}


# --- verify and the steps --------------------------------------------------------------------


@pytest.mark.parametrize("role", ["s3", "gcs"])
@pytest.mark.parametrize("field", list(EDITS))
def test_verify_fails_naming_the_forged_manifest(rig: Rig, role: str, field: str) -> None:
    backup_id = backup_at(rig, T0)
    mkey = forge(rig, role, backup_id, EDITS[field])
    with pytest.raises(ManifestForged) as info:
        chain.verify(rig.ctx, backup_id, deep=True)
    message = str(info.value)
    assert message.startswith(f"backup {backup_id} failed verification: the {role} manifest "
                              f"{BUCKETS[role]}{mkey} fails its MAC")
    # the verify metrics count failures by "<store> manifest" in the message
    assert f"{role} manifest" in message


def test_an_untouched_manifest_verifies_and_stays_signed(rig: Rig) -> None:
    backup_id = backup_at(rig, T0)
    assert chain.verify(rig.ctx, backup_id, deep=True).step.value == "verify"
    for store in (rig.s3, rig.gcs):
        manifest = manifest_store.read_manifest(rig.ctx, store, keys_of(backup_id, rig)[1])
        assert manifest is not None and manifest.verified and manifest.mac is not None


def test_replicate_and_upload_refuse_a_forged_manifest(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    chain.dump(rig.ctx, backup_id)
    chain.encrypt(rig.ctx, backup_id)
    # the spool is shared by the domain's workers: its draft manifest is checked too
    spooled = json.loads(rig.ctx.spool.read_bytes(backup_id, sp.MANIFEST_FILE))
    good = json.dumps(spooled).encode()
    later(spooled)
    rig.ctx.spool.write_bytes(backup_id, sp.MANIFEST_FILE, json.dumps(spooled).encode())
    with pytest.raises(ManifestForged, match=f"spool manifest of backup {backup_id}"):
        chain.upload(rig.ctx, backup_id)
    assert list(rig.s3.list_keys("")) == []  # nothing was signed for the stores
    rig.ctx.spool.write_bytes(backup_id, sp.MANIFEST_FILE, good)
    chain.upload(rig.ctx, backup_id)
    forge(rig, "s3", backup_id, EDITS["row_counts"])
    with pytest.raises(ManifestForged, match="s3 manifest s3://rv-eu-primary/"):
        chain.replicate(rig.ctx, backup_id)
    assert list(rig.gcs.list_keys("")) == []


def test_reconciler_facts_do_not_trust_a_forged_manifest(rig: Rig) -> None:
    backup_id = backup_at(rig, T0)
    assert gather_facts(rig.ctx, backup_id).verified
    forge(rig, "s3", backup_id, later)
    facts = gather_facts(rig.ctx, backup_id)
    assert facts.s3_unknown and facts.s3_steps is None and not facts.verified


# --- the catalogue ---------------------------------------------------------------------------


def test_listing_names_a_forged_manifest_and_keeps_the_others(rig: Rig) -> None:
    first = backup_at(rig, T0)
    forged = backup_at(rig, T0 + timedelta(hours=1))
    last = backup_at(rig, T0 + timedelta(hours=2), source="catalog")
    mkey = forge(rig, "s3", forged, later)
    found = catalogue.listing(rig.ctx)
    assert [m.backup_id for m in found.manifests] == [first, last]
    [untrusted] = found.untrusted
    assert (untrusted.backup_id, untrusted.store, untrusted.key) == (forged, "s3", mkey)
    assert untrusted.forged and isinstance(untrusted.error, ManifestForged)
    assert [m.backup_id for m in catalogue.list_backups(rig.ctx)] == [first, last]
    # one store's forgery does not touch the other's copy
    assert catalogue.find_backup(rig.ctx, forged).keys() == {"gcs"}
    copies = catalogue.find_copies(rig.ctx, forged)
    assert isinstance(copies["s3"], manifest_store.UntrustedManifest) and copies["s3"].forged
    forge(rig, "gcs", forged, later)
    with pytest.raises(ManifestForged, match="fails its MAC"):
        catalogue.find_backup(rig.ctx, forged)


def test_a_malformed_manifest_is_listed_as_unreadable(rig: Rig) -> None:
    kept = backup_at(rig, T0)
    broken = backup_at(rig, T0 + timedelta(hours=1))
    rig.s3.put_bytes(keys_of(broken, rig)[1], b'{"version": 2, "backup_id": ')
    found = catalogue.listing(rig.ctx)
    assert [m.backup_id for m in found.manifests] == [kept]
    [untrusted] = found.untrusted
    assert untrusted.backup_id == broken and not untrusted.forged
    assert "malformed" in str(untrusted.error)


# --- restore and retention -------------------------------------------------------------------


def test_restore_refuses_a_forged_manifest(rig: Rig) -> None:
    backup_id = backup_at(rig, T0)
    forge(rig, "s3", backup_id, EDITS["wrapped_data_key"])
    with pytest.raises(ManifestForged, match="s3 manifest s3://rv-eu-primary/"):
        load_manifest(rig.ctx, backup_id, "s3")
    assert load_manifest(rig.ctx, backup_id, "gcs").backup_id == backup_id


def test_selection_never_skips_a_newer_forged_backup_in_silence(rig: Rig) -> None:
    older = backup_at(rig, T0)
    newer = backup_at(rig, T0 + timedelta(hours=1))
    at = T0 + timedelta(days=1)
    assert select_backup(rig.ctx, "accounts", at, role=None).backup_id == newer
    forge(rig, "s3", newer, EDITS["steps"])
    with pytest.raises(ManifestForged) as info:
        select_backup(rig.ctx, "accounts", at, role=None)
    assert newer in str(info.value) and "name it by id" in str(info.value)
    # before the forged backup was taken, the older one is the answer
    assert select_backup(rig.ctx, "accounts", T0 + timedelta(minutes=30),
                         role=None).backup_id == older
    # the other store's catalogue is intact
    assert select_backup(rig.ctx, "accounts", at, role="gcs").backup_id == newer
    # an older forged backup does not stand in the way
    forge(rig, "gcs", older, later)
    assert select_backup(rig.ctx, "accounts", at, role="gcs").backup_id == newer


def test_retention_leaves_forged_manifests_out(rig: Rig) -> None:
    kept = backup_at(rig, T0)
    forged = backup_at(rig, T0 + timedelta(hours=1))
    forge(rig, "s3", forged, later)
    src = rig.ctx.config.source(Domain.EU, "accounts")
    found = manifest_store.source_manifests(rig.ctx, src)
    assert sorted(found) == sorted([kept, forged])
    assert [m.created_at for m in found[forged]] == [T0 + timedelta(hours=1)]  # gcs copy only
    assert len(found[kept]) == 2


# --- key rotation ----------------------------------------------------------------------------


def test_rotation_keeps_older_manifests_verifiable_and_signs_with_the_new_key(
        rig: Rig) -> None:
    backup_id = backup_at(rig, T0)
    _, mkey = keys_of(backup_id, rig)
    old = rig.ctx.keyring
    assert isinstance(old, Keyring)
    rotated = DomainContext(rig.ctx.config, Domain.EU, clock=rig.clock, s3=rig.s3, gcs=rig.gcs,
                            keyring=Keyring.local_only(Domain.EU, {"eu-2027": b"n" * 32,
                                                             KEY_ID: b"k" * 32},
                                                 current="eu-2027"))
    before = manifest_store.read_manifest(rotated, rig.s3, mkey)
    assert before is not None and before.mac is not None and before.mac.key_id == KEY_ID
    chain.verify(rotated, backup_id, deep=True)
    for store in (rig.s3, rig.gcs):
        after = manifest_store.read_manifest(rotated, store, mkey)
        assert after is not None and after.mac is not None and after.mac.key_id == "eu-2027"
        # the data key stays wrapped by the key that wrapped it (until 'keys rewrap')
        assert [w.key_id for w in after.wrappings] == [KEY_ID]
    # without the old key, what it signed cannot be checked, and the message says so
    forgetful = DomainContext(rig.ctx.config, Domain.EU, clock=rig.clock, s3=rig.s3,
                              gcs=rig.gcs,
                              keyring=Keyring.local_only(Domain.EU, {"eu-2028": b"x" * 32},
                                                   current="eu-2028"))
    with pytest.raises(ManifestForged, match="does not hold key"):
        manifest_store.read_manifest(forgetful, rig.s3, mkey)


# --- version-1 manifests ---------------------------------------------------------------------


def test_a_legacy_manifest_restores_with_a_warning_and_is_trusted_for_nothing_else(
        rig: Rig) -> None:
    legacy = backup_at(rig, T0)
    for role in ("s3", "gcs"):
        forge(rig, role, legacy, as_legacy)
    # verify and the steps refuse it: nothing re-signs an unauthenticated manifest
    with pytest.raises(UnauthenticatedManifest) as info:
        chain.verify(rig.ctx, legacy, deep=True)
    assert "failed verification" in str(info.value) and "version-1" in str(info.value)
    with pytest.raises(UnauthenticatedManifest):
        chain.replicate(rig.ctx, legacy)
    # retention and the reconciler leave it to the expiry sweep (by the stores' timestamps)
    src = rig.ctx.config.source(Domain.EU, "accounts")
    assert manifest_store.source_manifests(rig.ctx, src) == {}
    assert gather_facts(rig.ctx, legacy).s3_unknown
    # restore reads it, flagged, with a warning
    manifest = load_manifest(rig.ctx, legacy, "s3")
    assert manifest.legacy and manifest.verified
    warning = legacy_warning(manifest, "s3")
    assert warning is not None and legacy in warning and "without a MAC" in warning
    [listed] = catalogue.list_backups(rig.ctx)
    assert listed.legacy
    assert select_backup(rig.ctx, "accounts", T0 + timedelta(days=1), role=None).legacy
    # once an authenticated backup exists it is preferred, even to a legacy manifest whose
    # created_at was moved forward
    forge(rig, "s3", legacy, lambda d: d.__setitem__("created_at", "2026-11-01T09:00:00Z"))
    fresh = backup_at(rig, T0 + timedelta(hours=1))
    chosen = select_backup(rig.ctx, "accounts", T0 + timedelta(days=1), role=None)
    assert chosen.backup_id == fresh and not chosen.legacy


def test_integrity_sampling_names_a_forged_manifest_and_skips_it(rig: Rig) -> None:
    from regionvault.integrity import MemoryReadLedger, run_sample

    backup_id = backup_at(rig, T0)
    mkey = forge(rig, "gcs", backup_id, EDITS["row_counts"])
    report = run_sample(rig.ctx, MemoryReadLedger(), T0 + timedelta(hours=1),
                        interval=timedelta(days=30))
    assert any(mkey in s and "fails its MAC" in s for s in report.skipped)
    assert not report.mismatches


def test_errors_are_integrity_errors_for_the_sweeps() -> None:
    assert issubclass(ManifestForged, IntegrityError)
    assert issubclass(UnauthenticatedManifest, IntegrityError)
    assert not issubclass(UnauthenticatedManifest, ManifestForged)
