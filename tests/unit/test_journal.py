"""The journal's state machine, against a real Redis-protocol server (started here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from regionvault.journal import BackupState, Journal, StepState
from regionvault.manifest import STEPS, Step

T0 = datetime(2026, 11, 28, 2, tzinfo=UTC)


@pytest.fixture
def journal(redis_url: str) -> Journal:
    j = Journal.from_url(redis_url)
    j._redis.flushdb()
    return j


def _queue(journal: Journal, backup_id: str) -> None:
    journal.queued(backup_id, {s: f"task-{s.value}" for s in STEPS}, note="test", at=T0)


def test_a_chain_that_succeeds(journal: Journal) -> None:
    bid = "eu.accounts.20261128T020000Z.0000000a"
    _queue(journal, bid)
    for i, step in enumerate(STEPS):
        journal.step(bid, step, StepState.RUNNING, at=T0 + timedelta(seconds=2 * i))
        journal.step(bid, step, StepState.DONE, detail="ok", at=T0 + timedelta(seconds=2 * i + 1))
        record = journal.get(bid)
        assert record is not None
        expected = BackupState.VERIFIED if STEPS.index(step) >= STEPS.index(Step.VERIFY) \
            else BackupState.RUNNING
        assert record.state is expected, step
    record = journal.get(bid)
    assert record is not None and record.first_unfinished() is None
    assert record.steps[Step.UPLOAD].task_id == "task-upload"
    assert record.notes[0].endswith("test")


def test_a_failed_step_is_where_a_retry_resumes(journal: Journal) -> None:
    bid = "us.catalog.20261128T020000Z.0000000b"
    _queue(journal, bid)
    for step in (Step.DUMP, Step.ENCRYPT):
        journal.step(bid, step, StepState.DONE)
    journal.step(bid, Step.UPLOAD, StepState.RETRYING, detail="retrying: slow down")
    journal.step(bid, Step.UPLOAD, StepState.FAILED, detail="cannot upload: S3 is down")
    record = journal.get(bid)
    assert record is not None
    assert record.state is BackupState.FAILED and record.error_step is Step.UPLOAD
    assert record.error == "cannot upload: S3 is down"
    assert record.first_unfinished() is Step.UPLOAD
    # the rest of the chain is queued again: pending, error cleared, dump untouched
    journal.queued(bid, {s: f"again-{s.value}" for s in STEPS[2:]})
    again = journal.get(bid)
    assert again is not None and again.state is BackupState.QUEUED and again.error == ""
    assert again.steps[Step.DUMP].state is StepState.DONE
    assert again.steps[Step.UPLOAD].task_id == "again-upload"


def test_cancelled_stays_cancelled(journal: Journal) -> None:
    bid = "au.ledger.20261128T020000Z.0000000c"
    _queue(journal, bid)
    journal.step(bid, Step.DUMP, StepState.DONE)
    journal.step(bid, Step.ENCRYPT, StepState.RUNNING)
    journal.cancelled(bid, by="oncall")
    journal.step(bid, Step.ENCRYPT, StepState.FAILED, detail="worker lost")  # the killed step
    record = journal.get(bid)
    assert record is not None and record.state is BackupState.CANCELLED
    assert record.steps[Step.DUMP].state is StepState.DONE
    assert record.steps[Step.ENCRYPT].state is StepState.CANCELLED
    assert journal.is_cancelled(bid)
    assert any("cancelled by oncall" in note for note in record.notes)


def test_recent_lists_newest_first_per_domain(journal: Journal) -> None:
    ids = [f"eu.accounts.20261128T02000{i}Z.0000000{i}" for i in range(3)]
    for i, bid in enumerate(ids):
        journal.queued(bid, {Step.DUMP: "t"}, at=T0 + timedelta(minutes=i))
    journal.queued("us.accounts.20261128T020000Z.0000000f", {Step.DUMP: "t"}, at=T0)
    assert [r.backup_id for r in journal.recent("eu")] == list(reversed(ids))
    assert len(journal.recent()) == 4
    assert [r.backup_id for r in journal.for_source("eu", "accounts", limit=2)] == \
        list(reversed(ids))[:2]


def test_unknown_backup_is_none(journal: Journal) -> None:
    assert journal.get("eu.accounts.20261128T020000Z.deadbeef") is None


def test_a_slot_is_claimed_once(journal: Journal) -> None:
    bid = "eu.accounts.20261128T020000Z.0000000c"
    first = journal.claim(bid, Step.DUMP, mode="new")
    second = journal.claim(bid, Step.DUMP, mode="new")
    assert first.accepted and first.run == 1
    assert not second.accepted and second.chain_id == first.chain_id


def test_admission_tells_cancelled_and_the_current_run_in_one_read(journal: Journal) -> None:
    bid = "us.accounts.20261128T020000Z.0000001a"
    assert journal.admission(bid) == (False, 0)  # unknown: not cancelled, no run yet
    journal.claim(bid, Step.DUMP, mode="new")
    journal.step(bid, Step.DUMP, StepState.FAILED, detail="boom")
    journal.claim(bid, Step.DUMP, mode="retry")
    assert journal.admission(bid) == (False, 2)
    journal.cancelled(bid, by="oncall")
    assert journal.admission(bid) == (True, 2)


def test_racing_retries_start_one_run(journal: Journal) -> None:
    import threading

    bid = "eu.accounts.20261128T020000Z.0000000d"
    journal.claim(bid, Step.DUMP, mode="new")
    journal.step(bid, Step.DUMP, StepState.FAILED, detail="boom")
    barrier = threading.Barrier(8)
    answers = []

    def retry() -> None:
        mine = Journal.from_url(_url_of(journal))  # a client of its own, like a CLI run
        barrier.wait()
        answers.append(mine.claim(bid, Step.DUMP, mode="retry"))

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [a for a in answers if a.accepted]
    assert len(accepted) == 1
    refused = [a for a in answers if not a.accepted]
    assert {a.chain_id for a in refused} == {accepted[0].chain_id}  # they name the winner
    record = journal.get(bid)
    assert record is not None and record.run == 2 and record.state is BackupState.QUEUED


def test_the_reconciler_resumes_only_the_run_it_saw(journal: Journal) -> None:
    bid = "eu.accounts.20261128T020000Z.0000000e"
    journal.claim(bid, Step.DUMP, mode="new")
    journal.step(bid, Step.DUMP, StepState.FAILED, detail="lost", rerun=Step.DUMP)
    assert journal.claim(bid, Step.DUMP, mode="retry").accepted  # an operator was quicker
    late = journal.claim(bid, Step.DUMP, mode="resume", expected_run=1)
    assert not late.accepted and late.run == 2
    record = journal.get(bid)
    assert record is not None and record.resumes == 0


def test_a_cancelled_backup_is_not_retried(journal: Journal) -> None:
    bid = "eu.accounts.20261128T020000Z.0000000f"
    journal.claim(bid, Step.DUMP, mode="new")
    journal.cancelled(bid, by="test")
    assert not journal.claim(bid, Step.DUMP, mode="retry").accepted
    assert not journal.claim(bid, Step.DUMP, mode="resume", expected_run=1).accepted


def _url_of(journal: Journal) -> str:
    kwargs = journal.client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_a_failure_after_a_finished_step_does_not_fail_it(journal: Journal,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Celery reports a task failed when storing its result fails (the broker gone at a step
    boundary), after the step recorded itself done: the journal keeps it done."""
    import workers.journal as worker_journal

    monkeypatch.setattr(worker_journal, "journal", lambda: journal)
    bid = "eu.accounts.20261128T020000Z.00000010"
    kwargs = {"backup_id": bid, "domain": "eu", "source": "accounts"}
    journal.claim(bid, Step.DUMP, mode="new")
    journal.step(bid, Step.UPLOAD, StepState.DONE, task_id="t-upload")

    class Upload:
        name = "regionvault.upload"

    class Replicate:
        name = "regionvault.replicate"

    worker_journal._failed(Upload(), "t-upload", ConnectionError("broker gone"), kwargs=kwargs)
    record = journal.get(bid)
    assert record is not None and record.steps[Step.UPLOAD].state is StepState.DONE
    assert record.state is not BackupState.FAILED

    journal.step(bid, Step.REPLICATE, StepState.RUNNING, task_id="t-replicate")
    worker_journal._failed(Replicate(), "t-replicate", RuntimeError("time limit"), kwargs=kwargs)
    record = journal.get(bid)
    assert record is not None and record.state is BackupState.FAILED
    assert record.error_step is Step.REPLICATE
