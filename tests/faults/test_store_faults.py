"""S3 or GCS misbehaves while the backup is being sent there: refuses connections, answers
503, hangs, or resets mid-transfer. The outage passes; no operator acts."""

from __future__ import annotations

import time

import pytest

from regionvault.journal import StepState
from regionvault.manifest import Step
from tests.faults.cells import (
    assert_healed_once,
    reset_counts,
    start_backup,
    wait_for,
    wait_verified,
)
from tests.faults.conftest import MIB, FaultStack
from tests.faults.proxy import Mode

pytestmark = [pytest.mark.stack, pytest.mark.faults]

OUTAGE_SECONDS = 4.0
MODES = ("refuse", "503", "hang", "reset")
IN_MAKE_TEST = {("s3", "reset"), ("gcs", "503")}


def _cells() -> list[object]:
    return [pytest.param(store, mode, id=f"{store}-{mode}",
                         marks=() if (store, mode) in IN_MAKE_TEST
                         else pytest.mark.faults_extended)
            for store in ("s3", "gcs") for mode in MODES]


@pytest.mark.parametrize(("store", "mode"), _cells())
def test_store_fault_while_sending(fault_stack: FaultStack, store: str, mode: str) -> None:
    proxy = fault_stack.s3_proxy if store == "s3" else fault_stack.gcs_proxy
    assert proxy is not None
    step = Step.UPLOAD if store == "s3" else Step.REPLICATE
    reset_counts(fault_stack)
    backup_id = start_backup(fault_stack)
    wait_for(fault_stack, backup_id, step, StepState.RUNNING)
    time.sleep(0.3)  # a part or two on the wire
    if mode == "reset":
        proxy.reset_after(1 * MIB)  # the connection carrying the data dies mid-transfer
        time.sleep(OUTAGE_SECONDS)
    else:
        proxy.set_mode({"refuse": Mode.REFUSE, "503": Mode.HTTP_503, "hang": Mode.HANG}[mode])
        time.sleep(OUTAGE_SECONDS)
        proxy.set_mode(Mode.PASS)

    # one retry layer: the step fails with a transient error, Celery retries it with backoff,
    # and the retry resumes (S3: from the parts already stored)
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id,
                       gcs_sessions=(1, 2) if store == "gcs" else (1,))
