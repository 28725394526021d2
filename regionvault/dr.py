"""Disaster recovery: restore every source of a domain from one cloud alone.

When the primary platform is gone, ``dr_restore(..., role="gcs")`` reads the catalogue and the
backups from the GCS replicas only (it never calls S3), and restores the newest verified
backup of each source into a database on a recovery server, several sources at a time. The
server's DSN says its kind (``postgresql://``, ``mysql://``); a run recovers the sources of
that kind, and a domain with both kinds is recovered with one run per kind.

Manifests are read MAC-checked, as by every restore: a source whose newest backup has a forged
manifest fails, naming it; a version-1 manifest is restored as unauthenticated legacy and said.
DR writes no manifest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from regionvault.context import DomainContext
from regionvault.errors import ConfigError, RegionvaultError
from regionvault.restore import restore, select_backup
from regionvault.sources import ScratchServer, kind_of_dsn, scratch_server_for

Say = Callable[[str], None]


@dataclass(frozen=True)
class DrOutcome:
    source: str
    database: str
    ok: bool
    backup_id: str | None = None
    age_seconds: float | None = None
    bytes_read: int = 0
    seconds: float = 0.0
    error: str | None = None


def _restore_source(ctx: DomainContext, role: str, source: str, server: ScratchServer,
                    server_dsn: str, database: str, clean: bool, say: Say) -> DrOutcome:
    t0 = time.monotonic()
    backup_id: str | None = None
    try:
        now = ctx.clock()
        manifest = select_backup(ctx, source, now, role=role)
        backup_id = manifest.backup_id
        if not server.database_exists(server_dsn, database):
            server.create_database(server_dsn, database)
        say(f"{source}: restoring {backup_id} from {role} into {database}")
        result = restore(ctx, backup_id, server.database_dsn(server_dsn, database),
                         from_store=role, clean=clean)
        if result.warning:
            say(f"{source}: warning: {result.warning}")
        say(f"{source}: done in {result.seconds:.1f}s")
        return DrOutcome(source=source, database=database, ok=True, backup_id=backup_id,
                         age_seconds=(now - manifest.created_at).total_seconds(),
                         bytes_read=result.bytes_read, seconds=time.monotonic() - t0)
    except RegionvaultError as exc:
        say(f"{source}: FAILED: {exc}")
        return DrOutcome(source=source, database=database, ok=False, backup_id=backup_id,
                         seconds=time.monotonic() - t0, error=str(exc))


def dr_restore(ctx: DomainContext, *, server_dsn: str, role: str = "gcs",
               sources: Sequence[str] | None = None, database_template: str = "{source}",
               clean: bool = False, parallel: int = 2,
               say: Say = lambda _: None) -> list[DrOutcome]:
    """Restore the newest verified backup of each source from ``role`` alone."""
    if role not in ctx.store_names:
        raise ConfigError(f"disaster recovery reads from one of the domain's stores "
                          f"({', '.join(ctx.store_names)}), not {role!r}")
    if "{source}" not in database_template:
        raise ConfigError("--database-template must contain {source}, so that every source "
                          "gets its own database")
    if parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    # the recovery server is of one kind (its DSN says which): it takes that kind's sources
    kind = kind_of_dsn(server_dsn)
    server = scratch_server_for(kind)
    names = list(sources) if sources else [s.name for s in ctx.dcfg.sources if s.kind == kind]
    for name in names:
        src = ctx.config.source(ctx.domain, name)  # unknown source: refused before any work
        if src.kind != kind:
            raise ConfigError(f"source {name!r} is a {src.kind} source and the target server "
                              f"is a {kind} server: recover it with a {src.kind} server")
    if not names:
        raise ConfigError(f"domain {ctx.domain.value!r} has no {kind} source to recover on a "
                          f"{kind} server")
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="dr") as pool:
        futures = [pool.submit(_restore_source, ctx, role, name, server, server_dsn,
                               database_template.format(source=name.replace("-", "_")),
                               clean, say)
                   for name in names]
        return [f.result() for f in futures]
