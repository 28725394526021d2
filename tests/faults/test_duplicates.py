"""A step delivered twice while the first copy runs (a redelivery after a visibility
timeout, a duplicate send): the copy waits or steps aside; it never harms the live copy,
never aborts its upload, and never fails the backup."""

from __future__ import annotations

import pytest

from regionvault.journal import StepState
from regionvault.manifest import STEPS, Step
from tests.faults.cells import (
    DOMAIN,
    SOURCE,
    assert_healed_once,
    journal,
    reset_counts,
    start_backup,
    wait_for,
    wait_verified,
)
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.stack, pytest.mark.faults]


@pytest.mark.parametrize("step", [
    pytest.param(s, id=s.value, marks=() if s is Step.UPLOAD else pytest.mark.faults_extended)
    for s in STEPS])
def test_step_delivered_twice_while_it_runs(fault_stack: FaultStack, step: Step) -> None:
    from workers.canvas import send_step

    reset_counts(fault_stack)
    backup_id = start_backup(fault_stack)
    running = wait_for(fault_stack, backup_id, step, StepState.RUNNING)
    # the same message again, same run: the worker's second pool process takes it at once
    duplicate = send_step(step, backup_id, DOMAIN.value, SOURCE, run=running.run)

    record = wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id)  # one upload started, one session to GCS
    assert record.steps[step].task_id != duplicate or record.state.value == "verified"
    notes = "\n".join(journal(fault_stack).get(backup_id).notes)  # type: ignore[union-attr]
    log = (fault_stack.logs / "worker-eu.log").read_text()
    # the copy either stepped aside while the owner ran, or ran after it and found the work
    # done, without sending the rest of the chain a second time
    assert f"a duplicate {step.value} (task {duplicate}) stepped aside" in notes or (
        f"{duplicate}] succeeded" in log and "(already done)" in log), notes
    assert f"{step.value} of backup {backup_id}" not in _failures(log, backup_id)


def _failures(log: str, backup_id: str) -> str:
    return "\n".join(line for line in log.splitlines()
                     if backup_id in line and ("ERROR" in line or "raised" in line))
