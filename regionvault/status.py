"""Freshness of a source's backups, as pure functions: fresh, late, stuck or failing.

A source is judged by its last verified backup, its newest failed attempt and its attempts
in flight (queued or running), the newest of which is shown. An attempt in flight is *stuck*
when it has made no progress for longer than the reconciler needs to notice a dead owner and
resume it (``stuck_after``) while nobody holds its lease, or has made no progress for longer
than the RPO whoever holds its lease (an owner that lives but does not move). Nothing here
does I/O: the caller reads the journal and the lease store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from regionvault.config import ReconcileConfig
from regionvault.journal import BackupRecord, BackupState, StepState
from regionvault.manifest import STEPS, Step


class Freshness(StrEnum):
    FRESH = "fresh"
    LATE = "late"
    STUCK = "stuck"
    FAILING = "failing"
    #: the domain's broker (its journal) could not be reached: nothing is known of its
    #: attempts, so nobody may read the source as fine
    UNREACHABLE = "unreachable"


#: process exit codes of `regionvault status`: the worst state found decides
EXIT_CODES = {Freshness.FRESH: 0, Freshness.LATE: 3, Freshness.STUCK: 4, Freshness.FAILING: 4,
              Freshness.UNREACHABLE: 4}

#: worst last. Stuck and failing both need someone (exit 4) and both are worse than late,
#: which only says time has passed. Failing ranks above stuck: a failure is a known outcome
#: with its cause in hand that nothing retries by itself, while a stuck attempt may still be
#: resumed by the reconciler or finish. Unreachable ranks above stuck (it may hide a stuck
#: attempt or a failure) and below failing (a known failure says more than no answer).
SEVERITY = (Freshness.FRESH, Freshness.LATE, Freshness.STUCK, Freshness.UNREACHABLE,
            Freshness.FAILING)


@dataclass(frozen=True)
class AttemptStatus:
    """An attempt of a source in flight, as `regionvault status` shows it."""

    backup_id: str
    state: BackupState
    #: the step it is at (running or retrying, else the next to start); None if all are done
    step: Step | None
    step_state: StepState | None
    #: the last sign of progress: the journal's last write, or a retry's planned time if later
    last_progress_at: datetime
    #: how long it has made no progress (zero while it waits to retry)
    idle: timedelta
    #: the last progress, if the attempt is stuck; None if it is not
    stuck_since: datetime | None
    #: who holds its lease (an owner id); None if nobody does or if that is unknown
    lease_holder: str | None
    #: False when the lease store could not be asked
    lease_known: bool
    #: how many times the reconciler resumed it already
    resumes: int = 0

    @property
    def in_flight(self) -> bool:
        return self.state in (BackupState.QUEUED, BackupState.RUNNING)

    @property
    def stuck(self) -> bool:
        return self.stuck_since is not None


@dataclass(frozen=True)
class SourceStatus:
    domain: str
    source: str
    rpo: timedelta
    state: Freshness
    last_verified_id: str | None = None
    last_verified_at: datetime | None = None
    age: timedelta | None = None
    last_failure_id: str | None = None
    last_failure_step: str | None = None
    last_failure_error: str | None = None
    last_failure_at: datetime | None = None
    newest_attempt: AttemptStatus | None = None


def stuck_after(cfg: ReconcileConfig) -> timedelta:
    """How long an in-flight attempt whose lease nobody holds may stay without progress: the
    reconciler resumes it after the lease expired (or the hand-over grace passed), on one of
    its next two ticks; an attempt still idle after that is not being taken care of."""
    return timedelta(seconds=max(cfg.handoff_grace_seconds, cfg.lease_seconds)
                     + 2 * cfg.interval_seconds)


def in_flight(records: Iterable[BackupRecord], now: datetime) -> list[BackupRecord]:
    """The attempts queued or running as of ``now`` (later writes are not seen), newest
    first: the ones that can be stuck. Not only the newest: an older backup retried and
    verified a moment ago is touched last, and must not hide a newer one whose owner died
    before it."""
    return sorted((r for r in records if r.in_flight and r.updated_at <= now),
                  key=lambda r: r.updated_at, reverse=True)


def attempt_to_show(attempts: Iterable[AttemptStatus]) -> AttemptStatus | None:
    """The newest stuck attempt, else the newest in flight, else None."""
    ranked = sorted(attempts, key=lambda a: (a.stuck, a.last_progress_at), reverse=True)
    return ranked[0] if ranked else None


def last_progress(record: BackupRecord) -> datetime:
    """A step waiting out a transient error is not idle before its retry is due."""
    if record.retry_at is not None and record.retry_at > record.updated_at:
        return record.retry_at
    return record.updated_at


def current_step(record: BackupRecord) -> Step | None:
    """The step running or retrying, else the first one not done."""
    for step in STEPS:
        if record.steps[step].state in (StepState.RUNNING, StepState.RETRYING):
            return step
    return record.first_unfinished()


def stuck_since(record: BackupRecord, now: datetime, *, rpo: timedelta, threshold: timedelta,
                lease_held: bool | None) -> datetime | None:
    """When the attempt last progressed, if it is stuck now; None if it is not stuck.

    ``lease_held`` is None when the lease store could not be asked: the attempt is then
    judged as if nobody held the lease, so an unknown never hides a stuck attempt."""
    if not record.in_flight:
        return None
    since = last_progress(record)
    idle = now - since
    if idle > threshold and not lease_held:
        return since
    if idle > rpo:
        return since
    return None


def attempt_status(record: BackupRecord, now: datetime, *, rpo: timedelta,
                   threshold: timedelta, lease_holder: str | None,
                   lease_known: bool) -> AttemptStatus:
    """What status shows about a source's newest attempt, stuck or not."""
    step = current_step(record)
    since = last_progress(record)
    return AttemptStatus(
        backup_id=record.backup_id, state=record.state, step=step,
        step_state=record.steps[step].state if step is not None else None,
        last_progress_at=since, idle=max(now - since, timedelta(0)),
        stuck_since=stuck_since(record, now, rpo=rpo, threshold=threshold,
                                lease_held=(lease_holder is not None) if lease_known
                                else None),
        lease_holder=lease_holder, lease_known=lease_known, resumes=record.resumes)


def assess(last_verified_at: datetime | None, last_failure_at: datetime | None,
           rpo: timedelta, now: datetime, *,
           newest_attempt_stuck_since: datetime | None = None) -> Freshness:
    """Failing: the newest failed attempt failed after the last verified backup (or there is
    none). Stuck: an attempt in flight, normally the newest, is stuck (``stuck_since``) and
    made its last progress after the last verified backup (or there is none), however young
    that backup is.
    Late: no verified backup younger than the RPO. Fresh: otherwise. Where several hold, the
    worst (``SEVERITY``) is the answer."""
    if last_failure_at is not None and (last_verified_at is None
                                        or last_failure_at > last_verified_at):
        return Freshness.FAILING
    if newest_attempt_stuck_since is not None and (
            last_verified_at is None or newest_attempt_stuck_since > last_verified_at):
        return Freshness.STUCK
    if last_verified_at is None or now - last_verified_at > rpo:
        return Freshness.LATE
    return Freshness.FRESH


def worst(states: Iterable[Freshness]) -> Freshness:
    return max(states, key=SEVERITY.index, default=Freshness.FRESH)
