"""Step 1: a consistent snapshot of the source, encrypted into the domain's spool."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from tasks.runner import STEP_OPTIONS, checked_context, finish, progress_reporter
from workers.app import app


@app.task(name="regionvault.dump", **STEP_OPTIONS)
def dump(self: Any, *, backup_id: str, domain: str, source: str) -> dict[str, object]:
    ctx = checked_context(backup_id, domain, source)
    outcome = chain.dump(ctx, backup_id, progress_reporter(self, "dump"))
    return finish(outcome, domain, source)
