"""An operator's ``regionvault verify``, on the domain's own worker: both copies checked
against the manifest (read back with ``deep``), and the manifest marked verified only then.

Not the chain's verify step (``regionvault.verify``): this one is outside any run, so it
leaves the journal's step records alone and is not retried; a backup that another owner
works on is refused rather than waited for past the lease's life. Verifying reads both
clouds and checks the manifests' MACs with the domain's key, which only the domain's
workers hold.
"""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import Step
from tasks.runner import agreeing_context, owning
from workers.app import app
from workers.guard import DomainTask


@app.task(name="regionvault.verify_backup", base=DomainTask, bind=True, acks_late=True)
def verify_backup(self: Any, *, backup_id: str, domain: str, source: str,
                  deep: bool = False) -> dict[str, object]:
    ctx = agreeing_context(backup_id, domain, source)
    with owning(self, ctx, backup_id, Step.VERIFY) as owner:
        outcome = chain.verify(ctx, backup_id, deep=deep, owner=owner)
    return {"backup_id": backup_id, "domain": domain, "source": source, "deep": deep,
            "detail": outcome.detail}
