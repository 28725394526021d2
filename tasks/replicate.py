"""Step 4: copy the object to the domain's GCS bucket, from the spool (else streamed from S3)."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import Step
from tasks.runner import STEP_OPTIONS, run_step
from workers.app import app


@app.task(name="regionvault.replicate", **STEP_OPTIONS)
def replicate(self: Any, *, backup_id: str, domain: str, source: str, run: int = 0,
              deep: bool = False) -> dict[str, object]:
    return run_step(self, Step.REPLICATE, backup_id=backup_id, domain=domain, source=source,
                    run=run, deep=deep,
                    body=lambda ctx, owner, progress: chain.replicate(
                        ctx, backup_id, progress, owner))
