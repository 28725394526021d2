"""Restore a backup into one of the domain's configured restore targets, on its own worker.

The task names the target (a key of ``restore_targets`` in the domain's configuration), never
a DSN: task arguments are visible in Flower and stored in Redis.
"""

from __future__ import annotations

from typing import Any

from regionvault.errors import ConfigError
from regionvault.restore import restore as restore_backup
from tasks.runner import checked_context
from workers.app import app
from workers.guard import DomainTask


@app.task(name="regionvault.restore", base=DomainTask, bind=True, acks_late=True)
def restore(self: Any, *, backup_id: str, domain: str, source: str, target: str,
            from_store: str = "auto", clean: bool = False) -> dict[str, object]:
    ctx = checked_context(backup_id, domain, source)
    ref = ctx.dcfg.restore_targets.get(target)
    if ref is None:
        configured = ", ".join(ctx.dcfg.restore_targets) or "none"
        raise ConfigError(f"restore target {target!r} is not configured in domain {domain!r} "
                          f"(configured: {configured})")
    dsn = ref.read(f"restore target {target!r} of domain {domain!r}")
    result = restore_backup(ctx, backup_id, dsn, from_store=from_store, clean=clean)
    return {"backup_id": backup_id, "store": result.store, "bytes": result.bytes_read,
            "seconds": round(result.seconds, 3), "fallback_reason": result.fallback_reason}
