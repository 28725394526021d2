"""Backups as the stores hold them: addressing a backup, and reading and writing its manifests.

The stores are the catalogue. Every manifest is written signed with the domain's current key
(``sign``, ``write_manifest``) and read only after its MAC checks out (``read_manifest``): no
caller acts on a manifest that was changed outside regionvault, nor on an unauthenticated
version-1 one (restore alone may accept those, with ``allow_legacy``).

The chain, restore, the catalogue, expiry and the reconciler all read manifests through here,
so none of them has to import the chain to find a backup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from regionvault.checksums import StreamDigest
from regionvault.config import SourceConfig
from regionvault.context import DomainContext
from regionvault.errors import IntegrityError, ManifestForged, NotFound, ResidencyError
from regionvault.keyring import WrapContext, wrap_context
from regionvault.manifest import (
    MANIFEST_SUFFIX,
    BackupRef,
    Manifest,
    key_prefix,
    manifest_key,
    object_key,
    parse_manifest,
    sign_manifest,
)
from regionvault.stores.base import ObjectStore

log = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024


def resolve(ctx: DomainContext, backup_id: str) -> tuple[BackupRef, SourceConfig]:
    """Parse a backup id and check it belongs to this context's domain and a known source."""
    ref = BackupRef.parse(backup_id)
    if ref.domain is not ctx.domain:
        raise ResidencyError(
            f"backup {backup_id} belongs to domain {ref.domain.value!r} and is refused by "
            f"domain {ctx.domain.value!r}"
        )
    return ref, ctx.config.source(ref.domain, ref.source)


def stream_context(ref: BackupRef, purpose: str) -> bytes:
    return wrap_context(ref.domain, ref.backup_id, purpose)


def data_key_context(ref: BackupRef) -> WrapContext:
    """What every wrapping of a backup's data key is bound to."""
    return WrapContext(ref.domain, ref.backup_id, "data-key")


def keys_of(ref: BackupRef, src: SourceConfig) -> tuple[str, str]:
    """(object key, manifest key) of a backup."""
    return (object_key(ref.domain, src.data_class, ref.source, ref.backup_id),
            manifest_key(ref.domain, src.data_class, ref.source, ref.backup_id))


def describe(store: ObjectStore, key: str) -> str:
    """A stored manifest as messages name it: ``s3 manifest s3://bucket/key``."""
    scheme = "gs" if store.name == "gcs" else store.name
    return f"{store.name} manifest {scheme}://{store.bucket}/{key}"


def read_manifest(ctx: DomainContext, store: ObjectStore, key: str, *,
                  allow_legacy: bool = False) -> Manifest | None:
    """The manifest stored under ``key``, checked against the domain's keys (None: absent).

    Raises ``ManifestForged`` (an ``IntegrityError``) for one that fails its MAC, and
    ``UnauthenticatedManifest`` for a version-1 one unless ``allow_legacy`` (restore only)."""
    try:
        data = store.get_bytes(key)
    except NotFound:
        return None
    return parse_manifest(ctx, data, describe(store, key), key=key, allow_legacy=allow_legacy)


def sign(ctx: DomainContext, manifest: Manifest) -> bytes:
    """The stored form of ``manifest``, signed with the domain's current key."""
    return sign_manifest(ctx, manifest).to_json()


def write_manifest(ctx: DomainContext, store: ObjectStore, key: str,
                   manifest: Manifest) -> None:
    """Store ``manifest`` under ``key``, signed with the domain's current key."""
    store.put_bytes(key, sign(ctx, manifest))


@dataclass(frozen=True)
class UntrustedManifest:
    """A stored manifest that could not be trusted (forged, version 1 where that is not
    accepted, or malformed), and why; a listing names it and goes on with the others."""

    store: str
    key: str
    error: IntegrityError

    @property
    def backup_id(self) -> str:
        return self.key.rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX)

    @property
    def forged(self) -> bool:
        return isinstance(self.error, ManifestForged)


def scan_manifests(ctx: DomainContext, store: ObjectStore, prefix: str, *,
                   allow_legacy: bool = False) -> Iterator[Manifest | UntrustedManifest]:
    """Every manifest a store holds under ``prefix`` (the stores are the catalogue), checked;
    one that fails is yielded as an ``UntrustedManifest`` and never hides the others."""
    for key in store.list_keys(prefix):
        if not key.endswith(MANIFEST_SUFFIX):
            continue
        try:
            manifest = read_manifest(ctx, store, key, allow_legacy=allow_legacy)
        except IntegrityError as exc:
            yield UntrustedManifest(store=store.name, key=key, error=exc)
            continue
        if manifest is not None:
            yield manifest


def manifests_under(ctx: DomainContext, store: ObjectStore, prefix: str) -> Iterator[Manifest]:
    """The manifests under ``prefix`` whose MAC checks out; the others are logged and left
    out, so that no decision is ever taken on what they claim."""
    for found in scan_manifests(ctx, store, prefix):
        if isinstance(found, UntrustedManifest):
            log.warning("%s", found.error)
            continue
        yield found


def source_manifests(ctx: DomainContext, src: SourceConfig) -> dict[str, list[Manifest]]:
    """Every trusted manifest of a source in both stores, by backup id.

    Retention decides by these only: a forged, malformed or version-1 manifest is left out
    (and logged) rather than trusted or allowed to stop the others' expiry; the domain's
    expiry sweep sets such manifests aside and ages their objects by the stores' timestamps.
    """
    prefix = key_prefix(ctx.domain, src.data_class, src.name)
    found: dict[str, list[Manifest]] = {}
    for store in ctx.stores():
        for manifest in manifests_under(ctx, store, prefix):
            found.setdefault(manifest.backup_id, []).append(manifest)
    return found


def check_copy(ctx: DomainContext, role: str, key: str, manifest: Manifest, *,
               deep: bool) -> list[str]:
    """Problems of the copy in store ``role`` ("s3", "gcs", "swift") against its manifest
    (empty if none)."""
    store = ctx.store(role)
    where = f"{role} copy {ctx.url(role, key)}"
    try:
        info = store.stat(key)
    except NotFound:
        return [f"the {where} is missing"]
    problems: list[str] = []
    if info.size != manifest.ciphertext_size:
        problems.append(f"the {where} has {info.size} bytes, the manifest says "
                        f"{manifest.ciphertext_size}")
    if info.crc32c != manifest.ciphertext_crc32c:
        problems.append(f"the {where} reports CRC32C {info.crc32c}, the manifest says "
                        f"{manifest.ciphertext_crc32c}")
    if deep and not problems:
        digest = StreamDigest()
        body = store.open_read(key)
        try:
            while chunk := body.read(READ_SIZE):
                digest.update(chunk)
        finally:
            body.close()
        if digest.sha256 != manifest.ciphertext_sha256 or digest.size != manifest.ciphertext_size:
            problems.append(f"the {where} has SHA-256 {digest.sha256[:16]}..., the manifest "
                            f"says {manifest.ciphertext_sha256[:16]}...")
    return problems
