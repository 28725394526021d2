"""Freshness is a pure function of the last verified backup, the last failure and the RPO."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from regionvault.status import EXIT_CODES, Freshness, assess, worst

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
RPO = timedelta(hours=26)
H = timedelta(hours=1)


@pytest.mark.parametrize(("verified", "failure", "expected"), [
    (NOW - 2 * H, None, Freshness.FRESH),
    (NOW - 26 * H, None, Freshness.FRESH),                 # exactly at the RPO: still fresh
    (NOW - 27 * H, None, Freshness.LATE),
    (None, None, Freshness.LATE),                          # never backed up
    (NOW - 2 * H, NOW - 1 * H, Freshness.FAILING),         # the latest attempt failed
    (NOW - 1 * H, NOW - 2 * H, Freshness.FRESH),           # a failure since fixed
    (None, NOW - 1 * H, Freshness.FAILING),
    (NOW - 40 * H, NOW - 30 * H, Freshness.FAILING),       # failing beats late: says why
], ids=["recent", "at-rpo", "past-rpo", "never", "failed-after", "fixed", "only-failures",
        "late-and-failing"])
def test_assess(verified: datetime | None, failure: datetime | None,
                expected: Freshness) -> None:
    assert assess(verified, failure, RPO, NOW) is expected


def test_worst_state_decides_the_exit_code() -> None:
    assert EXIT_CODES[worst([Freshness.FRESH, Freshness.FRESH])] == 0
    assert EXIT_CODES[worst([Freshness.FRESH, Freshness.LATE])] == 3
    assert EXIT_CODES[worst([Freshness.LATE, Freshness.FAILING, Freshness.FRESH])] == 4
