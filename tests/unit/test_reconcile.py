"""The reconciler's decision, the step retry plan, lease waiting and schedule slots: pure
functions, tested against tables of cases."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from regionvault.backup_state import BackupFacts, next_step
from regionvault.config import ReconcileConfig, TaskRetryConfig
from regionvault.domains import Domain
from regionvault.journal import BackupRecord, BackupState, JournalEntry, StepState
from regionvault.lease import Holder, Lease, MemoryLeaseStore
from regionvault.manifest import STEPS, BackupRef, Step
from regionvault.reconcile import Action, Observation, decide
from regionvault.schedule import slot_backup_id, slot_of

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
BID = "eu.accounts.20261130T110000Z.0000000a"
CFG = ReconcileConfig(lease_seconds=60, handoff_grace_seconds=300,
                      orphan_after_seconds=6 * 3600, max_resumes=3)


def facts(*, dump: bool = False, backup: bool = False, s3: set[Step] | None = None,
          unknown: bool = False) -> BackupFacts:
    return BackupFacts(BID, spool_dump=dump, spool_backup=backup, spool_dir=dump or backup,
                       s3_steps=frozenset(s3) if s3 is not None else None, s3_unknown=unknown)


def record(state: BackupState, steps: dict[Step, StepState] | None = None, *,
           idle: float = 10, rerun: Step | None = None, resumes: int = 0,
           retry_in: float | None = None) -> BackupRecord:
    states = steps or {}
    return BackupRecord(
        backup_id=BID, domain="eu", source="accounts", state=state,
        steps={s: JournalEntry(s, states.get(s, StepState.PENDING)) for s in STEPS},
        created_at=NOW - timedelta(hours=1), updated_at=NOW - timedelta(seconds=idle),
        run=2, rerun=rerun, resumes=resumes,
        retry_at=NOW + timedelta(seconds=retry_in) if retry_in is not None else None)


HOLDER = Holder(owner="host/1/task", token=7, step="upload", run=2, ttl_ms=30_000)
DONE_TO_UPLOAD = {Step.DUMP: StepState.DONE, Step.ENCRYPT: StepState.DONE}

CASES = [
    # (name, observation, expected action, expected step)
    ("a live owner is never touched",
     Observation(BID, record(BackupState.RUNNING, {Step.UPLOAD: StepState.RUNNING}), HOLDER,
                 facts(backup=True)), Action.LEAVE, None),
    ("owner died mid-upload: resume from upload",
     Observation(BID, record(BackupState.RUNNING, {**DONE_TO_UPLOAD,
                                                   Step.UPLOAD: StepState.RUNNING}), None,
                 facts(backup=True)), Action.RESUME, Step.UPLOAD),
    ("owner died mid-dump: resume from dump",
     Observation(BID, record(BackupState.RUNNING, {Step.DUMP: StepState.RUNNING}), None,
                 facts()), Action.RESUME, Step.DUMP),
    ("a hand-over still inside its grace is waited for",
     Observation(BID, record(BackupState.RUNNING, DONE_TO_UPLOAD, idle=60), None,
                 facts(backup=True)), Action.LEAVE, None),
    ("a hand-over lost at a step boundary is sent again",
     Observation(BID, record(BackupState.RUNNING, DONE_TO_UPLOAD, idle=301), None,
                 facts(backup=True)), Action.RESUME, Step.UPLOAD),
    ("a queued backup that never started is sent again after the grace",
     Observation(BID, record(BackupState.QUEUED, idle=400), None, facts()),
     Action.RESUME, Step.DUMP),
    ("the facts outrank the journal: S3 says uploaded",
     Observation(BID, record(BackupState.RUNNING, {Step.UPLOAD: StepState.RUNNING}), None,
                 facts(backup=True, s3={Step.DUMP, Step.ENCRYPT, Step.UPLOAD})),
     Action.RESUME, Step.REPLICATE),
    ("a step waiting out a transient error is left alone",
     Observation(BID, record(BackupState.RUNNING, {Step.UPLOAD: StepState.RETRYING},
                             idle=900, retry_in=30), None, facts(backup=True)),
     Action.LEAVE, None),
    ("a lost spool: the failure named dump, and dump it is",
     Observation(BID, record(BackupState.FAILED, {Step.DUMP: StepState.DONE,
                                                  Step.ENCRYPT: StepState.FAILED},
                             rerun=Step.DUMP), None, facts()), Action.RESUME, Step.DUMP),
    ("a permanent failure waits for a person",
     Observation(BID, record(BackupState.FAILED, {Step.DUMP: StepState.FAILED}), None,
                 facts()), Action.LEAVE, None),
    ("a permanent failure's old spool is swept",
     Observation(BID, record(BackupState.FAILED, {Step.ENCRYPT: StepState.FAILED}), None,
                 facts(dump=True), spool_age=7 * 3600), Action.SWEEP, None),
    ("resumed too often: left for a person",
     Observation(BID, record(BackupState.FAILED, rerun=Step.DUMP, resumes=3), None, facts()),
     Action.LEAVE, None),
    ("in flight but resumed too often: given up, loudly",
     Observation(BID, record(BackupState.RUNNING, {Step.DUMP: StepState.RUNNING},
                             resumes=3), None, facts()), Action.GIVE_UP, None),
    ("cancelled with spool files: swept",
     Observation(BID, record(BackupState.CANCELLED), None, facts(dump=True)),
     Action.SWEEP, None),
    ("verified but the journal was lost: rebuilt",
     Observation(BID, None, None, facts(s3={Step.DUMP, Step.ENCRYPT, Step.UPLOAD,
                                            Step.REPLICATE, Step.VERIFY})),
     Action.REBUILD, None),
    ("verified, expire's owner died: expire again",
     Observation(BID, record(BackupState.VERIFIED, {**{s: StepState.DONE for s in STEPS[:5]},
                                                    Step.EXPIRE: StepState.RUNNING}), None,
                 facts(s3=set(STEPS) - {Step.EXPIRE})), Action.RESUME, Step.EXPIRE),
    ("verified, expire handed over a moment ago: waited for",
     Observation(BID, record(BackupState.VERIFIED, {s: StepState.DONE for s in STEPS[:5]}),
                 None, facts(s3=set(STEPS) - {Step.EXPIRE})), Action.LEAVE, None),
    ("verified and expired: nothing to do",
     Observation(BID, record(BackupState.VERIFIED, {s: StepState.DONE for s in STEPS}),
                 None, facts(s3=set(STEPS))), Action.LEAVE, None),
    ("verified with spool files left: swept",
     Observation(BID, record(BackupState.VERIFIED), None,
                 facts(backup=True, s3=set(STEPS))), Action.SWEEP, None),
    ("the journal was lost mid-flight: resumed from the spool",
     Observation(BID, None, None, facts(dump=True)), Action.RESUME, Step.ENCRYPT),
    ("no journal, no manifest, an old spool: swept",
     Observation(BID, None, None, facts(dump=True), spool_age=7 * 3600), Action.SWEEP, None),
    ("S3 unreadable: judged next tick, not guessed",
     Observation(BID, record(BackupState.RUNNING, {Step.REPLICATE: StepState.RUNNING}), None,
                 facts(unknown=True)), Action.LEAVE, None),
]


@pytest.mark.parametrize(("name", "obs", "action", "step"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, obs: Observation, action: Action, step: Step | None) -> None:
    decision = decide(obs, NOW, CFG)
    assert decision.action is action, decision.reason
    assert decision.step is step
    assert decision.reason


def test_deciding_twice_decides_the_same() -> None:
    for _, obs, _, _ in CASES:
        assert decide(obs, NOW, CFG) == decide(replace(obs), NOW, CFG)


@pytest.mark.parametrize(("found", "expected"), [
    (facts(), Step.DUMP),
    (facts(dump=True), Step.ENCRYPT),
    (facts(dump=True, backup=True), Step.UPLOAD),
    (facts(backup=True, s3={Step.DUMP, Step.ENCRYPT, Step.UPLOAD}), Step.REPLICATE),
    (facts(s3={Step.DUMP, Step.ENCRYPT, Step.UPLOAD, Step.REPLICATE}), Step.VERIFY),
    (facts(s3=set(STEPS) - {Step.EXPIRE}), Step.EXPIRE),
    (facts(s3=set(STEPS)), None),
])
def test_next_step_from_the_facts(found: BackupFacts, expected: Step | None) -> None:
    assert next_step(found) is expected


# --- the one retry layer ------------------------------------------------------------------


def test_backoff_grows_and_stops_at_the_window() -> None:
    from tasks.runner import retry_delay

    settings = TaskRetryConfig(window_seconds=100, backoff_seconds=5, backoff_max_seconds=40)
    planned = [retry_delay(n, settings, rng=lambda: 1.0) for n in range(8)]
    # 5, 10, 20, 40 (sum 75) fit in 100 s; a fifth wait of 40 would pass it
    assert planned[:4] == [5, 10, 20, 40]
    assert planned[4:] == [None] * 4
    low = [retry_delay(n, settings, rng=lambda: 0.0) for n in range(4)]
    assert low == [2.5, 5, 10, 20]  # jitter never takes more than half away


def test_a_zero_window_means_no_retry() -> None:
    from tasks.runner import retry_delay

    assert retry_delay(0, TaskRetryConfig(window_seconds=0)) is None


# --- waiting for a lease ----------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_duplicate_waits_for_an_expiring_lease_then_takes_it() -> None:
    from tasks.runner import acquire

    t = FakeTime()
    store = MemoryLeaseStore(t.clock)
    first = store.acquire(BID, "otherhost/1/a", 5000, step="upload", run=1)
    assert isinstance(first, Lease)
    got = acquire(store, BID, "otherhost/2/b", step=Step.UPLOAD, run=1, floor=0, ttl_ms=5000,
                  sleep=t.sleep, clock=t.clock)
    assert isinstance(got, Lease) and got.token > first.token
    assert 5 <= t.now <= 10


def test_the_next_step_takes_the_lease_within_milliseconds_of_its_release() -> None:
    """The step before sends the next step's message, then releases its lease: the next
    step, already waiting, must not sleep a tenth of the lease (a second) on every hand-over.
    """
    from tasks.runner import acquire

    t = FakeTime()
    store = MemoryLeaseStore(t.clock)
    before = store.acquire(BID, "otherhost/1/a", 60_000, step="dump", run=1)
    assert isinstance(before, Lease)
    sleeps: list[float] = []

    def sleep_then_release(seconds: float) -> None:
        sleeps.append(seconds)
        t.sleep(seconds)
        if t.now >= 0.005:  # the previous step releases 5 ms after sending
            store.release(before)

    got = acquire(store, BID, "otherhost/2/b", step=Step.ENCRYPT, run=1, floor=0,
                  ttl_ms=60_000, sleep=sleep_then_release, clock=t.clock)
    assert isinstance(got, Lease)
    assert t.now <= 0.05, f"the hand-over waited {t.now:.3f}s ({sleeps})"


def test_a_duplicate_steps_aside_while_the_owner_renews() -> None:
    from tasks.runner import acquire

    t = FakeTime()
    store = MemoryLeaseStore(t.clock)
    owner = store.acquire(BID, "otherhost/1/a", 5000, step="upload", run=1)
    assert isinstance(owner, Lease)

    def sleep_and_renew(seconds: float) -> None:
        t.sleep(seconds)
        assert store.renew(owner, 5000)

    got = acquire(store, BID, "otherhost/2/b", step=Step.UPLOAD, run=1, floor=0, ttl_ms=5000,
                  sleep=sleep_and_renew, clock=t.clock)
    assert isinstance(got, Holder) and got.owner == "otherhost/1/a"
    assert t.now >= 10  # two lease lifetimes


def test_a_message_of_an_older_run_steps_aside_at_once() -> None:
    from tasks.runner import acquire

    t = FakeTime()
    store = MemoryLeaseStore(t.clock)
    store.acquire(BID, "otherhost/1/a", 5000, step="upload", run=3)
    got = acquire(store, BID, "otherhost/2/b", step=Step.UPLOAD, run=2, floor=0, ttl_ms=5000,
                  sleep=t.sleep, clock=t.clock)
    assert isinstance(got, Holder) and t.now == 0


def test_the_lease_of_a_dead_process_of_this_host_is_broken_at_once() -> None:
    import socket
    import subprocess

    from tasks.runner import acquire

    gone = subprocess.Popen(["true"])
    gone.wait()
    t = FakeTime()
    store = MemoryLeaseStore(t.clock)
    store.acquire(BID, f"{socket.gethostname()}/{gone.pid}/a", 60_000, step="dump", run=1)
    got = acquire(store, BID, "me", step=Step.DUMP, run=1, floor=0, ttl_ms=60_000,
                  sleep=t.sleep, clock=t.clock)
    assert isinstance(got, Lease) and t.now == 0


# --- schedule slots -----------------------------------------------------------------------


def test_one_slot_one_backup_id() -> None:
    schedule = "0 2 * * *"
    a = slot_of(schedule, datetime(2026, 11, 30, 2, 0, 3, tzinfo=UTC))
    b = slot_of(schedule, datetime(2026, 11, 30, 17, 45, tzinfo=UTC))
    assert a == b == datetime(2026, 11, 30, 2, tzinfo=UTC)
    assert slot_of(schedule, datetime(2026, 11, 30, 1, 59, tzinfo=UTC)) == datetime(
        2026, 11, 29, 2, tzinfo=UTC)
    first = slot_backup_id(Domain.EU, "accounts", a)
    assert first == slot_backup_id(Domain.EU, "accounts", b)
    assert first != slot_backup_id(Domain.EU, "events", a)
    assert first != slot_backup_id(Domain.EU, "accounts", a - timedelta(days=1))
    assert BackupRef.parse(first).source == "accounts"


def test_a_retry_the_broker_cannot_take_leaves_the_step_retrying_for_the_reconciler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient error while the broker is away too: Celery cannot send the retry and drops
    the message (Reject). The step must stay "retrying" in the journal, which the reconciler
    resumes after retry_at, not become a failure that waits for a person."""
    from types import SimpleNamespace

    from celery.exceptions import Reject

    import tasks.runner as runner

    recorded: list[tuple[Step, StepState, datetime | None]] = []
    monkeypatch.setattr(runner, "_record", lambda bid, step, state, **f: recorded.append(
        (step, state, f.get("retry_at"))))
    monkeypatch.setattr(runner, "worker_config",
                        lambda: SimpleNamespace(retries=TaskRetryConfig()))

    def retry(**_: object) -> None:
        raise Reject(ConnectionError("broker refused"), requeue=False)

    task = SimpleNamespace(request=SimpleNamespace(retries=0), retry=retry)
    with pytest.raises(Reject) as info:
        runner._retry_or_fail(task, TimeoutError("gcs timed out"), BID, Step.REPLICATE, "t1")
    assert getattr(info.value, "_rv_journaled", False) is True  # task_failure leaves it be
    assert [(s, st) for s, st, _ in recorded] == [(Step.REPLICATE, StepState.RETRYING)]
    assert recorded[0][2] is not None  # retry_at, which the reconciler waits for
