"""Step 2: compress (zstd) and encrypt the dump under a fresh data key; write the manifest."""

from __future__ import annotations

from typing import Any

from regionvault import chain
from tasks.runner import STEP_OPTIONS, checked_context, finish, progress_reporter
from workers.app import app


@app.task(name="regionvault.encrypt", **STEP_OPTIONS)
def encrypt(self: Any, *, backup_id: str, domain: str, source: str) -> dict[str, object]:
    ctx = checked_context(backup_id, domain, source)
    outcome = chain.encrypt(ctx, backup_id, progress_reporter(self, "encrypt"))
    return finish(outcome, domain, source)
