"""The spool is lost between steps (an emptyDir pod restarted, a disk replaced): the backup
resumes from the step that lost data names, with no operator. Without the dump, that is a
new snapshot under the same backup id (its manifest's created_at is that snapshot's time)."""

from __future__ import annotations

import shutil

import pytest

from regionvault.journal import StepState
from regionvault.manifest import STEPS, Step
from tests.faults.cells import (
    assert_healed_once,
    context,
    reset_counts,
    start_backup,
    wait_for,
    wait_verified,
)
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.stack, pytest.mark.faults]

BOUNDARIES = STEPS[:-1]  # the spool is lost as each of these steps finishes


@pytest.mark.parametrize("after", [
    pytest.param(s, id=f"after-{s.value}",
                 marks=() if s is Step.DUMP else pytest.mark.faults_extended)
    for s in BOUNDARIES])
def test_spool_lost_between_steps(fault_stack: FaultStack, after: Step) -> None:
    reset_counts(fault_stack)
    backup_id = start_backup(fault_stack)
    wait_for(fault_stack, backup_id, after, StepState.DONE)
    fault_stack.freeze()
    try:
        shutil.rmtree(context(fault_stack).spool.dir_for(backup_id), ignore_errors=True)
    finally:
        fault_stack.thaw()

    record = wait_verified(fault_stack, backup_id)
    # a dump that is gone before upload means a new snapshot: the upload still ran once
    assert_healed_once(fault_stack, backup_id)
    if after in (Step.DUMP, Step.ENCRYPT):
        assert record.resumes >= 1 or record.run >= 2
