"""Retry a failed regionvault task from Flower: once, as it was, in its own domain's queue.

Flower's event state holds only reprs of a task's arguments, so the arguments are read from
the result backend (the app runs with ``result_extended``), which also says the task's name,
state and the queue it came from. ``plan_retry`` decides, without I/O, whether the task may be
re-sent; ``retry_task`` carries it out: it claims the failed task id (a second click, or a
second operator, gets "already retried" instead of a second run), sends the task with a new id
to ``backup.<domain>``, and records who did it and when in the backup journal and the log.

A step of a backup is re-sent as a new run of that backup, claimed in the journal exactly as
``regionvault retry`` claims one: a Flower Retry racing a CLI retry starts one run, and the
loser is told which chain owns the backup. It starts from the step the failure asked to run
again (``rerun``, e.g. ``dump`` after a lost spool), else from the failed step; each step then
hands over to the next.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import redis

from regionvault.domains import Domain, parse_domain, queue_name
from regionvault.errors import RegionvaultError
from regionvault.journal import BackupState, Journal
from regionvault.manifest import Step
from workers.canvas import start_run
from workers.names import TASK_PREFIX, step_of

log = logging.getLogger("regionvault.flower")

FAILURE = "FAILURE"
#: how long a "retried" mark is kept when the app does not say how long results live
DEFAULT_MARK_SECONDS = 7 * 24 * 3600


class RetryRefused(Exception):
    """The task was not re-sent; ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TaskMeta:
    """What the result backend holds about a task (with ``result_extended``)."""

    state: str
    name: str | None = None
    args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] | None = None
    queue: str | None = None

    @classmethod
    def from_backend(cls, meta: Mapping[str, Any]) -> TaskMeta:
        args = meta.get("args")
        kwargs = meta.get("kwargs")
        return cls(
            state=str(meta.get("status") or "PENDING"),
            name=meta.get("name") or None,
            args=tuple(args) if isinstance(args, list | tuple) else None,
            kwargs=dict(kwargs) if isinstance(kwargs, dict) else None,
            queue=meta.get("queue") or None,
        )


@dataclass(frozen=True)
class RetryPlan:
    """A failed task that may be re-sent: what to send, and where."""

    task_id: str
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    domain: Domain
    queue: str

    @property
    def step(self) -> Step | None:
        """The backup step this task runs, if it is one (not e.g. ``backup_domain``)."""
        return step_of(self.name)

    @property
    def backup_id(self) -> str | None:
        value = self.kwargs.get("backup_id")
        return value if isinstance(value, str) and value else None


def plan_retry(task_id: str, meta: TaskMeta, registered: Collection[str]) -> RetryPlan:
    """Decide whether a task may be re-sent; raise ``RetryRefused`` saying why not."""
    if meta.name is None:
        raise RetryRefused(409, (
            f"task {task_id} is not in the result backend (its result expired or was never "
            "stored), so its arguments are gone and it cannot be re-sent from here; resume "
            "the backup with `regionvault retry BACKUP_ID`"))
    if not meta.name.startswith(TASK_PREFIX):
        raise RetryRefused(400, (
            f"task {task_id} is {meta.name}, not a regionvault task; only regionvault tasks "
            "can be retried here"))
    if meta.state != FAILURE:
        raise RetryRefused(409, (
            f"task {task_id} ({meta.name}) is {meta.state}, not failed; only a failed task "
            "can be retried"))
    if not meta.kwargs:
        raise RetryRefused(409, (
            f"the arguments of task {task_id} ({meta.name}) are gone from the result backend, "
            "so it cannot be re-sent as it was"))
    raw_domain = meta.kwargs.get("domain")
    try:
        domain = parse_domain(raw_domain) if isinstance(raw_domain, str) else None
    except RegionvaultError:
        domain = None
    if domain is None:
        valid = ", ".join(d.value for d in Domain)
        raise RetryRefused(400, (
            f"task {task_id} ({meta.name}) names domain {raw_domain!r}, which is not one of "
            f"the regulatory domains ({valid}); refused"))
    queue = queue_name(domain)
    if meta.queue is not None and meta.queue != queue:
        raise RetryRefused(409, (
            f"task {task_id} ({meta.name}) of domain {domain.value!r} came from queue "
            f"{meta.queue!r}, not {queue}; a misrouted task is not re-sent"))
    step = step_of(meta.name)
    if step is not None and not all(isinstance(meta.kwargs.get(k), str) and meta.kwargs[k]
                                    for k in ("backup_id", "source")):
        raise RetryRefused(409, (
            f"task {task_id} ({meta.name}) lacks its backup_id or source argument, so the "
            "rest of its backup's chain cannot be re-sent; refused"))
    if meta.name not in registered:
        raise RetryRefused(400, (
            f"task {meta.name} is not registered in the Celery app Flower runs; refused"))
    return RetryPlan(task_id=task_id, name=meta.name, args=meta.args or (),
                     kwargs=dict(meta.kwargs), domain=domain, queue=queue)


@dataclass(frozen=True)
class RetryMark:
    """A failed task that was retried from Flower: by whom, when, as which new task."""

    task_id: str
    new_task_id: str
    by: str
    at: datetime
    queue: str

    def to_json(self) -> str:
        return json.dumps({"task_id": self.task_id, "new_task_id": self.new_task_id,
                           "by": self.by, "at": self.at.isoformat(), "queue": self.queue})

    @classmethod
    def from_json(cls, text: str) -> RetryMark:
        data = json.loads(text)
        return cls(task_id=data["task_id"], new_task_id=data["new_task_id"], by=data["by"],
                   at=datetime.fromisoformat(data["at"]), queue=data["queue"])


