"""The scheduled entry point: start one backup chain per source of a domain."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from tasks.canvas import enqueue_backup
from workers.app import app
from workers.guard import DomainTask
from workers.runtime import context_for


# Acknowledged early, unlike the steps: re-delivering a fan-out after a crash would start a
# second chain per source. A lost fan-out is one missed run, which freshness alerts catch.
@app.task(name="regionvault.backup_domain", base=DomainTask, bind=True, acks_late=False)
def backup_domain(self: Any, *, domain: str) -> list[dict[str, str]]:
    ctx = context_for(domain)
    started = []
    for source in ctx.dcfg.sources:
        backup_id = chain.new_backup(ctx, source.name)
        result = enqueue_backup(domain, source.name, backup_id, note="scheduled")
        started.append({"backup_id": backup_id, "source": source.name, "task_id": result.id})
    return started
