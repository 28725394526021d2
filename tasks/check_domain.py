"""``regionvault check`` of one domain, on that domain's own worker: its keys, its sources'
DSNs, its stores' regions and lifecycle rules are checked where its secrets are, so the
operator's process never reads them (and no process reads two domains').

The result is what the command prints for the domain (``regionvault.cli.backups``'s
``DomainCheck``): lines, the same as fields (``check --json``) and an exit code, no secret in
them.
"""

from __future__ import annotations

from typing import Any

from regionvault.cli.backups import check_captured
from workers.app import app
from workers.guard import DomainTask
from workers.runtime import context_for


# Acknowledged early and never retried: a check is cheap, and one that nobody waits for any
# more is worth nothing (it is sent with an expiry for the same reason).
@app.task(name="regionvault.check_domain", base=DomainTask, bind=True, acks_late=False)
def check_domain(self: Any, *, domain: str) -> dict[str, object]:
    return check_captured(context_for(domain)).as_dict()
