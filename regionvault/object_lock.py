"""Immutable copies: until when a backup object is locked in its store, and what a bucket's
lock settings lack (pure; no I/O).

A domain with ``object_lock`` set has every backup object written locked (S3 Object Lock,
GCS object retention) so that a stolen credential cannot delete a backup before its time. A
lock that outlived the backup's removal would keep personal data past the 29-day ceiling,
which is why it ends at the first moment anything is due to remove the backup, never later:

- the expiry sweep (``regionvault.expiry``): it removes a backup once its age reaches its
  class's cutoff (``retention.decide_expiry`` with ``ExpiryRules``: ``pii_cutoff`` for pii,
  the metadata retention for metadata), the age counted from ``created_at`` (or the store's
  earlier timestamp);
- for pii, also the bucket's own lifecycle backstop (``regionvault.provision``): it deletes
  personal data ``backstop_pii_days`` days after it was written (on a versioned bucket, which
  Object Lock needs, that is the current version's days plus a day as a noncurrent version).
  A version still locked when that rule fires is skipped by the cloud until a later run, which
  could carry it past the ceiling if nothing else removed it; ending the lock no later than the
  rule keeps the backstop on time. This only matters with ``pii_days`` 29, where the sweep's
  cutoff (the ceiling less its margin) comes after the backstop's 28 days.

Only backup objects get a retain-until date. Manifests are never locked (they are rewritten
as the chain proceeds and by erasure), and the bucket holds no default retention rule.
Erasure destroys the backup's data key, not its bytes, so it works on a locked object.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from regionvault.config import PII_MAX_RETENTION_DAYS, DataClass, ObjectLockConfig, RetentionConfig
from regionvault.retention import ExpiryRules


def backstop_pii_days(retention: RetentionConfig) -> int:
    """The days after which the buckets' lifecycle rules delete personal data.

    ``retention.pii_days``, but at most a day under the 29-day ceiling: the clouds apply
    lifecycle rules up to a day late (S3 rounds up to the next midnight UTC)."""
    return min(retention.pii_days, PII_MAX_RETENTION_DAYS - 1)


def sweep_due(created_at: datetime, data_class: DataClass, retention: RetentionConfig) -> datetime:
    """The moment the expiry sweep's rule removes a backup created at ``created_at``: from then
    on ``decide_expiry`` says remove (the newest verified metadata backup of a source excepted,
    which the sweep keeps longer, unlocked)."""
    rules = ExpiryRules.from_config(retention)
    age = rules.pii_cutoff if data_class is DataClass.PII else rules.metadata_retention
    return created_at + age


def retain_until(created_at: datetime, data_class: DataClass,
                 retention: RetentionConfig) -> datetime:
    """Until when the backup object created at ``created_at`` is locked: the sweep's due time
    (``sweep_due``) and, for pii, no later than the lifecycle backstop (``backstop_pii_days``).

    ``data_class`` is the backup's own (its manifest's, which its key prefix repeats). The
    stores lock to the whole second at or before this moment. Raises ``ValueError`` for a
    naive ``created_at``."""
    if created_at.tzinfo is None or created_at.utcoffset() is None:
        raise ValueError(f"created_at {created_at.isoformat()} has no time zone; a lock's "
                         "date must be an aware (UTC) time")
    due = sweep_due(created_at, data_class, retention)
    if data_class is DataClass.PII:
        due = min(due, created_at + timedelta(days=backstop_pii_days(retention)))
    return due


# --- a bucket's lock settings against the configuration ---------------------------------------


@dataclass(frozen=True)
class LockProblem:
    """One way a bucket's lock settings fall short: a sentence naming the bucket and the fix."""

    #: "not-enabled" (configured, the bucket cannot lock objects), "not-versioned",
    #: "default-retention" (the bucket locks every object it is given, manifests too)
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


def lock_problems(configured: ObjectLockConfig | None, *, url: str, domain: str,
                  versioned: bool, lock_enabled: bool,
                  default_retention: str | None) -> list[LockProblem]:
    """What the bucket at ``url`` lacks for the domain's ``object_lock`` setting. Pure.

    A bucket that can lock while the domain does not ask for it is fine (nothing is locked);
    a default retention rule is always a problem: it would lock manifests, and by a period
    regionvault does not choose, possibly past the ceiling."""
    fix = f"run `regionvault provision --domain {domain}`"
    problems: list[LockProblem] = []
    if configured is not None and not lock_enabled:
        problems.append(LockProblem(
            "not-enabled",
            f"{url}: object lock ({configured.mode} mode) is configured for domain {domain} but "
            f"the bucket cannot lock objects (object lock is not enabled on it), so backups "
            f"are written unprotected or refused; {fix}"))
    if configured is not None and lock_enabled and not versioned and url.startswith("s3://"):
        problems.append(LockProblem(
            "not-versioned",
            f"{url}: object lock is enabled but versioning is not, which S3 requires for it; "
            f"{fix}"))
    if default_retention is not None:
        problems.append(LockProblem(
            "default-retention",
            f"{url}: the bucket's object lock has a default retention rule ({default_retention})"
            ", which locks every object written, manifests too (they must stay rewritable), "
            f"for a period regionvault does not choose; {fix} (it removes the rule)"))
    return problems
