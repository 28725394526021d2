"""The catalogue is the stores: listing backups reads their manifests."""

from __future__ import annotations

from regionvault.chain import keys_of, manifests_under, read_manifest, resolve
from regionvault.context import DomainContext
from regionvault.errors import NotFound, TransientStoreError
from regionvault.manifest import Manifest, key_prefix


def list_backups(ctx: DomainContext, source: str | None = None) -> list[Manifest]:
    """Manifests of a domain (or one source), oldest first; from S3, or GCS if S3 is down."""
    try:
        return list_backups_in(ctx, "s3", source)
    except TransientStoreError:
        return list_backups_in(ctx, "gcs", source)


def list_backups_in(ctx: DomainContext, role: str, source: str | None = None) -> list[Manifest]:
    """Manifests from one store only (disaster recovery reads GCS and never touches S3)."""
    sources = [ctx.config.source(ctx.domain, source)] if source else list(ctx.dcfg.sources)
    store = ctx.store(role)
    found = [manifest for src in sources
             for manifest in manifests_under(store, key_prefix(ctx.domain, src.data_class,
                                                               src.name))]
    return sorted(found, key=lambda m: (m.created_at, m.backup_id))


def find_backup(ctx: DomainContext, backup_id: str) -> dict[str, Manifest]:
    """The manifest of one backup in each store that holds it."""
    ref, src = resolve(ctx, backup_id)
    _, mkey = keys_of(ref, src)
    copies: dict[str, Manifest] = {}
    for name in ("s3", "gcs"):
        try:
            manifest = read_manifest(ctx.store(name), mkey)
        except TransientStoreError:
            continue
        if manifest is not None:
            copies[name] = manifest
    if not copies:
        raise NotFound(f"backup {backup_id} has no manifest in {ctx.url('s3')} or "
                       f"{ctx.url('gcs')}")
    return copies
