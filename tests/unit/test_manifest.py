"""Backup ids, object keys and the manifest's JSON form (its MAC: test_manifest_mac.py)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone

import pytest

from regionvault.config import DataClass
from regionvault.domains import Domain
from regionvault.errors import ConfigError, IntegrityError, ManifestForged
from regionvault.keyring import Keyring
from regionvault.manifest import (
    MANIFEST_VERSION,
    BackupRef,
    Manifest,
    Step,
    backup_started,
    expiry_for,
    key_prefix,
    manifest_key,
    new_backup_id,
    object_key,
    parse_manifest,
    sign_manifest,
)

WHEN = datetime(2026, 11, 28, 2, 0, 5, tzinfo=UTC)
BACKUP_ID = "eu.accounts.20261128T020005Z.1a2b3c4d"
KEYS = Keyring.local_only(Domain.EU, {"eu-2026": os.urandom(32)}, current="eu-2026")


def test_new_backup_id_round_trips_through_parse() -> None:
    backup_id = new_backup_id(Domain.EU, "accounts", WHEN)
    assert backup_id.startswith("eu.accounts.20261128T020005Z.")
    ref = BackupRef.parse(backup_id)
    assert (ref.backup_id, ref.domain, ref.source) == (backup_id, Domain.EU, "accounts")


def test_new_backup_id_uses_utc_and_is_unique() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=10)))
    ids = {new_backup_id(Domain.AU, "a-1", local) for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("au.a-1.20261128T020005Z.") for i in ids)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("eu/accounts.20261128T020005Z.1a2b3c4d", id="slash"),
        pytest.param("eu.accounts/x.20261128T020005Z.1a2b3c4d", id="slash-in-source"),
        pytest.param("eu....20261128T020005Z.1a2b3c4d", id="dotdot"),
        pytest.param("eu.../..20261128T020005Z.1a2b3c4d", id="traversal"),
        pytest.param("EU.accounts.20261128T020005Z.1a2b3c4d", id="upper-domain"),
        pytest.param("eu.Accounts.20261128T020005Z.1a2b3c4d", id="upper-source"),
        pytest.param("eu.accounts.20261128T020005Z.1A2B3C4D", id="upper-hex"),
        pytest.param("xx.accounts.20261128T020005Z.1a2b3c4d", id="unknown-domain"),
        pytest.param("eu.accounts.20261128T020005Z", id="missing-nonce"),
        pytest.param("eu.accounts", id="missing-stamp"),
        pytest.param("eu", id="domain-only"),
        pytest.param("", id="empty"),
        pytest.param(BACKUP_ID + "\n", id="trailing-newline"),
        pytest.param(BACKUP_ID + ".rvb", id="with-suffix"),
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not a backup id"):
        BackupRef.parse(bad)


def test_object_and_manifest_key_layout() -> None:
    assert key_prefix(Domain.EU, DataClass.PII, "accounts") == "eu/pii/accounts/"
    assert object_key(Domain.EU, DataClass.PII, "accounts", BACKUP_ID) == (
        f"eu/pii/accounts/{BACKUP_ID}.rvb")
    assert manifest_key(Domain.US, DataClass.METADATA, "catalog", BACKUP_ID) == (
        f"us/metadata/catalog/{BACKUP_ID}.manifest.json")


def make_manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = dict(
        backup_id=BACKUP_ID, domain=Domain.EU, source="accounts", source_kind="postgres",
        data_class=DataClass.PII, created_at=WHEN,
        expires_at=expiry_for(WHEN, timedelta(days=29)), key_id="eu-2026",
        wrapped_data_key="d3JhcHBlZA==", plaintext_size=1000, plaintext_sha256="a" * 64,
        ciphertext_size=700, ciphertext_sha256="b" * 64, ciphertext_crc32c="AAAAAA==",
        object_key=object_key(Domain.EU, DataClass.PII, "accounts", BACKUP_ID),
        s3_bucket="rv-eu-primary", gcs_bucket="rv-eu-replica",
    )
    fields.update(changes)
    return Manifest.model_validate(fields)


def test_expiry_for() -> None:
    assert make_manifest().expires_at == datetime(2026, 12, 27, 2, 0, 5, tzinfo=UTC)


def test_backup_started_reads_the_stamp_of_the_id() -> None:
    assert backup_started(BACKUP_ID) == WHEN
    assert backup_started("not an id") is None


def test_manifest_json_round_trip() -> None:
    manifest = sign_manifest(KEYS, make_manifest().with_step(Step.DUMP, WHEN).with_step(
        Step.ENCRYPT, WHEN + timedelta(minutes=1), "700 bytes"))
    again = parse_manifest(KEYS, manifest.to_json(), "test")
    assert again == manifest
    assert again.steps[Step.ENCRYPT].detail == "700 bytes"
    assert json.loads(manifest.to_json())["version"] == MANIFEST_VERSION == 3


def test_with_step_does_not_change_the_original() -> None:
    manifest = make_manifest()
    stepped = manifest.with_step(Step.DUMP, WHEN)
    assert manifest.steps == {}
    assert Step.DUMP in stepped.steps


def test_parse_rejects_another_version() -> None:
    data = json.loads(sign_manifest(KEYS, make_manifest()).to_json())
    data["version"] = 4
    with pytest.raises(IntegrityError, match="version 4") as info:
        parse_manifest(KEYS, json.dumps(data).encode(), "s3 manifest s3://rv-eu-primary/x")
    assert "s3 manifest s3://rv-eu-primary/x" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"version": 1}', id="missing-fields"),
    ],
)
def test_parse_rejects_malformed(data: bytes) -> None:
    with pytest.raises(IntegrityError, match="the where is malformed"):
        parse_manifest(KEYS, data, "where", allow_legacy=True)


def test_parse_rejects_unknown_fields() -> None:
    data = json.loads(sign_manifest(KEYS, make_manifest()).to_json())
    data["plaintext"] = "oops"
    with pytest.raises(ManifestForged, match="fails its MAC"):  # the MAC covers every field
        parse_manifest(KEYS, json.dumps(data).encode(), "x")
    legacy = {k: v for k, v in data.items() if k != "mac"} | {"version": 1}
    with pytest.raises(IntegrityError, match="malformed"):  # and a version-1 one is checked
        parse_manifest(KEYS, json.dumps(legacy).encode(), "x", allow_legacy=True)


def test_an_unsigned_manifest_has_no_stored_form() -> None:
    signed = sign_manifest(KEYS, make_manifest())
    assert signed.mac is not None
    stepped = signed.with_step(Step.VERIFY, WHEN)
    assert stepped.mac is None  # the old MAC does not cover the new step
    with pytest.raises(ValueError, match="not signed"):
        stepped.to_json()


@pytest.mark.parametrize(
    ("steps", "state"),
    [
        pytest.param((), "new", id="new"),
        pytest.param((Step.DUMP,), "dumped", id="dumped"),
        pytest.param((Step.DUMP, Step.ENCRYPT), "encrypted", id="encrypted"),
        pytest.param((Step.DUMP, Step.ENCRYPT, Step.UPLOAD), "uploaded", id="uploaded"),
        pytest.param((Step.DUMP, Step.ENCRYPT, Step.UPLOAD, Step.REPLICATE), "replicated",
                     id="replicated"),
        pytest.param(tuple(Step)[:5], "verified", id="verified"),
        pytest.param(tuple(Step), "verified", id="expired-is-still-verified"),
        pytest.param((Step.VERIFY, Step.DUMP), "verified", id="furthest-not-latest-added"),
    ],
)
def test_state_names_the_furthest_step(steps: tuple[Step, ...], state: str) -> None:
    manifest = make_manifest()
    for step in steps:
        manifest = manifest.with_step(step, WHEN)
    assert manifest.state() == state
    assert manifest.verified is (Step.VERIFY in steps)
