"""Backup ids, object keys and the manifest that sits beside every backup object.

The stores are the catalogue: a manifest holds everything a restore needs (with the domain's
key), so nothing else has to survive a disaster. Object keys carry domain, data class and
source so that bucket lifecycle rules can target a data class by prefix::

    <domain>/<data class>/<source>/<backup id>.rvb             the encrypted backup
    <domain>/<data class>/<source>/<backup id>.manifest.json   its manifest

Manifests are authenticated (version 2). Their fields decide retention, "verified" and drills,
so each one carries ``mac = {"key_id", "alg": "HMAC-SHA256", "value": <hex>}``: an HMAC-SHA256
over the canonical form of every other field, under the MAC key that the domain key named by
``key_id`` yields (see ``regionvault.keyring.manifest_mac_key``). The canonical form is the
manifest's JSON object without ``mac``, serialised with keys sorted at every level, no
whitespace (separators ``,`` and ``:``), non-ASCII escaped as ``\\uXXXX``, encoded as ASCII::

    json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

A reader checks the MAC over the fields exactly as stored, before it trusts or even validates
them (``parse_manifest``), so any edit, added field or removed field is found, whatever the
stored layout (the stored file is indented for people; the MAC does not depend on that).

Version-1 manifests (written before manifests carried a MAC) are "unauthenticated legacy":
only readers that ask for ``allow_legacy`` accept them: restore, disaster recovery and drills
(with a warning, and an authenticated backup is always preferred), the read-back of stored
bytes, and the expiry sweep (which never lets a manifest make a backup younger than its
store's timestamp). Verify, the chain's steps and the chain's own retention step refuse them
(``UnauthenticatedManifest``), and regionvault never signs one, so an edited legacy manifest
cannot be laundered into a trusted one.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from regionvault.config import SOURCE_NAME_RE, DataClass
from regionvault.domains import Domain
from regionvault.errors import (
    ConfigError,
    IntegrityError,
    ManifestForged,
    UnauthenticatedManifest,
    WrongKeyError,
)
from regionvault.keyring import Keyring, Wrapping

#: version 3 keeps every wrapping of the data key (``wrappings``) and an erasure record;
#: version 2 kept one local wrapping (``key_id``, ``wrapped_data_key``) and is still read
MANIFEST_VERSION = 3
#: versions that carry a MAC
AUTHENTICATED_VERSIONS = (2, 3)
#: manifests without a MAC, written before version 2; readable only as unauthenticated legacy
LEGACY_MANIFEST_VERSION = 1
MAC_ALG: Literal["HMAC-SHA256"] = "HMAC-SHA256"
OBJECT_SUFFIX = ".rvb"
MANIFEST_SUFFIX = ".manifest.json"

_BACKUP_ID_RE = re.compile(
    r"(?P<domain>[a-z]{2})\.(?P<source>[a-z0-9][a-z0-9-]{0,62})\."
    r"(?P<stamp>\d{8}T\d{6}Z)\.(?P<nonce>[0-9a-f]{8})"
)


class Step(StrEnum):
    """The steps of a backup chain, in order."""

    DUMP = "dump"
    ENCRYPT = "encrypt"
    UPLOAD = "upload"
    REPLICATE = "replicate"
    VERIFY = "verify"
    EXPIRE = "expire"


STEPS: tuple[Step, ...] = tuple(Step)


def new_backup_id(domain: Domain, source: str, now: datetime) -> str:
    """``<domain>.<source>.<UTC stamp>.<random>``: sortable by time, unique, parseable."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{domain.value}.{source}.{stamp}.{secrets.token_hex(4)}"