class RetryMarks:
    """The "retried" marks, in the result backend's Redis, kept as long as task results."""

    _KEY = "regionvault:flower:retried:{}"

    def __init__(self, client: redis.Redis, ttl_seconds: int = DEFAULT_MARK_SECONDS) -> None:
        # redis-py's annotations mix its sync and async clients; this one is sync
        self._redis: Any = client
        self._ttl = ttl_seconds

    @classmethod
    def for_app(cls, capp: Any) -> RetryMarks:
        expires = capp.conf.result_expires
        if isinstance(expires, timedelta):
            expires = expires.total_seconds()
        ttl = int(expires) if expires else DEFAULT_MARK_SECONDS
        client = redis.Redis.from_url(str(capp.conf.result_backend), decode_responses=True,
                                      socket_timeout=10)
        return cls(client, ttl)

    def claim(self, mark: RetryMark) -> bool:
        """Record ``mark`` unless the task was retried already; True if this call did."""
        return bool(self._redis.set(self._KEY.format(mark.task_id), mark.to_json(),
                                    nx=True, ex=self._ttl))

    def get(self, task_id: str) -> RetryMark | None:
        text = self._redis.get(self._KEY.format(task_id))
        return RetryMark.from_json(text) if text else None

    def release(self, task_id: str) -> None:
        self._redis.delete(self._KEY.format(task_id))


def _check_journal(journal: Journal, plan: RetryPlan) -> Step | None:
    """Refuse to re-send a step of a cancelled backup, or one that was re-sent since; the
    step to start from (the one the failure asked to run again, else the failed one)."""
    if plan.step is None or plan.backup_id is None:
        return None
    try:
        record = journal.get(plan.backup_id)
    except redis.RedisError:
        return plan.step  # no journal to ask: the claim below still keeps the retry to one
    if record is None:
        return plan.step
    if record.state is BackupState.CANCELLED:
        raise RetryRefused(409, (
            f"backup {plan.backup_id} was cancelled and its data discarded; start a new "
            "backup instead"))
    current = record.steps[plan.step].task_id
    if current and current != plan.task_id:
        raise RetryRefused(409, (
            f"step {plan.step.value} of backup {plan.backup_id} was sent again since, as task "
            f"{current}; retry that task if it fails"))
    return record.rerun or plan.step


def _send(capp: Any, plan: RetryPlan, start_at: Step | None, new_task_id: str,
          note: str) -> None:
    """Send the task; a backup step as a new run of its backup, claimed like any retry."""
    if start_at is None or plan.backup_id is None:
        capp.tasks[plan.name].apply_async(args=plan.args, kwargs=plan.kwargs, queue=plan.queue,
                                          task_id=new_task_id)
        return
    started = start_run(plan.domain.value, str(plan.kwargs["source"]), plan.backup_id,
                        start_at=start_at, mode="retry", task_id=new_task_id,
                        deep_verify=bool(plan.kwargs.get("deep", False)), note=note)
    if not started.accepted:
        claim = started.claim
        raise RetryRefused(409, (
            f"backup {plan.backup_id} is {claim.state or 'busy'}: chain {claim.chain_id} (run "
            f"{claim.run}) owns it; nothing was re-sent"))


def _already_retried(plan: RetryPlan, earlier: RetryMark | None) -> RetryRefused:
    detail = (f" by {earlier.by} at {earlier.at:%Y-%m-%d %H:%M:%S %Z} as task "
              f"{earlier.new_task_id}" if earlier else "")
    return RetryRefused(409, f"task {plan.task_id} ({plan.name}) was already retried{detail}")


def retry_task(capp: Any, task_id: str, by: str, *, marks: RetryMarks, journal: Journal,
               now: datetime | None = None) -> RetryMark:
    """Re-send failed task ``task_id``; blocking (run it off the IO loop)."""
    try:
        meta = TaskMeta.from_backend(capp.backend.get_task_meta(task_id))
    except Exception as exc:  # the backend's own connection errors (redis, kombu)
        raise RetryRefused(503, (
            f"the result backend could not be read for task {task_id} ({exc}); nothing was "
            "re-sent, try again")) from exc
    plan = plan_retry(task_id, meta, capp.tasks.keys())
    if (earlier := marks.get(task_id)) is not None:
        raise _already_retried(plan, earlier)
    start_at = _check_journal(journal, plan)
    mark = RetryMark(task_id=task_id, new_task_id=str(uuid4()), by=by,
                     at=now or datetime.now(UTC), queue=plan.queue)
    if not marks.claim(mark):  # someone else, in the meantime
        raise _already_retried(plan, marks.get(task_id))
    note = (f"{plan.step.value if plan.step else plan.name} retried in Flower by {mark.by}: "
            f"failed task {plan.task_id} re-sent as task {mark.new_task_id} to {plan.queue}")
    try:
        _send(capp, plan, start_at, mark.new_task_id, note)
    except RetryRefused:
        marks.release(task_id)
        raise
    except Exception as exc:  # the journal's or the broker's own errors (redis, kombu)
        marks.release(task_id)
        raise RetryRefused(503, (
            f"task {task_id} ({plan.name}) was not re-sent: the broker did not take it "
            f"({exc}); try again")) from exc
    log.info("task %s (%s%s) retried in Flower by %s at %s: re-sent as task %s to %s%s",
             task_id, plan.name, f", backup {plan.backup_id}" if plan.backup_id else "",
             mark.by, mark.at.isoformat(), mark.new_task_id, plan.queue,
             f" from step {start_at.value}" if start_at else "")
    return mark
