"""Authenticated manifests: the MAC, its canonical form, its key, rotation and legacy manifests.

Every field of a stored manifest decides something (retention, "verified", drills, restore), so
an edit of any one of them must be found before anything reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from datetime import timedelta
from typing import Any

import pytest

from regionvault.config import DataClass
from regionvault.domains import Domain
from regionvault.errors import (
    IntegrityError,
    ManifestForged,
    UnauthenticatedManifest,
    WrongKeyError,
)
from regionvault.keyring import MANIFEST_MAC_LABEL, Keyring, manifest_mac_key
from regionvault.manifest import (
    MAC_ALG,
    MANIFEST_VERSION,
    Manifest,
    Step,
    canonical_form,
    manifest_key,
    parse_manifest,
    sign_manifest,
)
from tests.unit.test_keyring import assert_no_key_material
from tests.unit.test_manifest import BACKUP_ID, WHEN, make_manifest

WHERE = "s3 manifest s3://rv-eu-primary/" + manifest_key(Domain.EU, DataClass.PII, "accounts",
                                                          BACKUP_ID)
KEY = manifest_key(Domain.EU, DataClass.PII, "accounts", BACKUP_ID)


def keyring(**keys: bytes) -> Keyring:
    """An eu keyring whose current key is the first one named."""
    return Keyring.local_only(Domain.EU, dict(keys), current=next(iter(keys)))


def full_manifest() -> Manifest:
    """A manifest with every optional part filled in: row counts and all steps."""
    manifest = make_manifest(row_counts={"public.customers": 500, "public.plans": 3})
    for i, step in enumerate(Step):
        manifest = manifest.with_step(step, WHEN + timedelta(minutes=i), f"{step.value} done")
    return manifest


def stored(keys: Keyring, manifest: Manifest | None = None) -> dict[str, Any]:
    """The stored JSON of a signed manifest, as an object to edit."""
    data: dict[str, Any] = json.loads(sign_manifest(keys, manifest or full_manifest()).to_json())
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2).encode()


# --- the MAC and its key ---------------------------------------------------------------------


def test_round_trip_and_the_mac_format() -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    signed = sign_manifest(keys, full_manifest())
    data = json.loads(signed.to_json())
    assert data["version"] == MANIFEST_VERSION == 3
    assert set(data["mac"]) == {"key_id", "alg", "value"}
    assert data["mac"]["key_id"] == "eu-2026" and data["mac"]["alg"] == MAC_ALG == "HMAC-SHA256"
    assert len(bytes.fromhex(data["mac"]["value"])) == 32
    again = parse_manifest(keys, signed.to_json(), WHERE, key=KEY)
    assert again == signed and not again.legacy
    assert again.row_counts == {"public.customers": 500, "public.plans": 3}


def test_the_mac_is_hmac_sha256_over_the_canonical_form_under_the_hkdf_key() -> None:
    """The documented construction, computed by hand: a second implementation can check it."""
    domain_key = os.urandom(32)
    keys = keyring(**{"eu-2026": domain_key})
    data = stored(keys)
    mac = data.pop("mac")
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True).encode("ascii")
    assert canonical == canonical_form(data)
    assert b"\n" not in canonical and b'": ' not in canonical and b', "' not in canonical
    assert list(json.loads(canonical)) == sorted(data)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"regionvault manifest mac v1|eu").derive(domain_key)
    assert MANIFEST_MAC_LABEL == b"regionvault manifest mac v1"
    assert mac_key == manifest_mac_key(domain_key, Domain.EU)
    assert mac["value"] == hmac.new(mac_key, canonical, hashlib.sha256).hexdigest()


def test_the_mac_key_is_never_the_encryption_key() -> None:
    domain_key = os.urandom(32)
    mac_key = manifest_mac_key(domain_key, Domain.EU)
    assert mac_key != domain_key and len(mac_key) == 32
    # nor another domain's MAC key from the same bytes
    assert mac_key != manifest_mac_key(domain_key, Domain.US)
    keys = keyring(**{"k": domain_key})
    data = b"some manifest"
    _, mac = keys.manifest_mac(data)
    assert mac != hmac.new(domain_key, data, hashlib.sha256).digest()


def test_keyring_names_the_key_and_refuses_an_unknown_one_without_showing_keys() -> None:
    old, new = os.urandom(32), os.urandom(32)
    keys = keyring(**{"eu-new": new, "eu-old": old})
    key_id, mac = keys.manifest_mac(b"x")
    assert key_id == "eu-new"
    assert keys.verify_manifest_mac(b"x", "eu-new", mac)
    assert not keys.verify_manifest_mac(b"y", "eu-new", mac)
    assert not keys.verify_manifest_mac(b"x", "eu-old", mac)
    assert keys.manifest_mac(b"x", "eu-old")[0] == "eu-old"
    with pytest.raises(WrongKeyError, match="'eu-2019'") as info:
        keys.verify_manifest_mac(b"x", "eu-2019", mac)
    assert "previous_keys" in str(info.value)
    assert_no_key_material(str(info.value), old, new, manifest_mac_key(new, Domain.EU))


# --- the canonical form ----------------------------------------------------------------------


def test_canonical_form_is_stable_under_re_serialisation() -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    first = sign_manifest(keys, full_manifest())
    again = parse_manifest(keys, first.to_json(), WHERE)
    assert sign_manifest(keys, again).mac == first.mac  # read back and signed again: same MAC
    assert canonical_form(again.signed_fields()) == canonical_form(first.signed_fields())
    # the stored layout does not matter: compact, reordered or re-indented, it still verifies
    data = json.loads(first.to_json())
    for layout in (json.dumps(data).encode(),
                   json.dumps(dict(reversed(list(data.items()))), indent=7).encode(),
                   json.dumps(data, sort_keys=True, separators=(",", ":")).encode()):
        assert parse_manifest(keys, layout, WHERE) == first


def test_canonical_form_escapes_non_ascii_and_sorts_nested_keys() -> None:
    assert canonical_form({"b": {"z": 1, "a": "é"}, "a": [2, 1]}) == (
        b'{"a":[2,1],"b":{"a":"\\u00e9","z":1}}')


# --- any edit is found -----------------------------------------------------------------------


def _edits() -> list[Any]:
    """One edit per field of a stored manifest, each one a value a forger might want."""
    later = (WHEN + timedelta(days=400)).isoformat()
    earlier = (WHEN - timedelta(days=1)).isoformat()

    def drop_step(d: dict[str, Any]) -> None:
        del d["steps"]["verify"]

    def add_step(d: dict[str, Any]) -> None:
        d["steps"]["verify"] = {"at": WHEN.isoformat(), "detail": "trust me"}

    def edit(field: str, value: Any) -> Any:
        return lambda d: d.__setitem__(field, value)

    def count(d: dict[str, Any]) -> None:
        d["row_counts"]["public.plans"] += 1

    cases = [
        pytest.param(edit("created_at", later), id="created_at-forward"),
        pytest.param(edit("created_at", earlier), id="created_at-back"),
        pytest.param(edit("data_class", "metadata"), id="data_class"),
        pytest.param(drop_step, id="steps-removed"),
        pytest.param(add_step, id="steps-changed"),
        pytest.param(count, id="row_counts"),
        pytest.param(edit("row_counts", {}), id="row_counts-emptied"),
        pytest.param(edit("expires_at", later), id="expires_at"),
        pytest.param(lambda d: d["wrappings"][0].__setitem__("key_id", "eu-2019"),
                     id="wrappings-key_id"),
        pytest.param(lambda d: d["wrappings"][0].__setitem__("blob", "b3RoZXI="),
                     id="wrappings-blob"),
        pytest.param(edit("wrappings", []), id="wrappings-removed"),
        pytest.param(edit("erasure", {"erased_at": "2026-11-29T00:00:00Z", "by": "x",
                                      "reason": "forged"}), id="erasure-added"),
        pytest.param(edit("backup_id", "eu.accounts.20261128T020005Z.00000000"), id="backup_id"),
        pytest.param(edit("source", "billing"), id="source"),
        pytest.param(edit("domain", "us"), id="domain"),
        pytest.param(edit("source_kind", "mysql"), id="source_kind"),
        pytest.param(edit("plaintext_size", 1), id="plaintext_size"),
        pytest.param(edit("plaintext_sha256", "c" * 64), id="plaintext_sha256"),
        pytest.param(edit("ciphertext_size", 1), id="ciphertext_size"),
        pytest.param(edit("ciphertext_sha256", "c" * 64), id="ciphertext_sha256"),
        pytest.param(edit("ciphertext_crc32c", "BBBBBB=="), id="ciphertext_crc32c"),
        pytest.param(edit("object_key", "eu/pii/accounts/other.rvb"), id="object_key"),
        pytest.param(edit("s3_bucket", "rv-elsewhere"), id="s3_bucket"),
        pytest.param(edit("gcs_bucket", None), id="gcs_bucket"),
        pytest.param(edit("swift_container", "rv-elsewhere"), id="swift_container"),
        pytest.param(edit("primary_store", "gcs"), id="primary_store"),
        pytest.param(edit("replica_store", "swift"), id="replica_store"),
        pytest.param(edit("server_version", "9.6"), id="server_version"),
        pytest.param(edit("tool_version", "pg_dump (PostgreSQL) 9.6"), id="tool_version"),
        pytest.param(edit("stream_format", "RVS0"), id="stream_format"),
        pytest.param(edit("compression", "none"), id="compression"),
        pytest.param(edit("extra", "field"), id="added-field"),
        pytest.param(lambda d: d.pop("row_counts"), id="removed-field"),
    ]
    return cases


def test_every_field_is_covered_by_an_edit_case() -> None:
    covered = {p.id.split("-")[0] for p in _edits()}
    # version: changing it leads to another check (version 1 is legacy, others unknown)
    assert set(Manifest.model_fields) - {"mac", "version"} <= covered


@pytest.mark.parametrize("change", _edits())
def test_an_edited_field_is_forged(change: Any) -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    data = stored(keys)
    change(data)
    with pytest.raises(ManifestForged) as info:
        parse_manifest(keys, encode(data), WHERE, key=KEY)
    assert isinstance(info.value, IntegrityError)  # what an expiry sweep sets aside
    message = str(info.value)
    assert WHERE in message and "s3" in message and "rv-eu-primary" in message
    assert "fails its MAC under key 'eu-2026'" in message
    assert "other store's copy" in message and "new backup" in message  # what to do


def test_a_re_signed_step_edit_is_the_only_way_to_change_a_manifest() -> None:
    """Adding a step by hand fails; the same step added and signed by the domain passes."""
    keys = keyring(**{"eu-2026": os.urandom(32)})
    data = stored(keys, make_manifest())
    forged = json.loads(json.dumps(data))
    forged["steps"]["verify"] = {"at": WHEN.isoformat(), "detail": "trust me"}
    with pytest.raises(ManifestForged):
        parse_manifest(keys, encode(forged), WHERE)
    honest = sign_manifest(keys, make_manifest().with_step(Step.VERIFY, WHEN, "trust me"))
    assert parse_manifest(keys, honest.to_json(), WHERE).verified


@pytest.mark.parametrize(
    ("change", "words"),
    [
        pytest.param(lambda d: d.pop("mac"), "carries no MAC", id="mac-removed"),
        pytest.param(lambda d: d["mac"].__setitem__("value", "00" * 32), "fails its MAC",
                     id="mac-value"),
        pytest.param(lambda d: d["mac"].__setitem__("value", "zz"), "not HMAC-SHA256 in hex",
                     id="mac-not-hex"),
        pytest.param(lambda d: d["mac"].__setitem__("alg", "none"), "not HMAC-SHA256",
                     id="mac-alg"),
        pytest.param(lambda d: d.__setitem__("mac", "x"), "not HMAC-SHA256", id="mac-not-object"),
        pytest.param(lambda d: d["mac"].__setitem__("key_id", "eu-old"),
                     "fails its MAC under key 'eu-old'", id="mac-other-held-key"),
        pytest.param(lambda d: d["mac"].__setitem__("key_id", "eu-1999"),
                     "does not hold key 'eu-1999'", id="mac-unknown-key"),
    ],
)
def test_a_tampered_mac_is_forged(change: Any, words: str) -> None:
    keys = keyring(**{"eu-2026": os.urandom(32), "eu-old": os.urandom(32)})
    data = stored(keys)
    change(data)
    with pytest.raises(ManifestForged, match=words):
        parse_manifest(keys, encode(data), WHERE)


def test_a_manifest_moved_under_another_backups_key_is_forged() -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    data = encode(stored(keys))
    other = manifest_key(Domain.EU, DataClass.PII, "accounts",
                         "eu.accounts.20261201T020005Z.00000000")
    with pytest.raises(ManifestForged, match="belongs at eu/pii/accounts/"):
        parse_manifest(keys, data, WHERE, key=other)
    as_metadata = manifest_key(Domain.EU, DataClass.METADATA, "accounts", BACKUP_ID)
    with pytest.raises(ManifestForged, match="belongs at"):
        parse_manifest(keys, data, WHERE, key=as_metadata)
    assert parse_manifest(keys, data, WHERE, key=KEY).backup_id == BACKUP_ID


# --- keys: rotation and other domains --------------------------------------------------------


def test_a_manifest_signed_before_rotation_verifies_after_it() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = keyring(**{"eu-2025": old})
    signed = sign_manifest(before, full_manifest())
    # the rotation: a new current key, the old one moved to previous_keys
    after = keyring(**{"eu-2026": new, "eu-2025": old})
    assert parse_manifest(after, signed.to_json(), WHERE) == signed
    assert signed.mac is not None and signed.mac.key_id == "eu-2025"
    # what is signed from now on carries the new key's id, and both stay readable
    resigned = sign_manifest(after, signed.with_step(Step.EXPIRE, WHEN, "kept"))
    assert resigned.mac is not None and resigned.mac.key_id == "eu-2026"
    assert parse_manifest(after, resigned.to_json(), WHERE).steps[Step.EXPIRE].detail == "kept"
    # a keyring that dropped the old key names what to configure
    forgetful = keyring(**{"eu-2026": new})
    with pytest.raises(ManifestForged, match="previous_keys") as info:
        parse_manifest(forgetful, signed.to_json(), WHERE)
    assert "'eu-2025'" in str(info.value) and WHERE in str(info.value)
    assert_no_key_material(str(info.value), old, new)


@pytest.mark.parametrize("same_bytes", [False, True], ids=["other-key", "same-key-bytes"])
def test_a_manifest_signed_by_another_domains_key_is_forged(same_bytes: bool) -> None:
    eu_key = os.urandom(32)
    us_key = eu_key if same_bytes else os.urandom(32)
    us = Keyring.local_only(Domain.US, {"k1": us_key}, current="k1")
    eu = Keyring.local_only(Domain.EU, {"k1": eu_key}, current="k1")
    # a manifest claiming to be eu's, signed with us's key under the same key id
    fields = full_manifest().signed_fields()
    key_id, mac = us.manifest_mac(canonical_form(fields))
    data = {**fields, "mac": {"key_id": key_id, "alg": MAC_ALG, "value": mac.hex()}}
    with pytest.raises(ManifestForged, match="fails its MAC"):
        parse_manifest(eu, encode(data), WHERE)
    # and eu's own manifest read with us's keys
    with pytest.raises(ManifestForged):
        parse_manifest(us, sign_manifest(eu, full_manifest()).to_json(), WHERE)


def test_a_domain_signs_only_its_own_manifests() -> None:
    us = Keyring.local_only(Domain.US, {"k1": os.urandom(32)}, current="k1")
    with pytest.raises(IntegrityError, match="domain 'eu'"):
        sign_manifest(us, full_manifest())


# --- version 1: unauthenticated legacy -------------------------------------------------------


def legacy_bytes(**changes: Any) -> bytes:
    """A version-1 manifest as regionvault wrote them before manifests carried a MAC."""
    data = full_manifest().signed_fields() | {"version": 1} | changes
    return json.dumps(data, indent=2).encode()


def test_a_legacy_manifest_is_refused_unless_legacy_is_allowed() -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    with pytest.raises(UnauthenticatedManifest, match="version-1 manifest without a MAC") as info:
        parse_manifest(keys, legacy_bytes(), WHERE, key=KEY)
    assert not isinstance(info.value, ManifestForged)
    assert isinstance(info.value, IntegrityError) and WHERE in str(info.value)
    legacy = parse_manifest(keys, legacy_bytes(), WHERE, key=KEY, allow_legacy=True)
    assert legacy.legacy and legacy.mac is None and legacy.verified


def test_a_legacy_manifest_is_never_re_signed() -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    legacy = parse_manifest(keys, legacy_bytes(), WHERE, allow_legacy=True)
    with pytest.raises(UnauthenticatedManifest, match="never re-signed"):
        sign_manifest(keys, legacy.with_step(Step.VERIFY, WHEN))


def test_a_version_1_manifest_with_a_mac_is_forged() -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    data = stored(keys)
    data["version"] = 1
    with pytest.raises(ManifestForged, match="claims version 1"):
        parse_manifest(keys, encode(data), WHERE, allow_legacy=True)


def test_a_legacy_manifest_still_must_sit_where_its_backup_belongs() -> None:
    keys = keyring(**{"eu-2026": os.urandom(32)})
    with pytest.raises(ManifestForged, match="belongs at"):
        parse_manifest(keys, legacy_bytes(data_class="metadata"), WHERE, key=KEY,
                       allow_legacy=True)
    with pytest.raises(ManifestForged, match="domain 'us'"):
        parse_manifest(keys, legacy_bytes(domain="us"), WHERE, allow_legacy=True)

