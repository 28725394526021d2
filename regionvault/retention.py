"""Retention policy as a pure function: which backups to keep and which to remove, and why.

No I/O here: the expire step lists manifests, calls ``apply_policy`` and carries out the
decision. Two rules meet here, in this order of precedence:

1. A backup past its data class's *hard limit* is removed, whatever else holds. For personal
   data that limit is the GDPR ceiling of 29 days: no exception keeps such a backup longer.
2. Otherwise the newest *verified* backup of a source is always kept, even past its retention,
   so a source whose recent backups failed still has one good copy.
3. Otherwise a backup older than its retention period is removed.

``decide_expiry`` is the rule of the expiry sweep (``regionvault.expiry``), which judges every
copy a store holds, one store at a time: pii past ``RetentionConfig.pii_cutoff`` (the ceiling
less the sweep's margin) is removed even when it is the newest verified backup; only metadata
keeps its newest verified backup past its retention.
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


# --- the expiry sweep's decision (``regionvault.expiry``) --------------------------------------
#
# The sweep judges every backup it finds in one store, configured or not, by rules that do not
# trust what a manifest says more than they must: the data class is the strictest of what the
# key prefix, the manifest and the configuration say (pii when any is unknown), and a backup's
# age is measured from the earlier of the manifest's ``created_at`` and the store's own
# timestamp, so a ``created_at`` moved forward never makes a backup younger.


def strictest(*classes: DataClass | None) -> DataClass:
    """The data class whose rule removes soonest; pii when any class is unknown (None)."""
    if not classes or any(c is None or c is DataClass.PII for c in classes):
        return DataClass.PII
    return DataClass.METADATA


@dataclass(frozen=True)
class StoredCopy:
    """One backup as one store holds it (object and manifest): what ``decide_expiry`` needs."""

    #: the key without its suffix: names the backup within the store
    name: str
    #: the source named by the key; None when the key does not follow the layout
    source: str | None
    #: the strictest of key prefix, manifest and configuration (see ``strictest``)
    data_class: DataClass
    #: when the store says the object (or, without one, the manifest) was written
    store_time: datetime | None
    #: from the manifest; None without a readable manifest
    created_at: datetime | None = None
    verified: bool = False
    #: why the copy is quarantined (no manifest, a malformed or forged one); None if it is not
    quarantined: str | None = None

    @property
    def born(self) -> datetime | None:
        """When its data was taken, never later than the store says it was written."""
        if self.quarantined is not None or self.created_at is None:
            return self.store_time
        if self.store_time is None:
            return self.created_at
        return min(self.created_at, self.store_time)

    @property
    def rule(self) -> DataClass:
        """The rule it is judged by: a quarantined copy gets the strictest."""
        return DataClass.PII if self.quarantined is not None else self.data_class


@dataclass(frozen=True)
class ExpiryRules:
    #: age at which a pii (or quarantined) copy is removed, newest verified or not
    pii_cutoff: timedelta
    #: age at which a metadata copy is removed, unless it is its source's newest verified one
    metadata_retention: timedelta

    @classmethod
    def from_config(cls, config: RetentionConfig) -> ExpiryRules:
        return cls(pii_cutoff=config.pii_cutoff(),
                   metadata_retention=config.period_for(DataClass.METADATA))


def _age(period: timedelta) -> str:
    hours = round(period.total_seconds() / 3600)
    days, hours = divmod(hours, 24)
    return _days(timedelta(days=days)) + (f" {hours} h" if hours else "")


def decide_expiry(copies: Iterable[StoredCopy], rules: ExpiryRules,
                  now: datetime) -> RetentionDecision:
    """Keep or remove each copy of one store, with a one-line reason each (pure).

    1. A copy whose age is unknown (no store timestamp, no manifest) is kept and says so.
    2. pii and quarantined copies older than the pii cutoff are removed, whatever else holds.
    3. The newest verified metadata copy of a source is kept, however old.
    4. Other metadata copies older than the metadata retention are removed.
    """
    items = sorted(copies, key=lambda c: (c.born or now, c.name))
    newest_verified: dict[str, str] = {}
    for c in items:
        if c.rule is DataClass.METADATA and c.verified and c.source is not None:
            newest_verified[c.source] = c.name  # later items overwrite: newest wins

    keep: list[str] = []
    remove: list[str] = []
    reasons: dict[str, str] = {}
    for c in items:
        born = c.born
        if born is None:
            keep.append(c.name)
            reasons[c.name] = "its age is unknown (the store reports no time): kept, reported"
            continue
        age = now - born
        if c.rule is DataClass.PII:
            what = f"quarantined ({c.quarantined}), judged as pii" if c.quarantined else "pii"
            if age >= rules.pii_cutoff:
                remove.append(c.name)
                reasons[c.name] = f"{what}, older than the pii cutoff of {_age(rules.pii_cutoff)}"
            else:
                keep.append(c.name)
                reasons[c.name] = f"{what}, within the pii cutoff of {_age(rules.pii_cutoff)}"
        elif c.source is not None and newest_verified.get(c.source) == c.name:
            keep.append(c.name)
            reasons[c.name] = "newest verified metadata backup of its source"
        elif age >= rules.metadata_retention:
            remove.append(c.name)
            reasons[c.name] = f"older than the retention of {_days(rules.metadata_retention)}"
        else:
            keep.append(c.name)
            reasons[c.name] = f"within the retention of {_days(rules.metadata_retention)}"
    return RetentionDecision(keep=tuple(keep), remove=tuple(remove), reasons=reasons)
