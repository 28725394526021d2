"""The journal's view from the worker: where a step's death is recorded.

Step tasks write their own journal entries (running, retrying, done, failed) from
``tasks.runner``, after they have checked that they own the backup: a stale or duplicate
message must never make the journal say a step runs. What a step cannot report itself is its
own death (a pool process killed, a hard time limit): the worker's main process reports that
through ``task_failure``, handled here. A journal that cannot be written is logged and never
fails anything: the journal is for people, the stores and the spool are the truth.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
from billiard.exceptions import WorkerLostError
from celery.signals import task_failure

from regionvault.domains import Domain
from regionvault.journal import Journal, StepState
from regionvault.lease import RedisLeaseStore
from workers.names import STEP_TASKS
from workers.runtime import serves

log = logging.getLogger("regionvault.journal")


def journal(domain: str | Domain | None = None) -> Journal:
    """The journal of ``domain`` (default: this process's own), in the result backend its app
    is configured with now (a process that is configured again, as tests do, gets the journal
    of its new backend)."""
    from workers.app import app, app_for

    return _journal_at(str((app_for(domain) if domain else app).conf.result_backend))


@lru_cache(maxsize=4)
def _journal_at(url: str) -> Journal:
    return Journal.from_url(url)


def leases(domain: str | Domain | None = None) -> RedisLeaseStore:
    """The backup leases of ``domain`` (default: this process's own), in its result
    backend's Redis (where its journal lives)."""
    from workers.app import app, app_for

    return _leases_at(str((app_for(domain) if domain else app).conf.result_backend))


@lru_cache(maxsize=4)
def _leases_at(url: str) -> RedisLeaseStore:
    return RedisLeaseStore.from_url(url)


@task_failure.connect
def _failed(sender: Any, task_id: str, exception: BaseException,
            kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    step = STEP_TASKS.get(getattr(sender, "name", ""))
    kwargs = kwargs or {}
    backup_id = kwargs.get("backup_id")
    # a misrouted task is refused before it runs: it must not appear in the journal
    if step is None or not backup_id or not serves(kwargs.get("domain")):
        return
    if getattr(exception, "_rv_journaled", False):
        return  # the step recorded its own failure, with the step to run again
    try:
        record = journal().get(str(backup_id))
        mine = record.steps[step] if record is not None else None
        if mine is not None and mine.state is StepState.DONE and mine.task_id == task_id:
            # The step recorded itself done; what failed came after its body (storing the
            # result, the broker gone at the boundary). A finished step is not a failed one:
            # the reconciler sends the next step if the hand-over was lost.
            log.warning("step %s of backup %s is done; a failure after it is not recorded as "
                        "the step's: %s", step.value, backup_id, exception)
            return
        if isinstance(exception, WorkerLostError):
            # reject_on_worker_lost: the broker hands the message out again, and its lease
            # (whose owner is dead) is broken by the next copy or expires
            journal().step(str(backup_id), step, StepState.RETRYING, task_id=task_id,
                           detail=f"its worker process died ({exception}); sent again")
        else:
            journal().step(str(backup_id), step, StepState.FAILED, task_id=task_id,
                           detail=str(exception))
    except (redis.RedisError, ValueError) as exc:
        log.warning("journal not updated for %s step %s: %s", backup_id, step.value, exc)
