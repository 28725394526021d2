"""Step 2: seal the backup: authenticate the spool's object, then sign the manifest."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import Step
from tasks.runner import STEP_OPTIONS, run_step
from workers.app import app


@app.task(name="regionvault.encrypt", **STEP_OPTIONS)
def encrypt(self: Any, *, backup_id: str, domain: str, source: str, run: int = 0,
            deep: bool = False) -> dict[str, object]:
    return run_step(self, Step.ENCRYPT, backup_id=backup_id, domain=domain, source=source,
                    run=run, deep=deep,
                    body=lambda ctx, owner, progress: chain.encrypt(
                        ctx, backup_id, progress, owner))
