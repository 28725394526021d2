"""A step delivered twice while the first copy runs (a redelivery after a visibility
timeout, a duplicate send): the copy waits or steps aside; it never harms the live copy,
never aborts its upload, and never fails the backup."""

from __future__ import annotations

import pytest

from regionvault.manifest import STEPS, Step
from tests.faults.cells import (
    DOMAIN,
    SOURCE,
    assert_healed_once,
    catch_running,
    journal,
    reset_counts,
    start_backup,
    wait_verified,
)
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.stack, pytest.mark.faults]


@pytest.mark.parametrize("step", [
    pytest.param(s, id=s.value, marks=() if s is Step.UPLOAD else pytest.mark.faults_extended)
    for s in STEPS])
def test_step_delivered_twice_while_it_runs(fault_stack: FaultStack, step: Step) -> None:
    from workers.canvas import send_step

    # A short step (dump of the fault stack's source takes a fraction of a second) can finish
    # between two polls on a loaded machine: that backup is let finish and another is aimed
    # at; the cell never passes without the duplicate sent while the step ran.
    for _ in range(3):
        reset_counts(fault_stack)
        backup_id = start_backup(fault_stack)
        running = catch_running(fault_stack, backup_id, step)
        if running is not None:
            break
        wait_verified(fault_stack, backup_id)
    else:
        raise AssertionError(f"3 backups in a row finished {step.value} before a poll saw it")
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
