"""``regionvault.dispatch.Dispatcher`` on Celery: the CLI's way to the workers.

Importing this module imports the app (``workers.app``), which reads its configuration
(``REGIONVAULT_CONFIG``) as it is imported. So the console script (``regionvault_cli``)
imports it only when a command first needs the workers, after the command has exported and
checked its configuration (and the demo has started its stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult

from regionvault.dispatch import Started, TaskResult
from regionvault.domains import Domain
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

    def wait(self, task_id: str, *, timeout: float) -> TaskResult:
        result = AsyncResult(task_id, app=self._app)
        try:
            value = result.get(timeout=timeout, propagate=False)
        except CeleryTimeout:
            raise TimeoutError(f"task {task_id} did not end within {timeout:.0f}s") from None
        if result.failed():
            return TaskResult(task_id, ok=False, error=str(value))
        return TaskResult(task_id, ok=True, value=value)

    def _mine(self, domain: str) -> None:
        if domain != self.domain.value:
            raise ValueError(f"a dispatcher of domain {self.domain.value!r} cannot send work of "
                             f"domain {domain!r}: its broker may not be that domain's")

    def _send(self, name: str, **kwargs: Any) -> str:
        self._mine(str(kwargs["domain"]))
        # routed to the queue of kwargs["domain"] by the app's router (route_by_domain)
        return str(self._app.send_task(task_name(name), kwargs=kwargs).id)
