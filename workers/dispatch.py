"""``regionvault.dispatch.Dispatcher`` on Celery: the CLI's way to the workers.

Importing this module imports the app (``workers.app``), which reads its configuration
(``REGIONVAULT_CONFIG``) as it is imported. So the console script (``regionvault_cli``)
imports it only when a command first needs the workers, after the command has exported and
checked its configuration (and the demo has started its stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from regionvault.config import shown_url
from regionvault.dispatch import RestoreRequest, Started, TaskResult, WorkersUnreachable
from regionvault.domains import Domain
from regionvault.errors import RegionvaultError
from regionvault.journal import ClaimMode, Journal
from regionvault.lease import LeaseStore
from regionvault.manifest import Step
from workers import canvas
from workers.app import app_for
from workers.journal import journal, leases
from workers.names import task_name


class CeleryDispatcher:
    """The workers of one domain, reached on that domain's broker (its own, or the shared
    one), as the core sees them."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self._app = app_for(domain)

    def journal(self) -> Journal:
        return journal(self.domain)

    def leases(self) -> LeaseStore:
        return leases(self.domain)

    def start_run(self, domain: str, source: str, backup_id: str, *, start_at: Step = Step.DUMP,
                  mode: ClaimMode = "new", deep_verify: bool = False,
                  note: str = "") -> Started:
        self._mine(domain)
        return canvas.start_run(domain, source, backup_id, start_at=start_at, mode=mode,
                                deep_verify=deep_verify, note=note)

    def progress(self, task_id: str) -> dict[str, Any] | None:
        result = AsyncResult(task_id, app=self._app)
        info = result.info if result.state == "PROGRESS" else None
        return info if isinstance(info, dict) else None

    def revoke(self, task_ids: Sequence[str]) -> None:
        # terminate: the step running now is stopped (its worker child gets SIGTERM)
        self._app.control.revoke(list(task_ids), terminate=True, signal="SIGTERM")

    def discard(self, backup_id: str, domain: str, source: str) -> str:
        return self._send("discard", backup_id=backup_id, domain=domain, source=source)

    def restore_drill(self, domain: str, source: str | None) -> str:
        return self._send("restore_drill", domain=domain, source=source)

    def verify(self, backup_id: str, domain: str, source: str, *, deep: bool) -> str:
        return self._send("verify_backup", backup_id=backup_id, domain=domain, source=source,
                          deep=deep)

    def check(self, domain: str, *, within: float) -> str:
        # dropped unrun by a worker that receives it later: nobody waits for it any more
        return self._send("check_domain", expires=within, domain=domain)

    def restore(self, request: RestoreRequest) -> str:
        return self._send(
            "restore", domain=request.domain, source=request.source,
            target=str(request.target), backup_id=request.backup_id,
            at=request.at.isoformat() if request.at is not None else None,
            from_store=request.from_store, clean=request.clean)

    def wait(self, task_id: str, *, timeout: float) -> TaskResult:
        result = AsyncResult(task_id, app=self._app)
        try:
            value = result.get(timeout=timeout, propagate=False)
            failed = result.failed()
        except CeleryTimeout:
            # Stop listening for it: Celery would keep the result and its subscription until
            # this process ends (and then fail, noisily, to unsubscribe on the way out).
            result.backend.remove_pending_result(result)
            raise TimeoutError(f"task {task_id} did not end within {timeout:.0f}s") from None
        except (redis.RedisError, OperationalError, RuntimeError) as exc:
            if not _unreachable_store(exc):
                raise
            raise self._unreachable("its result backend", self._app.conf.result_backend,
                                    exc) from None
        if failed:
            # Celery rebuilds the task's exception: one of ours keeps its class (and so the
            # exit code the command line gives it)
            raised = value if isinstance(value, RegionvaultError) else None
            return TaskResult(task_id, ok=False, error=str(value), raised=raised)
        return TaskResult(task_id, ok=True, value=value)

    def _mine(self, domain: str) -> None:
        if domain != self.domain.value:
            raise ValueError(f"a dispatcher of domain {self.domain.value!r} cannot send work of "
                             f"domain {domain!r}: its broker may not be that domain's")

    def _send(self, name: str, *, expires: float | None = None, **kwargs: Any) -> str:
        self._mine(str(kwargs["domain"]))
        try:
            # routed to the queue of kwargs["domain"] by the app's router (route_by_domain)
            return str(self._app.send_task(task_name(name), kwargs=kwargs, expires=expires).id)
        except (redis.RedisError, OperationalError, RuntimeError) as exc:
            if not _unreachable_store(exc):
                raise
            if isinstance(exc, RuntimeError):  # subscribing to the task's result failed
                raise self._unreachable("its result backend", self._app.conf.result_backend,
                                        exc) from None
            raise self._unreachable("its broker", self._app.conf.broker_url, exc) from None

    def _unreachable(self, what: str, url: str, exc: BaseException) -> WorkersUnreachable:
        cause = exc.__cause__ if isinstance(exc, RuntimeError) and exc.__cause__ else exc
        return WorkersUnreachable(
            f"the workers of domain {self.domain.value!r} cannot be reached: {what} "
            f"({shown_url(str(url))}) did not answer ({type(cause).__name__}: {cause})")


def _unreachable_store(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker or the result backend cannot be reached. Celery's
    Redis result consumer, which subscribes to a task's result as the task is sent, gives up
    reconnecting with a bare ``RuntimeError`` whose cause is the connection error."""
    if isinstance(exc, RuntimeError):
        return isinstance(exc.__cause__, (redis.RedisError, OperationalError, OSError))
    return True