class BackupRef(BaseModel):
    """What a backup id says: its domain and source (validated, never a path)."""

    model_config = ConfigDict(frozen=True)

    backup_id: str
    domain: Domain
    source: str

    @classmethod
    def parse(cls, backup_id: str) -> BackupRef:
        match = _BACKUP_ID_RE.fullmatch(backup_id)
        if match is None or match["domain"] not in {d.value for d in Domain}:
            raise ConfigError(
                f"{backup_id!r} is not a backup id (expected <domain>.<source>.<UTC time>.<hex>,"
                " e.g. eu.accounts.20261128T020000Z.1a2b3c4d)"
            )
        assert SOURCE_NAME_RE.fullmatch(match["source"])
        return cls(backup_id=backup_id, domain=Domain(match["domain"]), source=match["source"])


def backup_started(backup_id: str) -> datetime | None:
    """When a backup's chain started, from the UTC stamp in its id (None: not a backup id).

    Unlike a manifest's ``created_at`` this is known even when the manifest is not trusted:
    the id is the object's name, which the manifest's MAC and location check tie together.
    """
    match = _BACKUP_ID_RE.fullmatch(backup_id)
    if match is None:
        return None
    return datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def class_prefix(domain: Domain, data_class: DataClass) -> str:
    """Where every backup of a data class of a domain lies: what bucket rules target."""
    return f"{domain.value}/{data_class.value}/"


def key_prefix(domain: Domain, data_class: DataClass, source: str) -> str:
    return f"{class_prefix(domain, data_class)}{source}/"


def object_key(domain: Domain, data_class: DataClass, source: str, backup_id: str) -> str:
    return key_prefix(domain, data_class, source) + backup_id + OBJECT_SUFFIX


def manifest_key(domain: Domain, data_class: DataClass, source: str, backup_id: str) -> str:
    return key_prefix(domain, data_class, source) + backup_id + MANIFEST_SUFFIX


class StepRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    detail: str = ""


