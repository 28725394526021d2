"""Schedule slots: which scheduled run a moment belongs to, and that run's backup id."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from croniter import croniter

from regionvault.domains import Domain


def slot_of(schedule: str, now: datetime) -> datetime:
    """The newest time at or before ``now`` that the cron ``schedule`` (UTC) names."""
    now = now.astimezone(UTC)
    if croniter.match(schedule, now.replace(second=0, microsecond=0)):
        return now.replace(second=0, microsecond=0)
    previous: datetime = croniter(schedule, now).get_prev(datetime)
    return previous.astimezone(UTC)


def slot_backup_id(domain: Domain, source: str, slot: datetime) -> str:
    """The backup id of a source's scheduled run for ``slot``: the same for every beat, every
    redelivery and every worker, so one slot gives one backup."""
    stamp = slot.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    nonce = hashlib.sha256(f"{domain.value}/{source}/{stamp}".encode()).hexdigest()[:8]
    return f"{domain.value}.{source}.{stamp}.{nonce}"
