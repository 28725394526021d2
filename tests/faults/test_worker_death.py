"""A worker dies while a step runs: the whole worker (main process and pool, as on node loss,
OOM or eviction), or only the pool process running the step. No operator acts; the backup
ends verified, once.

Cells marked ``faults_extended`` run in ``make test-faults``; the others in ``make test`` too.
"""

from __future__ import annotations

import pytest

from regionvault.manifest import STEPS, Step
from tests.faults.cells import assert_healed_once, backup_hit_during, wait_verified
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.stack, pytest.mark.faults]

IN_MAKE_TEST = {Step.ENCRYPT, Step.UPLOAD}


def _cells(smoke: set[Step]) -> list[object]:
    return [pytest.param(step, id=step.value,
                         marks=() if step in smoke else pytest.mark.faults_extended)
            for step in STEPS]


@pytest.mark.parametrize("step", _cells(IN_MAKE_TEST))
def test_whole_worker_killed_during_step(fault_stack: FaultStack, step: Step) -> None:
    backup_id, _ = backup_hit_during(fault_stack, step)
    fault_stack.kill_worker()  # main process and pool, then restarted like a supervisor would

    # the message stays unacknowledged in Redis for the visibility timeout (hours); the
    # reconciler sees the lease gone and resumes the backup from the step its state names
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id,
                       gcs_sessions=(1, 2) if step is Step.REPLICATE else (1,))


@pytest.mark.parametrize("step", _cells({Step.REPLICATE}))
def test_pool_process_killed_during_step(fault_stack: FaultStack, step: Step) -> None:
    backup_id, hit = backup_hit_during(fault_stack, step)
    fault_stack.kill_child(hit.pid)  # only the pool process that runs the step
    fault_stack.thaw()

    # acks_late + reject_on_worker_lost: the message comes back at once; its copy breaks the
    # dead process's lease (same host) and resumes the step
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id,
                       gcs_sessions=(1, 2) if step is Step.REPLICATE else (1,))
