"""Step 4: stream the S3 copy to the domain's GCS bucket, with no local copy."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from tasks.runner import STEP_OPTIONS, checked_context, finish, progress_reporter
from workers.app import app


@app.task(name="regionvault.replicate", **STEP_OPTIONS)
def replicate(self: Any, *, backup_id: str, domain: str, source: str) -> dict[str, object]:
    ctx = checked_context(backup_id, domain, source)
    outcome = chain.replicate(ctx, backup_id, progress_reporter(self, "replicate"))
    return finish(outcome, domain, source)
