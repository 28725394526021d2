"""Issue 4, on-call: `backup --wait` live, S3 outage then `retry`, `status` states and exit
codes, `cancel` during upload, and the worker's metrics endpoint.

These tests stop and restart the S3 emulator, so they run on a stack of their own, whose S3
uploads are paced (so that an upload lasts long enough to be cancelled).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.journal import BackupState, Journal, StepState
from regionvault.manifest import STEPS, Step
from tests.integration.conftest import running_stack
from tests.integration.helpers import config_of, object_names, regionvault_cli, s3_client

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def ops_stack() -> Iterator[DevStack]:
    with running_stack("rv-test-ops-",
                       config_overrides={"s3": {"max_upload_mib_per_second": 4}}) as dev:
        yield dev


def _journal(stack: DevStack) -> Journal:
    return Journal.from_url(stack.env["REGIONVAULT_BROKER_URL"])


def _backup_id(stdout: str) -> str:
    return stdout.split("backup ", 1)[1].split()[0]


def test_backup_wait_shows_all_six_steps_and_exits_zero(ops_stack: DevStack) -> None:
    result = regionvault_cli(ops_stack, "backup", "--domain", "eu", "--source", "catalog",
                             "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    for step in STEPS:
        assert f" {step.value} " in result.stdout, f"step {step.value} not shown"
    assert "verified" in result.stdout


def test_metrics_show_step_histograms_and_last_verified(ops_stack: DevStack) -> None:
    port = ops_stack.metrics_ports[Domain.EU]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for step in STEPS:
        assert (f'regionvault_step_duration_seconds_bucket{{domain="eu",le="+Inf",'
                f'source="catalog",step="{step.value}"}}') in text, step
    assert 'regionvault_last_verified_backup_timestamp_seconds{domain="eu",source="catalog"}' \
        in text
    assert 'regionvault_worker_info{domain="eu"' in text
    assert 'regionvault_step_bytes_total{domain="eu",source="catalog",step="dump"}' in text


def test_status_fresh_late_and_failing(ops_stack: DevStack) -> None:
    for source in ("accounts", "ledger"):
        ok = regionvault_cli(ops_stack, "backup", "--domain", "eu", "--source", source, "--wait")
        assert ok.returncode == 0, ok.stdout + ok.stderr
    fresh = regionvault_cli(ops_stack, "status", "--domain", "eu")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert fresh.stdout.count("fresh") == 3

    later = (datetime.now(UTC) + timedelta(hours=30)).isoformat()
    late = regionvault_cli(ops_stack, "status", "--domain", "eu", "--now", later)
    assert late.returncode == 3, late.stdout + late.stderr
    assert late.stdout.count("late") == 3

    assert ops_stack.s3 is not None
    ops_stack.s3.stop()
    try:
        failed = regionvault_cli(ops_stack, "backup", "--domain", "eu", "--source", "ledger",
                                 "--wait", "--timeout", "120")
        assert failed.returncode == 1
        failing = regionvault_cli(ops_stack, "status", "--domain", "eu")
        assert failing.returncode == 4, failing.stdout + failing.stderr
        row = next(line for line in failing.stdout.splitlines() if "ledger" in line)
        assert "failing" in row and "upload" in row
        assert failing.stdout.count("fresh") == 2  # the other sources are not affected
    finally:
        ops_stack.restart_s3()


def test_s3_outage_fails_upload_then_retry_resumes_without_dumping_again(
        ops_stack: DevStack) -> None:
    assert ops_stack.s3 is not None
    journal = _journal(ops_stack)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "regionvault"), "backup", "--domain", "au",
         "--source", "catalog", "--wait", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ops_stack.env})
    try:
        backup_id = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # stop S3 once the chain is under way
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.startswith("backup ") and "queued" in line:
                backup_id = line.split()[1]
                break
        assert backup_id
        while time.monotonic() < deadline:
            record = journal.get(backup_id)
            if record and record.steps[Step.DUMP].state in (StepState.RUNNING, StepState.DONE):
                break
            time.sleep(0.05)
        ops_stack.s3.stop()
        out, errors = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + errors
    assert f"backup {backup_id} failed at step upload" in out
    record = journal.get(backup_id)
    assert record is not None and record.state is BackupState.FAILED
    assert record.error_step is Step.UPLOAD
    dump_task, dump_at = record.steps[Step.DUMP].task_id, record.steps[Step.DUMP].at

    ops_stack.restart_s3()
    retried = regionvault_cli(ops_stack, "retry", backup_id, "--wait")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"backup {backup_id} resumed from step upload" in retried.stdout
    assert f"backup {backup_id} verified" in retried.stdout
    after = journal.get(backup_id)
    assert after is not None and after.state is BackupState.VERIFIED
    assert after.steps[Step.DUMP].task_id == dump_task and after.steps[Step.DUMP].at == dump_at
    log = (ops_stack.logs / "worker-au.log").read_text()
    assert log.count(f"step dump of backup {backup_id}") == 1


def _big_source(stack: DevStack) -> None:
    """~20 MiB in eu/accounts that zstd cannot shrink: the paced upload then takes seconds."""
    assert stack.postgres is not None
    db = sample.database_name(Domain.EU, "accounts")
    stack.postgres.execute(db, "CREATE TABLE IF NOT EXISTS blobs (b bytea)")
    if stack.postgres.execute(db, "SELECT count(*) FROM blobs") == [(0,)]:
        stack.postgres.execute(db, "INSERT INTO blobs SELECT decode(string_agg(md5(random()::"
                                   "text), ''), 'hex') FROM generate_series(1, 8192), "
                                   "generate_series(1, 160) AS r GROUP BY r")


def _start_big_upload(stack: DevStack) -> tuple[str, str, Any]:
    """Start a backup of the big source; return once its multipart upload is under way."""
    _big_source(stack)
    started = regionvault_cli(stack, "backup", "--domain", "eu", "--source", "accounts")
    assert started.returncode == 0, started.stderr
    backup_id = _backup_id(started.stdout)
    bucket = config_of(stack).domain(Domain.EU).s3_bucket
    s3 = s3_client(stack, "eu-central-1")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        if any(backup_id in u["Key"] for u in uploads):
            return backup_id, bucket, s3
        time.sleep(0.1)
    raise AssertionError("the upload never started")


def test_cancel_during_upload_leaves_nothing_behind(ops_stack: DevStack) -> None:
    backup_id, bucket, s3 = _start_big_upload(ops_stack)

    cancelled = regionvault_cli(ops_stack, "cancel", backup_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"backup {backup_id} cancelled" in cancelled.stdout

    time.sleep(1.0)  # anything still in flight would show up now
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    spool = config_of(ops_stack).spool_for(Domain.EU)
    assert not spool.joinpath(backup_id).exists()
    assert not [p for p in spool.rglob("*") if backup_id in str(p)]
    assert not any(backup_id in key for keys in object_names(ops_stack).values() for key in keys)
    record = _journal(ops_stack).get(backup_id)
    assert record is not None and record.state is BackupState.CANCELLED
    shown = regionvault_cli(ops_stack, "watch", backup_id, "--timeout", "5")
    assert shown.returncode == 1 and "cancelled" in shown.stdout


def test_worker_killed_during_upload_finishes_the_backup_once(ops_stack: DevStack) -> None:
    backup_id, bucket, s3 = _start_big_upload(ops_stack)
    worker = ops_stack.worker_processes[Domain.EU].pid
    children = Path(f"/proc/{worker}/task/{worker}/children").read_text().split()
    assert children, "the eu worker has no pool process"
    for pid in children:  # the pool process running the upload dies without a word
        os.kill(int(pid), signal.SIGKILL)

    # acks_late + reject_on_worker_lost: the message goes back to the queue, a new pool
    # process takes it, and upload starts again from the spool
    watched = regionvault_cli(ops_stack, "watch", backup_id, "--timeout", "180", timeout=200)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"backup {backup_id} verified" in watched.stdout
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    names = object_names(ops_stack)
    for store in (f"s3://{bucket}", f"gs://{config_of(ops_stack).domain(Domain.EU).gcs_bucket}"):
        mine = sorted(k for k in names[store] if backup_id in k)
        assert len(mine) == 2 and mine[1].endswith(".rvb"), mine
    assert not config_of(ops_stack).spool_for(Domain.EU).joinpath(backup_id).exists()
    log = (ops_stack.logs / "worker-eu.log").read_text()
    assert "SIGKILL" in log and "WorkerLostError" in log  # the kill did hit a running step
