"""The catalogue is the stores: listing backups reads their manifests, each one checked.

A manifest that fails its MAC (or is malformed) is listed as untrusted, by its key, and never
hides the others. Version-1 manifests (written before manifests carried a MAC) are listed and
may be restored, flagged ``legacy``; nothing else trusts them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from regionvault.config import SourceConfig
from regionvault.context import DomainContext
from regionvault.errors import IntegrityError, NotFound, TransientStoreError
from regionvault.manifest import Manifest, key_prefix
from regionvault.manifest_store import (
    UntrustedManifest,
    keys_of,
    read_manifest,
    resolve,
    scan_manifests,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """What one store's catalogue holds for a domain (or one source)."""

    store: str
    #: manifests whose MAC checks out, and legacy (version 1) ones; oldest first
    manifests: list[Manifest]
    #: manifests that cannot be trusted (forged or malformed), in key order
    untrusted: list[UntrustedManifest]


def listing(ctx: DomainContext, source: str | None = None) -> Listing:
    """The catalogue of a domain (or one source): each source's backups from its primary
    store, or from its replica when the primary is down."""
    parts: list[Listing] = []
    for src in _sources(ctx, source):
        placement = ctx.placement(src)
        try:
            parts.append(_listing_of(ctx, placement.primary, [src]))
        except TransientStoreError:
            parts.append(_listing_of(ctx, placement.replica, [src]))
    return Listing(
        store=",".join(dict.fromkeys(p.store for p in parts)),
        untrusted=[u for p in parts for u in p.untrusted],
        manifests=sorted((m for p in parts for m in p.manifests),
                         key=lambda m: (m.created_at, m.backup_id)))


def _sources(ctx: DomainContext, source: str | None) -> list[SourceConfig]:
    return [ctx.config.source(ctx.domain, source)] if source else list(ctx.dcfg.sources)


def listing_in(ctx: DomainContext, role: str, source: str | None = None) -> Listing:
    """The catalogue from one store only (disaster recovery reads GCS and never touches S3)."""
    return _listing_of(ctx, role, _sources(ctx, source))


def _listing_of(ctx: DomainContext, role: str, sources: list[SourceConfig]) -> Listing:
    store = ctx.store(role)
    manifests: list[Manifest] = []
    untrusted: list[UntrustedManifest] = []
    for src in sources:
        prefix = key_prefix(ctx.domain, src.data_class, src.name)
        for found in scan_manifests(ctx, store, prefix, allow_legacy=True):
            if isinstance(found, UntrustedManifest):
                log.warning("%s", found.error)
                untrusted.append(found)
            else:
                manifests.append(found)
    return Listing(store=role, untrusted=untrusted,
                   manifests=sorted(manifests, key=lambda m: (m.created_at, m.backup_id)))


def list_backups(ctx: DomainContext, source: str | None = None) -> list[Manifest]:
    """Readable manifests of a domain (or one source), oldest first; from S3, or GCS if S3 is
    down. Untrusted ones are logged and left out: see ``listing`` to name them."""
    return listing(ctx, source).manifests


def list_backups_in(ctx: DomainContext, role: str, source: str | None = None) -> list[Manifest]:
    """Readable manifests from one store only."""
    return listing_in(ctx, role, source).manifests


def find_copies(ctx: DomainContext, backup_id: str) -> dict[str, Manifest | UntrustedManifest]:
    """The manifest of one backup in each store that holds it, or why it cannot be trusted."""
    ref, src = resolve(ctx, backup_id)
    _, mkey = keys_of(ref, src)
    copies: dict[str, Manifest | UntrustedManifest] = {}
    names = ctx.placement(src).names
    for name in names:
        try:
            manifest = read_manifest(ctx, ctx.store(name), mkey, allow_legacy=True)
        except TransientStoreError:
            continue
        except IntegrityError as exc:
            copies[name] = UntrustedManifest(store=name, key=mkey, error=exc)
            continue
        if manifest is not None:
            copies[name] = manifest
    if not copies:
        raise NotFound(f"backup {backup_id} has no manifest in {ctx.url(names[0])} or "
                       f"{ctx.url(names[1])}")
    return copies


def find_backup(ctx: DomainContext, backup_id: str) -> dict[str, Manifest]:
    """The readable manifest of one backup in each store that holds one; when no copy can be
    trusted, the first copy's error (e.g. ``ManifestForged``)."""
    copies = find_copies(ctx, backup_id)
    readable = {name: m for name, m in copies.items() if isinstance(m, Manifest)}
    if not readable:
        first = next(iter(copies.values()))
        assert isinstance(first, UntrustedManifest)
        raise first.error
    return readable
