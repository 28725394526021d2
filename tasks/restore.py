"""Restore a backup on the domain's own worker: into one of its configured restore targets,
or into a database that a reference names (``env:NAME``, an environment variable of the
worker; ``file:/path``, a file it reads).

The task's arguments name the target or the reference, never a DSN: they are visible in
Flower and stored in Redis. A target argument that is neither is refused without being
repeated. Without a backup id, the newest verified backup of the source at or before ``at``
is chosen here (reading the manifests needs the domain's key). Progress is reported as a
step's is (``PROGRESS``: stage, store, bytes), for ``regionvault restore`` to show.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from regionvault.dispatch import RestoreTarget
from regionvault.errors import ConfigError
from regionvault.restore import restore as restore_backup
from regionvault.restore import select_backup
from tasks.runner import agreeing_context, progress_reporter
from workers.app import app
from workers.guard import DomainTask
from workers.runtime import context_for


@app.task(name="regionvault.restore", base=DomainTask, bind=True, acks_late=True)
def restore(self: Any, *, domain: str, source: str, target: str, backup_id: str | None = None,
            at: str | None = None, from_store: str = "auto",
            clean: bool = False) -> dict[str, object]:
    into = RestoreTarget.parse(target)  # a DSN in the arguments stops here, unrepeated
    selected = not backup_id
    if backup_id:
        ctx = agreeing_context(backup_id, domain, source)
    else:
        ctx = context_for(domain)
        ctx.config.source(domain, source)  # unknown source: one sentence
        when = _parse_at(at) if at else ctx.clock()
        role = None if from_store == "auto" else from_store
        backup_id = select_backup(ctx, source, when, role=role).backup_id
    dsn = into.read(ctx.dcfg, domain)
    result = restore_backup(ctx, backup_id, dsn, from_store=from_store, clean=clean,
                            progress=progress_reporter(self))
    return {"backup_id": backup_id, "selected": selected, "store": result.store,
            "bytes": result.bytes_read, "plaintext_bytes": result.plaintext_bytes,
            "seconds": round(result.seconds, 3), "fallback_reason": result.fallback_reason,
            "warning": result.warning}


def _parse_at(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"'at' {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # as the CLI reads it
