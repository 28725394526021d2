"""Backup ids, object keys and the manifest that sits beside every backup object.

The stores are the catalogue: a manifest holds everything a restore needs (with the domain's
key), so nothing else has to survive a disaster. Object keys carry domain, data class and
source so that bucket lifecycle rules can target a data class by prefix::

    <domain>/<data class>/<source>/<backup id>.rvb             the encrypted backup
    <domain>/<data class>/<source>/<backup id>.manifest.json   its manifest
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, ValidationError

from regionvault.config import SOURCE_NAME_RE, DataClass
from regionvault.domains import Domain
from regionvault.errors import ConfigError, IntegrityError

MANIFEST_VERSION = 1
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


def key_prefix(domain: Domain, data_class: DataClass, source: str) -> str:
    return f"{domain.value}/{data_class.value}/{source}/"


def object_key(domain: Domain, data_class: DataClass, source: str, backup_id: str) -> str:
    return key_prefix(domain, data_class, source) + backup_id + OBJECT_SUFFIX


def manifest_key(domain: Domain, data_class: DataClass, source: str, backup_id: str) -> str:
    return key_prefix(domain, data_class, source) + backup_id + MANIFEST_SUFFIX


class StepRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    detail: str = ""


class Manifest(BaseModel):
    """Versioned JSON beside each backup object, in both stores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = MANIFEST_VERSION
    backup_id: str
    domain: Domain
    source: str
    source_kind: str
    data_class: DataClass
    created_at: datetime
    expires_at: datetime
    key_id: str
    wrapped_data_key: str
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
    steps: dict[Step, StepRecord] = {}

    @property
    def verified(self) -> bool:
        return Step.VERIFY in self.steps

    def with_step(self, step: Step, at: datetime, detail: str = "") -> Manifest:
        steps = dict(self.steps)
        steps[step] = StepRecord(at=at, detail=detail)
        return self.model_copy(update={"steps": steps})

    def state(self) -> str:
        """The furthest step reached, e.g. ``verified`` or ``uploaded``."""
        names = {
            Step.DUMP: "dumped", Step.ENCRYPT: "encrypted", Step.UPLOAD: "uploaded",
            Step.REPLICATE: "replicated", Step.VERIFY: "verified", Step.EXPIRE: "verified",
        }
        reached = [s for s in STEPS if s in self.steps]
        return names[reached[-1]] if reached else "new"

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, *, where: str) -> Manifest:
        try:
            manifest = cls.model_validate_json(data)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            raise IntegrityError(f"manifest {where} is malformed: {problem}") from None
        if manifest.version != MANIFEST_VERSION:
            raise IntegrityError(
                f"manifest {where} has version {manifest.version}; this regionvault reads "
                f"version {MANIFEST_VERSION}"
            )
        return manifest


def expiry_for(created_at: datetime, retention: timedelta) -> datetime:
    return created_at + retention
