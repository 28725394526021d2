"""The broker dies and comes back, mid-step or at a step boundary, with its data (AOF) or
without (everything in it lost: queues, journal, leases). No operator acts."""

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
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.stack, pytest.mark.faults]


@pytest.mark.parametrize("keep_data", [
    pytest.param(True, id="with-persistence", marks=pytest.mark.faults_extended),
    pytest.param(False, id="without-persistence"),
])
def test_broker_restarted_mid_upload(fault_stack: FaultStack, keep_data: bool) -> None:
    reset_counts(fault_stack)
    backup_id = start_backup(fault_stack)
    wait_for(fault_stack, backup_id, Step.UPLOAD, StepState.RUNNING)
    fault_stack.restart_broker(keep_data=keep_data)

    # with persistence the owner renews its lease and goes on; without, its lease is gone, it
    # stops at its next chunk, and the reconciler finds the backup in the spool and resumes
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id)


@pytest.mark.parametrize("keep_data", [
    pytest.param(True, id="with-persistence"),
    pytest.param(False, id="without-persistence", marks=pytest.mark.faults_extended),
])
def test_broker_killed_at_the_upload_replicate_boundary(fault_stack: FaultStack,
                                                        keep_data: bool) -> None:
    reset_counts(fault_stack)
    backup_id = start_backup(fault_stack)
    wait_for(fault_stack, backup_id, Step.UPLOAD, StepState.DONE)
    # upload is done and is handing over (or has just handed over) to replicate
    assert fault_stack.redis is not None
    fault_stack.redis.process.stop(timeout=10)
    time.sleep(2.0)
    fault_stack.restart_broker(keep_data=keep_data)

    # whatever the hand-over managed (sent, lost with the broker's data, or never sent), the
    # backup goes on from replicate: upload is never repeated
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id)
