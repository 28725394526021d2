"""After a cancel: remove what the unfinished backup left, on the domain's own worker (only
it sees the domain's spool)."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from workers.app import app
from workers.guard import DomainTask
from workers.runtime import context_for


@app.task(name="regionvault.discard", base=DomainTask, bind=True, acks_late=True)
def discard(self: Any, *, backup_id: str, domain: str, source: str) -> dict[str, object]:
    # resolve() inside discard parses the id and refuses one of another domain
    outcome = chain.discard(context_for(domain), backup_id)
    return {"backup_id": backup_id, "detail": outcome.detail}