class ManifestMac(BaseModel):
    """The MAC of a manifest: which domain key signed it, how, and the MAC (hex)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str
    alg: Literal["HMAC-SHA256"] = MAC_ALG
    value: str


class Erasure(BaseModel):
    """The record of a crypto-shredded backup: who erased it, when and why (no data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    erased_at: datetime
    by: str
    reason: str


class Manifest(BaseModel):
    """Versioned JSON beside each backup object, in both stores.

    Built in memory unsigned; ``sign_manifest`` adds ``mac`` and only a signed manifest has a
    stored form (``to_json``). Read back only through ``parse_manifest``, which checks it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = MANIFEST_VERSION
    backup_id: str
    domain: Domain
    source: str
    source_kind: str
    data_class: DataClass
    created_at: datetime
    expires_at: datetime
    #: the data key, wrapped by every key-encryption key of the domain (empty once erased)
    wrappings: tuple[Wrapping, ...] = ()
    #: set by ``regionvault erase``: the wrappings are destroyed and the objects deleted
    erasure: Erasure | None = None
    stream_format: str = "RVS1"
    compression: str = "zstd"
    plaintext_size: int
    plaintext_sha256: str
    ciphertext_size: int
    ciphertext_sha256: str
    ciphertext_crc32c: str
    object_key: str
    #: exact rows per table ("schema.table") in the dumped snapshot; restore drills check them
    row_counts: dict[str, int] = {}
    s3_bucket: str | None = None
    gcs_bucket: str | None = None
    swift_container: str | None = None
    #: the stores that hold the primary copy (uploaded) and the replica (replicated)
    primary_store: str = "s3"
    replica_store: str = "gcs"
    #: the source server's version and the dump program's, as the dump found them
    server_version: str = ""
    tool_version: str = ""
    steps: dict[Step, StepRecord] = {}
    #: set by ``sign_manifest``; None on a manifest being built and on a legacy (version 1) one
    mac: ManifestMac | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_wrapping_before_v3(cls, data: Any) -> Any:
        """Versions 1 and 2 kept one local wrapping as ``key_id`` + ``wrapped_data_key``."""
        if isinstance(data, dict) and "wrapped_data_key" in data:
            data = dict(data)
            wrapped, key_id = data.pop("wrapped_data_key"), data.pop("key_id", None)
            data["wrappings"] = [{"wrapper": "local", "key_id": key_id, "blob": wrapped}]
        return data

    @property
    def verified(self) -> bool:
        """Verified in both stores and not erased: a backup that restores."""
        return Step.VERIFY in self.steps and self.erasure is None

    @property
    def erased(self) -> bool:
        return self.erasure is not None

    def key_ids(self) -> tuple[str, ...]:
        """The key-encryption keys this manifest needs: its wrappings' keys and its MAC's."""
        ids = [w.key_id for w in self.wrappings]
        if self.mac is not None:
            ids.append(self.mac.key_id)
        return tuple(dict.fromkeys(ids))

    @property
    def legacy(self) -> bool:
        """A version-1 manifest: it carries no MAC, so nothing vouches for its fields."""
        return self.version == LEGACY_MANIFEST_VERSION

    def with_step(self, step: Step, at: datetime, detail: str = "") -> Manifest:
        """A copy with ``step`` recorded; unsigned, since its MAC no longer covers it."""
        steps = dict(self.steps)
        steps[step] = StepRecord(at=at, detail=detail)
        return self.model_copy(update={"steps": steps, "mac": None})

    def state(self) -> str:
        """The furthest step reached, e.g. ``verified`` or ``uploaded``; or ``erased``."""
        if self.erasure is not None:
            return "erased"
        names = {
            Step.DUMP: "dumped", Step.ENCRYPT: "encrypted", Step.UPLOAD: "uploaded",
            Step.REPLICATE: "replicated", Step.VERIFY: "verified", Step.EXPIRE: "verified",
        }
        reached = [s for s in STEPS if s in self.steps]
        return names[reached[-1]] if reached else "new"

    def signed_fields(self) -> dict[str, Any]:
        """The JSON object the MAC covers: every field but ``mac``."""
        return self.model_dump(mode="json", exclude={"mac"})

    def to_json(self) -> bytes:
        """The stored form of a signed manifest (indented for people; the MAC covers the
        canonical form, not this layout)."""
        if self.mac is None:
            raise ValueError(f"manifest of backup {self.backup_id} is not signed; store it "
                             "through regionvault.manifest_store.sign or write_manifest")
        return self.model_dump_json(indent=2).encode()


class HoldsKeyring(Protocol):
    """Anything that carries a domain's keyring (a ``DomainContext``)."""

    @property
    def keyring(self) -> Keyring: ...


def _keyring_of(keys: Keyring | HoldsKeyring) -> Keyring:
    if isinstance(keys, Keyring):
        return keys
    return cast(HoldsKeyring, keys).keyring


def canonical_form(fields: Mapping[str, Any]) -> bytes:
    """The bytes a manifest MAC covers: sorted keys at every level, no whitespace, ASCII."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def sign_manifest(keys: Keyring | HoldsKeyring, manifest: Manifest) -> Manifest:
    """``manifest`` as the current version, with a MAC under the domain's current local key
    (a version-2 manifest rewritten by a step or a rewrap becomes version 3)."""
    if manifest.legacy:  # never launder an unauthenticated manifest into a trusted one
        raise UnauthenticatedManifest(
            f"the legacy (version 1) manifest of backup {manifest.backup_id} is never "
            "re-signed: nothing vouches for its fields; take a new backup of the source")
    keyring = _keyring_of(keys)
    if manifest.domain is not keyring.domain:
        raise IntegrityError(
            f"the manifest of backup {manifest.backup_id} belongs to domain "
            f"{manifest.domain.value!r} and is not signed with the keys of domain "
            f"{keyring.domain.value!r}")
    unsigned = manifest.model_copy(update={"mac": None, "version": MANIFEST_VERSION})
    key_id, mac = keyring.manifest_mac(canonical_form(unsigned.signed_fields()))
    return unsigned.model_copy(update={"mac": ManifestMac(key_id=key_id, value=mac.hex())})


def _validate(fields: dict[str, Any], where: str) -> Manifest:
    try:
        return Manifest.model_validate(fields)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"]
        raise IntegrityError(f"the {where} is malformed: {problem}") from None


def _forged(where: str, why: str,
            cause: str = "it was changed outside regionvault") -> ManifestForged:
    return ManifestForged(
        f"the {where} {why}: {cause}, so none of its fields is trusted; keep it for "
        "investigation, use the other store's copy if that one verifies, and take a new "
        "backup of the source")


def parse_manifest(keys: Keyring | HoldsKeyring, data: bytes, where: str, *,
                   key: str | None = None, allow_legacy: bool = False) -> Manifest:
    """The manifest in ``data``, read only if its MAC checks out under the domain's keys.

    ``keys`` is a domain's keyring or anything holding one (a ``DomainContext``); ``where``
    says what and where for messages, e.g. ``s3 manifest s3://bucket/eu/pii/x/ID.manifest.json``.
    With ``key`` (the object key it was read from), a manifest that describes another backup
    than the one that key names is refused as moved. Raises ``ManifestForged`` for a MAC that
    fails (or is missing, or names a key the domain does not hold), ``UnauthenticatedManifest``
    for a version-1 manifest unless ``allow_legacy``, ``IntegrityError`` for bytes that are no
    manifest at all: every one an ``IntegrityError``, so a sweep can set it aside and go on.
    """
    keyring = _keyring_of(keys)
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"the {where} is malformed: it is not JSON") from None
    if not isinstance(raw, dict):
        raise IntegrityError(f"the {where} is malformed: it is not a JSON object")
    version = raw.get("version")
    if version == LEGACY_MANIFEST_VERSION:
        if "mac" in raw:
            raise _forged(where, "claims version 1, which has no MAC, yet carries one")
        manifest = _validate(raw, where)
        if not allow_legacy:
            raise UnauthenticatedManifest(
                f"the {where} is a version-1 manifest without a MAC, so verify and retention "
                "do not trust it; restore can still read it, and a new backup of the source "
                "replaces it (expiry removes it by the store's own timestamp)")
    elif version in AUTHENTICATED_VERSIONS:
        manifest = _authenticated(keyring, raw, where, version)
    else:
        raise IntegrityError(
            f"the {where} has version {version!r}; this regionvault reads versions "
            f"{', '.join(map(str, AUTHENTICATED_VERSIONS))} (and {LEGACY_MANIFEST_VERSION} "
            "as unauthenticated legacy)")
    if manifest.domain is not keyring.domain:
        raise _forged(where, f"describes a backup of domain {manifest.domain.value!r}, not "
                             f"{keyring.domain.value!r}")
    if key is not None:
        home = manifest_key(manifest.domain, manifest.data_class, manifest.source,
                            manifest.backup_id)
        if key != home:
            raise _forged(where, f"describes backup {manifest.backup_id}, whose manifest "
                                 f"belongs at {home}")
    return manifest


def _authenticated(keyring: Keyring, raw: dict[str, Any], where: str, version: int) -> Manifest:
    fields = dict(raw)
    stored_mac = fields.pop("mac", None)
    if stored_mac is None:
        raise _forged(where, f"claims version {version} but carries no MAC")
    try:
        mac = ManifestMac.model_validate(stored_mac)
        value = bytes.fromhex(mac.value)
    except (ValidationError, ValueError, TypeError):
        raise _forged(where, f"carries a MAC that is not {MAC_ALG} in hex") from None
    try:
        valid = keyring.verify_manifest_mac(canonical_form(fields), mac.key_id, value)
    except WrongKeyError as exc:
        raise ManifestForged(
            f"the {where} cannot be checked: {exc}; unless that is a retired key of this "
            "domain, treat the manifest as forged and take a new backup of the source") from None
    if not valid:
        raise _forged(where, f"fails its MAC under key {mac.key_id!r}",
                      "it was changed outside regionvault (or the key configured as "
                      f"{mac.key_id!r} is not the one that signed it)")
    return _validate(raw, where)


def expiry_for(created_at: datetime, retention: timedelta) -> datetime:
    return created_at + retention
