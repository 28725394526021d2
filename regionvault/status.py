"""Freshness of a source's backups, as a pure function: fresh, late or failing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Freshness(StrEnum):
    FRESH = "fresh"
    LATE = "late"
    FAILING = "failing"


#: process exit codes of `regionvault status`: the worst state found decides
EXIT_CODES = {Freshness.FRESH: 0, Freshness.LATE: 3, Freshness.FAILING: 4}


@dataclass(frozen=True)
class SourceStatus:
    domain: str
    source: str
    rpo: timedelta
    state: Freshness
    last_verified_id: str | None = None
    last_verified_at: datetime | None = None
    age: timedelta | None = None
    last_failure_id: str | None = None
    last_failure_step: str | None = None
    last_failure_error: str | None = None
    last_failure_at: datetime | None = None


def assess(last_verified_at: datetime | None, last_failure_at: datetime | None,
           rpo: timedelta, now: datetime) -> Freshness:
    """Failing: the latest attempt failed after the last verified backup (or there is none).
    Late: no verified backup younger than the RPO. Fresh: otherwise."""
    if last_failure_at is not None and (last_verified_at is None
                                        or last_failure_at > last_verified_at):
        return Freshness.FAILING
    if last_verified_at is None or now - last_verified_at > rpo:
        return Freshness.LATE
    return Freshness.FRESH


def worst(states: list[Freshness]) -> Freshness:
    if Freshness.FAILING in states:
        return Freshness.FAILING
    if Freshness.LATE in states:
        return Freshness.LATE
    return Freshness.FRESH
