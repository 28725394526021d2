"""The catalogue is the stores: listing backups reads their manifests."""

from __future__ import annotations

from regionvault.chain import keys_of, read_manifest, resolve
from regionvault.config import SourceConfig
from regionvault.context import DomainContext
from regionvault.errors import NotFound, TransientStoreError
from regionvault.manifest import MANIFEST_SUFFIX, Manifest, key_prefix


def list_backups(ctx: DomainContext, source: str | None = None) -> list[Manifest]:
    """Manifests of a domain (or one source), oldest first; from S3, or GCS if S3 is down."""
    sources = [ctx.config.source(ctx.domain, source)] if source else list(ctx.dcfg.sources)
    try:
        return _list_from(ctx, "s3", sources)
    except TransientStoreError:
        return _list_from(ctx, "gcs", sources)


def list_backups_in(ctx: DomainContext, role: str, source: str | None = None) -> list[Manifest]:
    """Manifests from one store only (disaster recovery reads GCS and never touches S3)."""
    sources = [ctx.config.source(ctx.domain, source)] if source else list(ctx.dcfg.sources)
    return _list_from(ctx, role, sources)


def _list_from(ctx: DomainContext, store_name: str,
               sources: list[SourceConfig]) -> list[Manifest]:
    store = ctx.store(store_name)
    found: list[Manifest] = []
    for src in sources:
        for key in store.list_keys(key_prefix(ctx.domain, src.data_class, src.name)):
            if key.endswith(MANIFEST_SUFFIX):
                manifest = read_manifest(store, key)
                if manifest is not None:
                    found.append(manifest)
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
        raise NotFound(f"backup {backup_id} has no manifest in s3://{ctx.dcfg.s3_bucket} or "
                       f"gs://{ctx.dcfg.gcs_bucket}")
    return copies
