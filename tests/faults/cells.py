"""What every fault cell does: start a backup, hit a step while it runs, and check that the
backup healed by itself, once.

"Once" is checked with something that can fail: the requests counted by the fault proxy in
front of each store. Object keys are deterministic, so counting objects could not show a
second upload; counting ``CreateMultipartUpload`` and GCS upload sessions can.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from regionvault.context import DomainContext
from regionvault.devstack import sample
from regionvault.domains import Domain
from regionvault.journal import BackupRecord, BackupState, Journal, StepState
from regionvault.lease import Holder, RedisLeaseStore
from regionvault.manifest import Step, new_backup_id
from regionvault.restore import restore
from tests.faults.conftest import FaultStack

DOMAIN = Domain.EU
SOURCE = "bulk"
#: a healthy 16 MiB chain takes ~6 s here; a healed one adds the lease (3 s), a reconciler
#: tick (2 s), a worker restart and the steps run again
HEAL_BOUND_SECONDS = 90.0


def journal(stack: FaultStack) -> Journal:
    return Journal.from_url(stack.env["REGIONVAULT_BROKER_URL"])


def leases(stack: FaultStack) -> RedisLeaseStore:
    return RedisLeaseStore.from_url(stack.env["REGIONVAULT_BROKER_URL"])


def context(stack: FaultStack) -> DomainContext:
    assert stack.config is not None
    return DomainContext(stack.config, DOMAIN)


def start_backup(stack: FaultStack) -> str:
    """A new backup of eu/bulk, started as an on-call person would (a new run, from dump)."""
    from workers.canvas import start_run

    backup_id = new_backup_id(DOMAIN, SOURCE, context(stack).clock())
    assert start_run(DOMAIN.value, SOURCE, backup_id, note="fault cell").accepted
    return backup_id


def wait_for(stack: FaultStack, backup_id: str, step: Step, state: StepState, *,
             timeout: float = 60, poll: float = 0.002) -> BackupRecord:
    j = journal(stack)
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = j.get(backup_id)
        if record is not None and record.steps[step].state is state:
            return record
        time.sleep(poll)
    raise AssertionError(f"{backup_id}: step {step.value} never became {state.value}: {record}")


def catch_running(stack: FaultStack, backup_id: str, step: Step, *,
                  timeout: float = 60, poll: float = 0.002) -> BackupRecord | None:
    """The record as soon as ``step`` is seen running; None if it finished (or the backup
    went past it) before a poll saw it run: a short step on a loaded machine can."""
    j = journal(stack)
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = j.get(backup_id)
        if record is not None:
            if record.steps[step].state is StepState.RUNNING:
                return record
            if record.steps[step].state is StepState.DONE:
                return None
        time.sleep(poll)
    raise AssertionError(f"{backup_id}: step {step.value} never ran: {record}")


@dataclass(frozen=True)
class Hit:
    """Proof that a fault landed while a step was running: who held the lease then."""

    step: Step
    holder: Holder
    pid: int


def freeze_during(stack: FaultStack, backup_id: str, step: Step) -> Hit | None:
    """Wait until ``step`` runs, then stop the whole worker where it stands (SIGSTOP), and
    prove the step was caught running: it holds the lease and has not finished. None (and
    the worker running again) if the step finished before the stop landed."""
    if catch_running(stack, backup_id, step) is None:
        return None
    stack.freeze(DOMAIN)
    holder = leases(stack).holder(backup_id)
    record = journal(stack).get(backup_id)
    assert record is not None
    if (record.steps[step].state is not StepState.RUNNING or holder is None
            or holder.step != step.value):
        stack.thaw(DOMAIN)
        return None
    pid = int(holder.owner.split("/")[1])
    return Hit(step, holder, pid)


def backup_hit_during(stack: FaultStack, step: Step, attempts: int = 3) -> tuple[str, Hit]:
    """A new backup, frozen while ``step`` runs. A short step (encrypt takes well under a
    second) can finish between the journal saying it runs and the stop landing on a loaded
    machine: that backup is let finish and another one is aimed at; a cell never passes
    without a hit."""
    for _ in range(attempts):
        reset_counts(stack)
        backup_id = start_backup(stack)
        hit = freeze_during(stack, backup_id, step)
        if hit is not None:
            return backup_id, hit
        wait_verified(stack, backup_id)
    raise AssertionError(f"{attempts} backups in a row finished {step.value} before the fault")


def wait_verified(stack: FaultStack, backup_id: str,
                  timeout: float = HEAL_BOUND_SECONDS) -> BackupRecord:
    """The backup ends verified (and its expire done) within ``timeout``, by itself."""
    j = journal(stack)
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        record = j.get(backup_id)
        if (record is not None and record.state is BackupState.VERIFIED
                and record.steps[Step.EXPIRE].state is StepState.DONE):
            return record
        time.sleep(0.1)
    raise AssertionError(f"{backup_id} not verified within {timeout:.0f}s: {record}")


def assert_healed_once(stack: FaultStack, backup_id: str, *,
                       gcs_sessions: tuple[int, ...] = (1,), s3_creates: int = 1,
                       check_restore: bool = True) -> None:
    """Exactly one object and one manifest per store; uploads started as often as stated
    (counted at the proxies); no open upload, no spool file; a restore matches the source.

    ``gcs_sessions``: the GCS upload sessions that may have carried the object. A cell that
    interrupts replicate allows (1, 2): the interrupted copy may have stopped before or after
    its session sent its first chunk."""
    ctx = context(stack)
    for store in (ctx.s3, ctx.gcs):
        keys = sorted(k for k in store.list_keys(f"{DOMAIN.value}/") if backup_id in k)
        assert keys == [f"eu/pii/{SOURCE}/{backup_id}.manifest.json",
                        f"eu/pii/{SOURCE}/{backup_id}.rvb"], (store.name, keys)
        assert not [u for u in store.incomplete_uploads(f"{DOMAIN.value}/")
                    if backup_id in u.key], f"open uploads left in {store.name}"
    assert stack.s3_proxy is not None and stack.gcs_proxy is not None
    object_name = f"{backup_id}.rvb"
    s3_requests = [q for q in stack.s3_proxy.requests()
                   if q.forwarded and q.method == "POST" and object_name in q.path]
    creates = sum(1 for q in s3_requests if q.query.startswith("uploads"))
    completes = sum(1 for q in s3_requests if q.query.startswith("uploadId="))
    assert creates == s3_creates, f"{creates} multipart uploads started in S3"
    assert completes == 1, f"{completes} multipart uploads completed in S3"
    sessions = gcs_upload_sessions(stack, object_name)
    assert sessions in gcs_sessions, f"{sessions} upload sessions carried the object to GCS"
    _wait_no_spool(ctx, backup_id)
    if check_restore:
        assert restored_matches_source(stack, backup_id)


def gcs_upload_sessions(stack: FaultStack, object_name: str) -> int:
    """Resumable upload sessions that carried bytes of ``object_name`` to GCS: the session
    id (in every chunk's query) names the object; the opening POST names it only in its body."""
    assert stack.gcs_proxy is not None
    return len({q.query for q in stack.gcs_proxy.requests()
                if q.forwarded and q.method == "PUT" and "/upload/" in q.path
                and object_name in q.query and "upload_id=" in q.query})


def _wait_no_spool(ctx: DomainContext, backup_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ctx.spool.dir_for(backup_id).exists():
            return
        time.sleep(0.1)
    left = sorted(p.name for p in ctx.spool.dir_for(backup_id).rglob("*"))
    raise AssertionError(f"spool files left for {backup_id}: {left}")


def restored_matches_source(stack: FaultStack, backup_id: str) -> bool:
    assert stack.postgres is not None
    target = f"restored_{backup_id.rsplit('.', 1)[1]}"
    stack.postgres.create_database(target)
    try:
        restore(context(stack), backup_id, stack.postgres.dsn(target), from_store="s3")
        source = sample.fingerprint(stack.postgres.dsn(sample.database_name(DOMAIN, SOURCE)))
        return sample.fingerprint(stack.postgres.dsn(target)) == source
    finally:
        stack.postgres.drop_database(target)


def count_rows(stack: FaultStack) -> int:
    assert stack.postgres is not None
    dsn = stack.postgres.dsn(sample.database_name(DOMAIN, SOURCE))
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM blobs").fetchone()
    assert row is not None
    return int(row[0])


def reset_counts(stack: FaultStack) -> None:
    assert stack.s3_proxy is not None and stack.gcs_proxy is not None
    stack.s3_proxy.clear_requests()
    stack.gcs_proxy.clear_requests()
