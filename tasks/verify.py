"""Step 5: check both copies against the manifest; only then is the backup ``verified``."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import Step
from tasks.runner import STEP_OPTIONS, run_step
from workers.app import app


@app.task(name="regionvault.verify", **STEP_OPTIONS)
def verify(self: Any, *, backup_id: str, domain: str, source: str, run: int = 0,
           deep: bool = False) -> dict[str, object]:
    return run_step(self, Step.VERIFY, backup_id=backup_id, domain=domain, source=source,
                    run=run, deep=deep,
                    body=lambda ctx, owner, _: chain.verify(ctx, backup_id, deep=deep, owner=owner))
