"""The one seam between the core's command line and whatever runs the steps (Celery).

The core runs backups only through the workers: it claims a backup in the journal and sends
its first step to the domain's queue, stops tasks, and asks the workers to clean up, to run a
restore drill, to verify a backup, to restore one and to check their domain's set-up (work
that needs the domain's keys or DSNs runs where they are, on the domain's own workers, so no
operator's process holds two domains' secrets). It reads back what they report through the
journal, the leases and a running task's progress. ``Dispatcher`` is all of that, and nothing
else; the core never names a task or a queue technology. The Celery implementation is
``workers.dispatch.CeleryDispatcher``, and the ``regionvault`` console script
(``regionvault_cli``) hands it to the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from regionvault.config import DomainConfig, SecretRef
from regionvault.domains import Domain
from regionvault.errors import ConfigError, RegionvaultError
from regionvault.journal import Claim, ClaimMode, Journal
from regionvault.lease import LeaseStore
from regionvault.manifest import Step


class WorkersUnreachable(RegionvaultError):
    """A domain's broker (or its result backend) could not be reached to send work to its
    workers or to read how the work ended."""

    exit_code = 4


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
    #: the project's own error the task failed with, when it was one
    raised: RegionvaultError | None = None

    def unwrap(self) -> Any:
        """``value`` when the task succeeded; else raise what it failed with: its own error
        (the same sentence and exit code as when the work runs in this process), or a
        ``RegionvaultError`` with the failure's line."""
        if self.ok:
            return self.value
        if self.raised is not None:
            raise self.raised
        raise RegionvaultError(self.error or f"task {self.task_id} failed")


