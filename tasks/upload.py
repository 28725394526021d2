"""Step 3: upload the encrypted backup and its manifest to the domain's S3 bucket."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from tasks.runner import STEP_OPTIONS, checked_context, finish, progress_reporter
from workers.app import app


@app.task(name="regionvault.upload", **STEP_OPTIONS)
def upload(self: Any, *, backup_id: str, domain: str, source: str) -> dict[str, object]:
    ctx = checked_context(backup_id, domain, source)
    outcome = chain.upload(ctx, backup_id, progress_reporter(self, "upload"))
    return finish(outcome, domain, source)
