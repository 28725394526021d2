"""Step 6: apply the retention policy of the source's data class in both clouds."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import Step
from tasks.runner import STEP_OPTIONS, run_step
from workers.app import app


@app.task(name="regionvault.expire", **STEP_OPTIONS)
def expire(self: Any, *, backup_id: str, domain: str, source: str, run: int = 0,
           deep: bool = False) -> dict[str, object]:
    return run_step(self, Step.EXPIRE, backup_id=backup_id, domain=domain, source=source,
                    run=run, deep=deep,
                    body=lambda ctx, owner, _: chain.expire(ctx, backup_id, owner))
