"""Freshness is a pure function of the last verified backup, the last failure, the newest
attempt and the RPO."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from regionvault.config import ReconcileConfig
from regionvault.journal import BackupRecord, BackupState, JournalEntry, StepState
from regionvault.manifest import STEPS, Step
from regionvault.status import (
    EXIT_CODES,
    SEVERITY,
    AttemptStatus,
    Freshness,
    assess,
    attempt_status,
    attempt_to_show,
    current_step,
    in_flight,
    stuck_after,
    stuck_since,
    worst,
)

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
RPO = timedelta(hours=26)
H = timedelta(hours=1)
M = timedelta(minutes=1)
#: the default reconcile settings: max(300 s grace, 60 s lease) + 2 * 60 s interval
THRESHOLD = timedelta(minutes=7)
BACKUP_ID = "eu.accounts.20261128T020000Z.1a2b3c4d"


def _record(state: BackupState, updated_at: datetime, *,
            steps: dict[Step, StepState] | None = None, retry_at: datetime | None = None,
            backup_id: str = BACKUP_ID, resumes: int = 0) -> BackupRecord:
    states = steps or {}
    return BackupRecord(
        backup_id=backup_id, domain="eu", source="accounts", state=state,
        steps={s: JournalEntry(s, states.get(s, StepState.PENDING)) for s in STEPS},
        created_at=updated_at - H, updated_at=updated_at, retry_at=retry_at, resumes=resumes)


UPLOAD_RUNNING = {Step.DUMP: StepState.DONE, Step.ENCRYPT: StepState.DONE,
                  Step.UPLOAD: StepState.RUNNING}


@pytest.mark.parametrize(("verified", "failure", "expected"), [
    (NOW - 2 * H, None, Freshness.FRESH),
    (NOW - 26 * H, None, Freshness.FRESH),                 # exactly at the RPO: still fresh
    (NOW - 27 * H, None, Freshness.LATE),
    (None, None, Freshness.LATE),                          # never backed up
    (NOW - 2 * H, NOW - 1 * H, Freshness.FAILING),         # the latest attempt failed
    (NOW - 1 * H, NOW - 2 * H, Freshness.FRESH),           # a failure since fixed
    (None, NOW - 1 * H, Freshness.FAILING),
    (NOW - 40 * H, NOW - 30 * H, Freshness.FAILING),       # failing beats late: says why
], ids=["recent", "at-rpo", "past-rpo", "never", "failed-after", "fixed", "only-failures",
        "late-and-failing"])
def test_assess(verified: datetime | None, failure: datetime | None,
                expected: Freshness) -> None:
    assert assess(verified, failure, RPO, NOW) is expected


@pytest.mark.parametrize(("verified", "failure", "stuck", "expected"), [
    # stuck newer than a verified backup well inside the RPO: stuck, not fresh
    (NOW - 2 * H, None, NOW - 1 * H, Freshness.STUCK),
    # stuck since before the last verified backup: that backup counts, the source is fresh
    (NOW - 1 * H, None, NOW - 2 * H, Freshness.FRESH),
    (NOW - 40 * H, None, NOW - 3 * H, Freshness.STUCK),    # stuck beats late
    (NOW - 40 * H, None, NOW - 41 * H, Freshness.LATE),    # an old stuck attempt: late only
    (None, None, NOW - 1 * H, Freshness.STUCK),            # never verified, newest stuck
    (NOW - 2 * H, NOW - 1 * H, NOW - 30 * M, Freshness.FAILING),  # failing beats stuck
    (NOW - 1 * H, NOW - 2 * H, NOW - 30 * M, Freshness.STUCK),    # old failure, stuck now
    (NOW - 2 * H, NOW - 1 * H, None, Freshness.FAILING),   # the failure rule stays
    (NOW - 2 * H, None, None, Freshness.FRESH),            # nothing stuck: as before
], ids=["stuck-after-verified", "stuck-before-verified", "late-and-stuck", "old-stuck-late",
        "never-verified", "failing-and-stuck", "fixed-failure-then-stuck", "failing",
        "not-stuck"])
def test_assess_with_the_newest_attempt(verified: datetime | None, failure: datetime | None,
                                        stuck: datetime | None, expected: Freshness) -> None:
    assert assess(verified, failure, RPO, NOW, newest_attempt_stuck_since=stuck) is expected


def test_stuck_after_waits_for_the_reconciler_to_act() -> None:
    assert stuck_after(ReconcileConfig()) == THRESHOLD
    cfg = ReconcileConfig(lease_seconds=600, handoff_grace_seconds=300, interval_seconds=30)
    assert stuck_after(cfg) == timedelta(seconds=660)


@pytest.mark.parametrize(("record", "lease_held", "stuck"), [
    # the owner died mid-upload: running for hours, nobody holds the lease
    (_record(BackupState.RUNNING, NOW - 3 * H, steps=UPLOAD_RUNNING), False, True),
    (_record(BackupState.RUNNING, NOW - 14 * M, steps=UPLOAD_RUNNING), False, True),
    # in flight but recent: the reconciler has not had its chance yet
    (_record(BackupState.RUNNING, NOW - 5 * M, steps=UPLOAD_RUNNING), False, False),
    (_record(BackupState.RUNNING, NOW - 7 * M, steps=UPLOAD_RUNNING), False, False),  # at
    # a long step whose owner lives: the journal is quiet, the lease is renewed
    (_record(BackupState.RUNNING, NOW - 3 * H, steps=UPLOAD_RUNNING), True, False),
    # ... but not beyond the RPO
    (_record(BackupState.RUNNING, NOW - 27 * H, steps=UPLOAD_RUNNING), True, True),
    # the lease store could not be asked: judged as if nobody held the lease
    (_record(BackupState.RUNNING, NOW - 3 * H, steps=UPLOAD_RUNNING), None, True),
    # handed over, no worker took it
    (_record(BackupState.QUEUED, NOW - 20 * M), False, True),
    (_record(BackupState.QUEUED, NOW - 2 * M), False, False),
    # waiting out a transient error: idle from its retry on, not from its last write
    (_record(BackupState.RUNNING, NOW - 3 * H, retry_at=NOW + 10 * M,
             steps={Step.DUMP: StepState.RETRYING}), False, False),
    (_record(BackupState.RUNNING, NOW - 3 * H, retry_at=NOW - 20 * M,
             steps={Step.DUMP: StepState.RETRYING}), False, True),
    # not in flight: never stuck, however old
    (_record(BackupState.FAILED, NOW - 30 * H), False, False),
    (_record(BackupState.VERIFIED, NOW - 30 * H), False, False),
    (_record(BackupState.CANCELLED, NOW - 30 * H), False, False),
], ids=["dead-owner-hours", "dead-owner-14m", "recent", "at-threshold", "live-owner",
        "live-owner-past-rpo", "lease-unknown", "queued-long", "queued-recent",
        "retry-due-later", "retry-overdue", "failed", "verified", "cancelled"])
def test_stuck_since(record: BackupRecord, lease_held: bool | None, stuck: bool) -> None:
    since = stuck_since(record, NOW, rpo=RPO, threshold=THRESHOLD, lease_held=lease_held)
    assert (since is not None) is stuck
    if stuck:
        assert since == max(record.updated_at, record.retry_at or record.updated_at)


def test_in_flight_lists_queued_and_running_attempts_newest_first_as_of_now() -> None:
    verified = _record(BackupState.VERIFIED, NOW - 1 * H, backup_id="eu.accounts.a")
    older = _record(BackupState.RUNNING, NOW - 5 * H, backup_id="eu.accounts.b")
    newer = _record(BackupState.QUEUED, NOW - 2 * H, backup_id="eu.accounts.c")
    failed = _record(BackupState.FAILED, NOW - 3 * H, backup_id="eu.accounts.d")
    future = _record(BackupState.RUNNING, NOW + H, backup_id="eu.accounts.e")
    assert in_flight([verified, older, failed, future, newer], NOW) == [newer, older]
    assert in_flight([future], NOW) == []


def _attempt(updated_at: datetime, lease_holder: str | None) -> AttemptStatus:
    return attempt_status(_record(BackupState.RUNNING, updated_at, steps=UPLOAD_RUNNING),
                          NOW, rpo=RPO, threshold=THRESHOLD, lease_holder=lease_holder,
                          lease_known=True)


def test_the_attempt_shown_is_the_newest_stuck_else_the_newest_in_flight() -> None:
    stuck_old, stuck_new = _attempt(NOW - 3 * H, None), _attempt(NOW - 1 * H, None)
    moving_old = _attempt(NOW - 2 * M, "host/1/a")
    moving_new = _attempt(NOW - 1 * M, "host/2/b")
    assert attempt_to_show([moving_new, stuck_old, stuck_new]) is stuck_new
    assert attempt_to_show([moving_old, moving_new]) is moving_new
    assert attempt_to_show([]) is None


@pytest.mark.parametrize(("steps", "expected"), [
    (UPLOAD_RUNNING, Step.UPLOAD),
    ({Step.DUMP: StepState.DONE, Step.ENCRYPT: StepState.RETRYING}, Step.ENCRYPT),
    ({Step.DUMP: StepState.DONE}, Step.ENCRYPT),          # handed over to encrypt
    ({}, Step.DUMP),
    ({s: StepState.DONE for s in STEPS}, None),
])
def test_current_step(steps: dict[Step, StepState], expected: Step | None) -> None:
    assert current_step(_record(BackupState.RUNNING, NOW, steps=steps)) is expected


def test_attempt_status_names_the_step_and_the_idle_time() -> None:
    record = _record(BackupState.RUNNING, NOW - 14 * M, steps=UPLOAD_RUNNING, resumes=2)
    a = attempt_status(record, NOW, rpo=RPO, threshold=THRESHOLD, lease_holder=None,
                       lease_known=True)
    assert (a.backup_id, a.step, a.step_state) == (BACKUP_ID, Step.UPLOAD, StepState.RUNNING)
    assert a.idle == 14 * M and a.stuck and a.stuck_since == NOW - 14 * M
    assert a.in_flight and a.resumes == 2

    held = attempt_status(record, NOW, rpo=RPO, threshold=THRESHOLD,
                          lease_holder="host/1234/task", lease_known=True)
    assert not held.stuck and held.lease_holder == "host/1234/task"

    unknown = attempt_status(record, NOW, rpo=RPO, threshold=THRESHOLD, lease_holder=None,
                             lease_known=False)
    assert unknown.stuck and not unknown.lease_known

    waiting = attempt_status(_record(BackupState.RUNNING, NOW - H, retry_at=NOW + 5 * M,
                                     steps={Step.DUMP: StepState.RETRYING}),
                             NOW, rpo=RPO, threshold=THRESHOLD, lease_holder=None,
                             lease_known=True)
    assert waiting.idle == timedelta(0) and not waiting.stuck


@pytest.mark.parametrize(("states", "expected"), [
    ([], Freshness.FRESH),
    ([Freshness.FRESH, Freshness.FRESH], Freshness.FRESH),
    ([Freshness.FRESH, Freshness.LATE], Freshness.LATE),
    ([Freshness.LATE, Freshness.STUCK, Freshness.FRESH], Freshness.STUCK),
    ([Freshness.STUCK, Freshness.FAILING], Freshness.FAILING),
    ([Freshness.LATE, Freshness.FAILING, Freshness.FRESH], Freshness.FAILING),
])
def test_worst(states: list[Freshness], expected: Freshness) -> None:
    assert worst(states) is expected


def test_every_state_has_a_rank_and_an_exit_code() -> None:
    assert set(SEVERITY) == set(Freshness) == set(EXIT_CODES)
    assert SEVERITY.index(Freshness.STUCK) > SEVERITY.index(Freshness.LATE)
    assert SEVERITY.index(Freshness.FAILING) > SEVERITY.index(Freshness.LATE)


def test_worst_state_decides_the_exit_code() -> None:
    assert EXIT_CODES[worst([Freshness.FRESH, Freshness.FRESH])] == 0
    assert EXIT_CODES[worst([Freshness.FRESH, Freshness.LATE])] == 3
    assert EXIT_CODES[worst([Freshness.LATE, Freshness.STUCK, Freshness.FRESH])] == 4
    assert EXIT_CODES[worst([Freshness.LATE, Freshness.FAILING, Freshness.FRESH])] == 4
