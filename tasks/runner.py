"""What every step task does around its core function: check, run, report progress, log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import Ignore

from regionvault.chain import StepOutcome
from regionvault.config import TaskRetryConfig
from regionvault.context import DomainContext
from regionvault.errors import ConfigError, ResidencyError, SourceError, TransientStoreError
from regionvault.manifest import BackupRef
from workers.guard import DomainTask
from workers.journal import journal
from workers.runtime import context_for, worker_config

log = logging.getLogger("regionvault.tasks")

def _retry_settings() -> TaskRetryConfig:
    # read once at import: every process of a pool shares the same configuration
    try:
        return worker_config().retries
    except ConfigError:
        return TaskRetryConfig()  # no configuration here (e.g. a tool importing the tasks)


_RETRIES = _retry_settings()

#: Options shared by every step task. Retries happen here, at the task level only: a step
#: retried by Celery resumes from what the spool and the stores already hold.
STEP_OPTIONS: dict[str, Any] = {
    "base": DomainTask,
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": (TransientStoreError, SourceError),
    "retry_backoff": _RETRIES.backoff_seconds,
    "retry_backoff_max": _RETRIES.backoff_max_seconds,
    "retry_jitter": True,
    "max_retries": _RETRIES.max_retries,
}

PROGRESS_INTERVAL_SECONDS = 1.0


def checked_context(backup_id: str, domain: str, source: str) -> DomainContext:
    """The domain context, after checking the three arguments agree with each other and
    that the backup was not cancelled (a cancelled chain's later steps end here, quietly)."""
    ref = BackupRef.parse(backup_id)
    if ref.domain.value != domain or ref.source != source:
        raise ResidencyError(
            f"backup {backup_id} is of domain {ref.domain.value!r} and source {ref.source!r}, "
            f"but the task names domain {domain!r} and source {source!r}; refused"
        )
    if journal().is_cancelled(backup_id):
        log.info("backup %s was cancelled: step not run", backup_id)
        raise Ignore()
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
