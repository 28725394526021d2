"""Step 5: check both copies against the manifest; only then is the backup ``verified``."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from tasks.runner import STEP_OPTIONS, checked_context, finish
from workers.app import app


@app.task(name="regionvault.verify", **STEP_OPTIONS)
def verify(self: Any, *, backup_id: str, domain: str, source: str,
           deep: bool = False) -> dict[str, object]:
    ctx = checked_context(backup_id, domain, source)
    return finish(chain.verify(ctx, backup_id, deep=deep), domain, source)
