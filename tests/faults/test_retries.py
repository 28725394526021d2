"""Operators acting at once: two `regionvault retry` runs racing, a Flower Retry racing a CLI
retry. Exactly one starts a chain; the other is refused with the id of the chain that runs.
Also: a permanent fault (the source database is gone) heals after exactly one retry once the
cause is removed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from regionvault.devstack import sample
from regionvault.journal import BackupState, StepState
from regionvault.manifest import Step
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


@contextmanager
def source_database_gone(stack: FaultStack) -> Iterator[None]:
    """The source database is renamed away (a permanent fault), then given back."""
    assert stack.postgres is not None
    name = sample.database_name(DOMAIN, SOURCE)
    stack.postgres.execute("postgres", f"ALTER DATABASE {name} RENAME TO {name}_away")
    try:
        yield
    finally:
        stack.postgres.execute("postgres", f"ALTER DATABASE {name}_away RENAME TO {name}")


def failed_backup(stack: FaultStack) -> str:
    with source_database_gone(stack):
        backup_id = start_backup(stack)
        record = wait_for(stack, backup_id, Step.DUMP, StepState.FAILED)
    assert record.state is BackupState.FAILED
    assert "does not exist" in record.error
    assert record.steps[Step.DUMP].detail.count("\n") == 0
    # a permanent error is not retried: one dump attempt, then failed
    log = (stack.logs / "worker-eu.log").read_text()
    assert sum(1 for line in log.splitlines()
               if backup_id in line and "Retry in" in line) == 0
    return backup_id


def cli(stack: FaultStack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(Path(sys.executable).parent / "regionvault"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **stack.env})


def test_a_permanent_fault_heals_after_exactly_one_retry(fault_stack: FaultStack) -> None:
    reset_counts(fault_stack)
    backup_id = failed_backup(fault_stack)  # the cause is removed when this returns
    retried = cli(fault_stack, "retry", backup_id)
    out, err = retried.communicate(timeout=60)
    assert retried.returncode == 0, out + err
    assert f"backup {backup_id} resumed from step dump" in out
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id)


def test_two_cli_retries_racing_start_one_chain(fault_stack: FaultStack) -> None:
    reset_counts(fault_stack)
    backup_id = failed_backup(fault_stack)
    racers = [cli(fault_stack, "retry", backup_id) for _ in range(2)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in racers]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 3], results
    winner = next(out for code, out, _ in results if code == 0)
    loser = next(err for code, _, err in results if code == 3)
    record = journal(fault_stack).get(backup_id)
    assert record is not None
    assert f"chain {record.chain_id}" in winner and f"chain {record.chain_id}" in " ".join(
        loser.split()), (winner, loser)
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id)
    assert journal(fault_stack).get(backup_id).run == 2  # type: ignore[union-attr]


def test_a_flower_retry_racing_a_cli_retry_starts_one_chain(fault_stack: FaultStack) -> None:
    # the tasks registered with the app, as Flower registers them at start-up (it imports the
    # app's `imports`); workers.flowerui no longer imports them as a side effect
    import tasks  # noqa: F401
    from workers.app import app
    from workers.flowerui.retry import RetryMarks, RetryRefused, retry_task

    reset_counts(fault_stack)
    backup_id = failed_backup(fault_stack)
    failed_task = journal(fault_stack).get(backup_id).steps[Step.DUMP].task_id  # type: ignore[union-attr]
    assert failed_task
    flower_outcome: list[object] = []

    def press_retry_in_flower() -> None:
        # what Flower's Retry button runs (workers/flowerui/handlers.py calls retry_task)
        try:
            flower_outcome.append(retry_task(app, failed_task, "operator",
                                             marks=RetryMarks.for_app(app),
                                             journal=journal(fault_stack)))
        except RetryRefused as refused:
            flower_outcome.append(refused)

    button = threading.Thread(target=press_retry_in_flower)
    command = cli(fault_stack, "retry", backup_id)
    button.start()
    code = command.wait(timeout=60)
    out, err = command.communicate()
    button.join(timeout=60)

    flower_won = not isinstance(flower_outcome[0], RetryRefused)
    assert flower_won == (code == 3), (flower_outcome, code, out, err)
    record = journal(fault_stack).get(backup_id)
    assert record is not None and record.run == 2
    if flower_won:
        assert f"chain {record.chain_id}" in " ".join(err.split())
    else:
        assert f"chain {record.chain_id}" in str(flower_outcome[0])
    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id)
