"""Step 6: apply the retention policy of the source's data class in both clouds."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from tasks.runner import STEP_OPTIONS, checked_context, finish
from workers.app import app


@app.task(name="regionvault.expire", **STEP_OPTIONS)
def expire(self: Any, *, backup_id: str, domain: str, source: str) -> dict[str, object]:
    ctx = checked_context(backup_id, domain, source)
    return finish(chain.expire(ctx, backup_id), domain, source)
