"""What every step task does around its core function: check, run, report progress, log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from regionvault.chain import StepOutcome
from regionvault.context import DomainContext
from regionvault.errors import ResidencyError, SourceError, TransientStoreError
from regionvault.manifest import BackupRef
from workers.guard import DomainTask
from workers.runtime import context_for

log = logging.getLogger("regionvault.tasks")

#: Options shared by every step task. Retries happen here, at the task level only: a step
#: retried by Celery resumes from what the spool and the stores already hold.
STEP_OPTIONS: dict[str, Any] = {
    "base": DomainTask,
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (TransientStoreError, SourceError),
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 5,
}

PROGRESS_INTERVAL_SECONDS = 1.0


def checked_context(backup_id: str, domain: str, source: str) -> DomainContext:
    """The domain context, after checking the three arguments agree with each other."""
    ref = BackupRef.parse(backup_id)
    if ref.domain.value != domain or ref.source != source:
        raise ResidencyError(
            f"backup {backup_id} is of domain {ref.domain.value!r} and source {ref.source!r}, "
            f"but the task names domain {domain!r} and source {source!r}; refused"
        )
    return context_for(domain)


def progress_reporter(task: Any, step: str) -> Callable[[int], None]:
    """Report bytes done to the result backend at most once a second (metadata only)."""
    last = 0.0
    started = time.monotonic()

    def report(done: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_SECONDS and task.request.id:
            last = now
            task.update_state(state="PROGRESS", meta={
                "step": step, "bytes": done, "elapsed": round(now - started, 1)})

    return report


def finish(outcome: StepOutcome, domain: str, source: str) -> dict[str, object]:
    log.info("step %s of backup %s (domain %s, source %s): %s%s", outcome.step.value,
             outcome.backup_id, domain, source, outcome.detail,
             " (already done)" if outcome.skipped else "")
    return {**outcome.as_dict(), "domain": domain, "source": source}
