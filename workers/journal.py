"""Worker signals that keep the backup journal (``regionvault.journal``) up to date.

Every step task reports running, retrying, done or failed, with its task id. A journal that
cannot be written (Redis hiccup) is logged and never fails the step itself: the journal is
for people, the stores are the truth.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import redis
from celery.signals import task_failure, task_prerun, task_retry, task_success

from regionvault.journal import Journal, StepState
from regionvault.manifest import Step
from workers.guard import STEP_TASKS, serves

log = logging.getLogger("regionvault.journal")

@lru_cache(maxsize=1)
def journal() -> Journal:
    from workers.app import app

    return Journal.from_url(str(app.conf.result_backend))


def _step_of(task: Any, kwargs: dict[str, Any] | None) -> tuple[Step, str] | None:
    step = STEP_TASKS.get(getattr(task, "name", ""))
    kwargs = kwargs or {}
    backup_id = kwargs.get("backup_id")
    # a misrouted task is refused before it runs: it must not appear to run in the journal
    if step is None or not backup_id or not serves(kwargs.get("domain")):
        return None
    return step, str(backup_id)


def _record(backup_id: str, step: Step, state: StepState, **fields: Any) -> None:
    try:
        journal().step(backup_id, step, state, **fields)
    except (redis.RedisError, ValueError) as exc:
        log.warning("journal not updated for %s step %s: %s", backup_id, step.value, exc)


@task_prerun.connect
def _running(task_id: str, task: Any, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    found = _step_of(task, kwargs)
    if found:
        _record(found[1], found[0], StepState.RUNNING, task_id=task_id)


@task_success.connect
def _done(sender: Any, result: Any, **_: Any) -> None:
    found = _step_of(sender, sender.request.kwargs)
    if found:
        detail = str(result.get("detail", "")) if isinstance(result, dict) else ""
        _record(found[1], found[0], StepState.DONE, task_id=sender.request.id, detail=detail)


@task_retry.connect
def _retrying(sender: Any, request: Any, reason: Any, **_: Any) -> None:
    found = _step_of(sender, request.kwargs)
    if found:
        _record(found[1], found[0], StepState.RETRYING, task_id=request.id,
                detail=f"retrying: {reason}")


@task_failure.connect
def _failed(sender: Any, task_id: str, exception: BaseException,
            kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    found = _step_of(sender, kwargs)
    if found:
        _record(found[1], found[0], StepState.FAILED, task_id=task_id, detail=str(exception))
