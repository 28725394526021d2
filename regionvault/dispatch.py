"""The one seam between the core's command line and whatever runs the steps (Celery).

The core runs backups only through the workers: it claims a backup in the journal and sends
its first step to the domain's queue, stops tasks, and asks the workers to clean up or to run
a restore drill. It reads back what they report through the journal, the leases and a running
task's progress. ``Dispatcher`` is all of that, and nothing else; the core never names a task
or a queue technology. The Celery implementation is ``workers.dispatch.CeleryDispatcher``, and
the ``regionvault`` console script (``regionvault_cli``) hands it to the CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from regionvault.domains import Domain
from regionvault.journal import Claim, ClaimMode, Journal
from regionvault.lease import LeaseStore
from regionvault.manifest import Step


@dataclass(frozen=True)
class Started:
    """What ``Dispatcher.start_run`` did: the claim, and the first step's task id if the claim
    was accepted (nothing is sent when it was refused)."""

    claim: Claim
    task_id: str = ""

    @property
    def accepted(self) -> bool:
        return self.claim.accepted


@dataclass(frozen=True)
class TaskResult:
    """How a task that was waited for ended: ``value`` is what it returned (plain JSON data)
    when ``ok``, ``error`` one line saying why it failed when not."""

    task_id: str
    ok: bool
    value: Any = None
    error: str = ""


class Dispatcher(Protocol):
    """How the core reaches the workers of one domain, on that domain's broker (its own, or
    the shared one). Contract (every implementation MUST):

    - ``journal()``: the backup journal the workers write (the same store they use, so what a
      step recorded a moment ago is there).
    - ``leases()``: the backups' leases, in the store where the workers take them.
    - ``start_run(domain, source, backup_id, *, start_at, mode, deep_verify, note)``: claim the
      backup in the journal for a new chain run from ``start_at`` (``Journal.claim`` with
      ``mode``, atomic: two callers at once start at most one run), and only if the claim is
      accepted send that step's message to the queue of ``domain``, record it as handed off
      and add ``note`` to the journal. A refused claim sends nothing and is not an error: the
      returned ``Started`` says who owns the backup. Each step then hands over to the next by
      itself; the domain's reconciler resends a step whose message was lost.
    - ``progress(task_id)``: the progress a running step reports (``{"bytes": n, "elapsed":
      s}``), or None when the task is not running or reports none. Never blocks for long.
    - ``revoke(task_ids)``: make sure none of these tasks starts, and stop the one that runs
      now (its process is terminated). Idempotent; unknown or finished ids are ignored.
    - ``discard(backup_id, domain, source)``: send the clean-up of an unfinished backup (spool
      files, open uploads, partial objects) to the queue of ``domain``; its task id.
    - ``restore_drill(domain, source)``: send a restore drill of ``domain`` (one source, or all
      of them when None) to the queue of ``domain``; its task id.
    - ``wait(task_id, *, timeout)``: block until the task ends and say how (``TaskResult``);
      raise ``TimeoutError`` if it has not ended within ``timeout`` seconds (it goes on
      running).

    A dispatcher serves the domain it was made for: work naming another domain is refused
    (``ValueError``), since its broker may not be that domain's. Every message goes to the
    queue of the domain it names, and only there. Task arguments
    are ids and names, never secrets. A broker or a journal that cannot be reached raises its
    own connection error (``redis.RedisError``, the transport's ``OperationalError``); what
    was claimed stays claimed, and the reconciler resends a lost message.
    """

    def journal(self) -> Journal: ...

    def leases(self) -> LeaseStore: ...

    def start_run(self, domain: str, source: str, backup_id: str, *, start_at: Step = Step.DUMP,
                  mode: ClaimMode = "new", deep_verify: bool = False,
                  note: str = "") -> Started: ...

    def progress(self, task_id: str) -> dict[str, Any] | None: ...

    def revoke(self, task_ids: Sequence[str]) -> None: ...

    def discard(self, backup_id: str, domain: str, source: str) -> str: ...

    def restore_drill(self, domain: str, source: str | None) -> str: ...

    def wait(self, task_id: str, *, timeout: float) -> TaskResult: ...


#: how the CLI gets the ``Dispatcher`` of a domain: called once per domain, when a command
#: first needs that domain's workers (after the command has read and checked its
#: configuration, which the implementation reads when it connects)
Connect = Callable[[Domain], Dispatcher]
