"""Step 1: a consistent snapshot of the source, compressed and encrypted into the domain's spool
in one pass."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import Step
from tasks.runner import STEP_OPTIONS, run_step
from workers.app import app


@app.task(name="regionvault.dump", **STEP_OPTIONS)
def dump(self: Any, *, backup_id: str, domain: str, source: str, run: int = 0,
         deep: bool = False) -> dict[str, object]:
    return run_step(self, Step.DUMP, backup_id=backup_id, domain=domain, source=source,
                    run=run, deep=deep,
                    body=lambda ctx, owner, progress: chain.dump(
                        ctx, backup_id, progress, owner))
