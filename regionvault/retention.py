"""Retention policy as a pure function: which backups to keep and which to remove, and why.

No I/O here: the expire step lists manifests, calls ``apply_policy`` and carries out the
decision. Two rules meet here, in this order of precedence:

1. A backup past its data class's *hard limit* is removed, whatever else holds. For personal
   data that limit is the GDPR ceiling of 29 days: no exception keeps such a backup longer.
2. Otherwise the newest *verified* backup of a source is always kept, even past its retention,
   so a source whose recent backups failed still has one good copy.
3. Otherwise a backup older than its retention period is removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from regionvault.config import PII_MAX_RETENTION_DAYS, DataClass, RetentionConfig


@dataclass(frozen=True)
class BackupSummary:
    """What the policy needs to know about one backup."""

    backup_id: str
    source: str
    created_at: datetime
    verified: bool


@dataclass(frozen=True)
class RetentionPolicy:
    retention: timedelta
    #: age at which a backup is removed even if it is the newest verified one
    hard_limit: timedelta | None = None

    @classmethod
    def for_data_class(cls, data_class: DataClass, config: RetentionConfig) -> RetentionPolicy:
        hard = timedelta(days=PII_MAX_RETENTION_DAYS) if data_class is DataClass.PII else None
        return cls(retention=config.period_for(data_class), hard_limit=hard)


@dataclass(frozen=True)
class RetentionDecision:
    keep: tuple[str, ...]
    remove: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict)


def _days(period: timedelta) -> str:
    return f"{period.days} days" if period.days != 1 else "1 day"


def apply_policy(
    backups: Iterable[BackupSummary], policy: RetentionPolicy, now: datetime
) -> RetentionDecision:
    """Decide, for every backup, keep or remove, with a one-line reason each."""
    items = sorted(backups, key=lambda b: (b.created_at, b.backup_id))
    newest_verified: dict[str, str] = {}
    for b in items:
        if b.verified:
            newest_verified[b.source] = b.backup_id  # later items overwrite: newest wins

    keep: list[str] = []
    remove: list[str] = []
    reasons: dict[str, str] = {}
    for b in items:
        age = now - b.created_at
        if policy.hard_limit is not None and age >= policy.hard_limit:
            remove.append(b.backup_id)
            reasons[b.backup_id] = f"older than the hard limit of {_days(policy.hard_limit)}"
        elif newest_verified.get(b.source) == b.backup_id:
            keep.append(b.backup_id)
            reasons[b.backup_id] = "newest verified backup of its source"
        elif age >= policy.retention:
            remove.append(b.backup_id)
            reasons[b.backup_id] = f"older than the retention of {_days(policy.retention)}"
        else:
            keep.append(b.backup_id)
            reasons[b.backup_id] = f"within the retention of {_days(policy.retention)}"
    return RetentionDecision(keep=tuple(keep), remove=tuple(remove), reasons=reasons)