#: a restore target's name, as ``restore_targets`` in a domain's configuration names one
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: the name of an environment variable
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class NotAReference(ConfigError):
    """A restore target that is neither a configured target's name nor a reference to a
    secret (``env:NAME``, ``file:/path``): a DSN, most likely, which never goes to a worker."""


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore on the workers writes, as it may travel in a task's arguments: the
    name of one of the domain's ``restore_targets``, or a reference to a secret that the
    domain's workers resolve (``env:NAME``, an environment variable of the worker;
    ``file:/path``, a file the worker reads). Never a DSN: ``parse`` refuses anything else,
    without repeating it (it may hold a password)."""

    name: str | None = None
    ref: SecretRef | None = None

    def __post_init__(self) -> None:
        # made directly rather than parsed: the same rule, a name is never a DSN
        if (self.name is None) == (self.ref is None) or (
                self.name is not None and not _TARGET_NAME.fullmatch(self.name)):
            raise NotAReference("a restore target is a configured target's name or a "
                                "reference to a secret (env:VAR or file:/path), exactly one")

    @classmethod
    def parse(cls, text: str) -> RestoreTarget:
        kind, _, rest = text.partition(":")
        if kind == "env" and _ENV_NAME.fullmatch(rest):
            return cls(ref=SecretRef(env=rest))
        # a path, not a DSN behind "file:" (whose user:password@host would be repeated in
        # the worker's error when the "file" cannot be read)
        if (kind == "file" and rest.startswith("/") and "://" not in rest and "@" not in rest
                and not any(c.isspace() or not c.isprintable() for c in rest)):
            return cls(ref=SecretRef(file=Path(rest)))
        if _TARGET_NAME.fullmatch(text):
            return cls(name=text)
        raise NotAReference(
            "the restore target is neither the name of a restore target of the domain nor a "
            "reference to a secret (env:VAR or file:/path); a DSN is never sent to the "
            "workers (its value is not shown)")

    def __str__(self) -> str:
        if self.ref is None:
            return str(self.name)
        return f"env:{self.ref.env}" if self.ref.env is not None else f"file:{self.ref.file}"

    def check_configured(self, dcfg: DomainConfig, domain: str) -> None:
        """Refuse a name that ``restore_targets`` of ``domain`` does not configure."""
        if self.name is not None and self.name not in dcfg.restore_targets:
            configured = ", ".join(sorted(dcfg.restore_targets)) or "none"
            raise ConfigError(
                f"restore target {self.name!r} is not configured in domain {domain!r} "
                f"(configured: {configured}); or give a reference the domain's workers "
                "resolve: env:VAR or file:/path")

    def read(self, dcfg: DomainConfig, domain: str) -> str:
        """The target's DSN: read where the domain's secrets are (its worker, or an
        operator's machine inside the domain with ``--local``), and never shown."""
        self.check_configured(dcfg, domain)
        ref = dcfg.restore_targets[str(self.name)] if self.ref is None else self.ref
        return ref.read(f"restore target {str(self)!r} of domain {domain!r}")


@dataclass(frozen=True)
class RestoreRequest:
    """A restore for the domain's workers: a backup by id, or the newest verified backup of
    ``source`` at or before ``at`` (None: now), chosen on the worker (choosing reads the
    manifests, whose MACs need the domain's key)."""

    domain: str
    source: str
    target: RestoreTarget
    backup_id: str | None = None
    at: datetime | None = None
    #: a store of the domain (s3, gcs, swift) or auto: the source's primary, then its replica
    from_store: str = "auto"
    #: replace the contents of a target that holds tables
    clean: bool = False


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
    - ``verify(backup_id, domain, source, *, deep)``: send the verification of a backup of
      ``domain`` (both copies against the manifest, both read back when ``deep``; marked
      verified only then) to the queue of ``domain``; its task id. The worker takes the
      backup's lease for it (a backup another owner works on is refused, ``BackupBusy``).
      Its value: ``{"backup_id", "domain", "source", "deep", "detail"}``.
    - ``check(domain, *, within)``: send the preflight of ``domain`` (keys held and readable,
      source DSNs readable, stores in the domain's regions, lifecycle rules and object lock
      as the policy requires) to the queue of ``domain``; its task id. Unless a worker starts
      it within ``within`` seconds it is dropped unrun. Its value: what ``check`` prints for
      the domain (lines for stdout and stderr, and the exit code), no secret in it.
    - ``restore(request)``: send the restore a ``RestoreRequest`` describes to the queue of
      its domain; its task id. The target travels as the ``RestoreTarget`` it is (a name or a
      reference, which the worker resolves), never as a DSN. While it runs, ``progress``
      reports its stage (``step``), ``store``, ``bytes`` and ``total``, and ``backup_id`` (the
      backup chosen). Its value: ``{"backup_id", "selected", "store", "bytes",
      "plaintext_bytes", "seconds", "fallback_reason", "warning"}`` (``selected``: the worker
      chose the backup).
    - ``wait(task_id, *, timeout)``: block until the task ends and say how (``TaskResult``,
      with the project's error it raised, if any); raise ``TimeoutError`` if it has not ended
      within ``timeout`` seconds (it goes on running).

    A dispatcher serves the domain it was made for: work naming another domain is refused
    (``ValueError``), since its broker may not be that domain's. Every message goes to the
    queue of the domain it names, and only there. Task arguments are ids, names and
    references, never secrets. Sending work (``discard``, ``restore_drill``, ``verify``,
    ``check``, ``restore``) or waiting for it (``wait``) on a broker or result backend that
    cannot be reached raises ``WorkersUnreachable``; ``journal``, ``leases``, ``start_run``,
    ``progress`` and ``revoke`` raise the store's own connection error (``redis.RedisError``,
    the transport's ``OperationalError``). What was claimed stays claimed, and the
    reconciler resends a lost message.
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

    def verify(self, backup_id: str, domain: str, source: str, *, deep: bool) -> str: ...

    def check(self, domain: str, *, within: float) -> str: ...

    def restore(self, request: RestoreRequest) -> str: ...

    def wait(self, task_id: str, *, timeout: float) -> TaskResult: ...


#: how the CLI gets the ``Dispatcher`` of a domain: called once per domain, when a command
#: first needs that domain's workers (after the command has read and checked its
#: configuration, which the implementation reads when it connects)
Connect = Callable[[Domain], Dispatcher]
