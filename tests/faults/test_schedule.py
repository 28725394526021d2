"""Beat's backup_domain delivered twice for one slot (two beats, a restart inside the
minute, a redelivered fan-out): one chain per source."""

from __future__ import annotations

import pytest

from regionvault.schedule import slot_backup_id
from tests.faults.cells import DOMAIN, SOURCE, assert_healed_once, reset_counts, wait_verified
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.stack, pytest.mark.faults]


def test_backup_domain_twice_for_one_slot_starts_one_chain(fault_stack: FaultStack) -> None:
    from datetime import UTC, datetime

    from tasks.backup_domain import backup_domain

    reset_counts(fault_stack)
    slot = datetime.now(UTC).replace(second=0, microsecond=0).isoformat()
    first = backup_domain.apply_async(kwargs={"domain": DOMAIN.value, "slot": slot})
    second = backup_domain.apply_async(kwargs={"domain": DOMAIN.value, "slot": slot})
    answers = [first.get(timeout=60), second.get(timeout=60)]
    backup_id = slot_backup_id(DOMAIN, SOURCE, datetime.fromisoformat(slot))
    started = sorted(entry["started"] for answer in answers for entry in answer)
    assert started == ["already started", "yes"], answers
    assert {entry["backup_id"] for answer in answers for entry in answer} == {backup_id}

    wait_verified(fault_stack, backup_id)
    assert_healed_once(fault_stack, backup_id)
