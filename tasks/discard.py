"""After a cancel: remove what the unfinished backup left, on the domain's own worker (only
it sees the domain's spool)."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import BackupRef
from workers.app import app
from workers.guard import DomainTask
from workers.runtime import context_for


@app.task(name="regionvault.discard", base=DomainTask, bind=True, acks_late=True)
def discard(self: Any, *, backup_id: str, domain: str, source: str) -> dict[str, object]:
    BackupRef.parse(backup_id)
    outcome = chain.discard(context_for(domain), backup_id)  # refuses another domain's id
    return {"backup_id": backup_id, "detail": outcome.detail}
