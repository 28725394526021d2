"""Step 3: upload the encrypted backup and its manifest to the domain's S3 bucket."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from regionvault.manifest import Step
from tasks.runner import STEP_OPTIONS, run_step
from workers.app import app


@app.task(name="regionvault.upload", **STEP_OPTIONS)
def upload(self: Any, *, backup_id: str, domain: str, source: str, run: int = 0,
           deep: bool = False) -> dict[str, object]:
    return run_step(self, Step.UPLOAD, backup_id=backup_id, domain=domain, source=source,
                    run=run, deep=deep,
                    body=lambda ctx, owner, progress: chain.upload(
                        ctx, backup_id, progress, owner))
