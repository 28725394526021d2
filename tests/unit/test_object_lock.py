"""Immutable copies as pure policy: until when a backup is locked (``retain_until``), and what a
bucket's lock settings lack (``lock_problems``); plus the lock date a store's write carries
(``stores.streams.lock_date``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from regionvault.config import PII_MAX_RETENTION_DAYS, DataClass, ObjectLockConfig, RetentionConfig
from regionvault.object_lock import backstop_pii_days, lock_problems, retain_until, sweep_due
from regionvault.retention import ExpiryRules, StoredCopy, decide_expiry
from regionvault.stores.streams import lock_date

CREATED = datetime(2026, 11, 1, 2, 0, 7, 250000, tzinfo=UTC)
CEILING = timedelta(days=PII_MAX_RETENTION_DAYS)
MICROSECOND = timedelta(microseconds=1)

# Every pii_days, with the margins the configuration allows at their extremes (the sweep
# interval at least 60 s, interval plus allowance at most a day).
MARGINS = [(3600, 3600), (60, 0), (86400, 0), (60, 86340), (3600, 82800), (43200, 43200)]
RETENTIONS = [RetentionConfig(pii_days=days, sweep_interval_seconds=interval,
                              deletion_allowance_seconds=allowance)
              for days in (1, 2, 7, 27, 28, 29) for interval, allowance in MARGINS]


def ids(retention: RetentionConfig) -> str:
    return (f"pii{retention.pii_days}-i{retention.sweep_interval_seconds}"
            f"-a{retention.deletion_allowance_seconds}")


def judged(data_class: DataClass, retention: RetentionConfig, now: datetime) -> str:
    """What the expiry sweep decides for a backup created at CREATED, as of ``now``."""
    copy = StoredCopy(name="eu/x/backup", source="accounts", data_class=data_class,
                      store_time=CREATED + timedelta(seconds=3), created_at=CREATED)
    decision = decide_expiry([copy], ExpiryRules.from_config(retention), now)
    return "remove" if decision.remove else "keep"


@pytest.mark.parametrize("retention", RETENTIONS, ids=ids)
def test_a_pii_lock_never_outlasts_the_ceiling(retention: RetentionConfig) -> None:
    until = retain_until(CREATED, DataClass.PII, retention)
    assert until <= CREATED + CEILING
    # nor the lifecycle backstop (28 days at most), nor the sweep
    assert until <= CREATED + timedelta(days=backstop_pii_days(retention))
    assert until <= sweep_due(CREATED, DataClass.PII, retention)
    assert until <= CREATED + timedelta(days=retention.pii_days)


@pytest.mark.parametrize("retention", RETENTIONS, ids=ids)
def test_the_lock_ends_when_the_sweep_removes_the_backup(retention: RetentionConfig) -> None:
    """The sweep removes a backup from its due time on; the lock ends then, never after (and,
    for pii_days 29, at the lifecycle backstop's 28 days, before the sweep's cutoff)."""
    until = retain_until(CREATED, DataClass.PII, retention)
    due = sweep_due(CREATED, DataClass.PII, retention)
    assert judged(DataClass.PII, retention, due) == "remove"
    assert judged(DataClass.PII, retention, due - MICROSECOND) == "keep"
    if retention.pii_days <= PII_MAX_RETENTION_DAYS - 1:
        assert until == due
    else:
        assert until == CREATED + timedelta(days=PII_MAX_RETENTION_DAYS - 1) <= due


@pytest.mark.parametrize("metadata_days", [1, 30, 365, 3650])
def test_a_metadata_lock_ends_when_the_sweep_removes_it(metadata_days: int) -> None:
    retention = RetentionConfig(metadata_days=metadata_days)
    until = retain_until(CREATED, DataClass.METADATA, retention)
    assert until == CREATED + timedelta(days=metadata_days)
    assert judged(DataClass.METADATA, retention, until) == "remove"
    assert judged(DataClass.METADATA, retention, until - MICROSECOND) == "keep"


def test_the_default_configuration() -> None:
    retention = RetentionConfig()  # pii_days 29, an hourly sweep, an hour's allowance
    assert sweep_due(CREATED, DataClass.PII, retention) == CREATED + CEILING - timedelta(hours=2)
    assert retain_until(CREATED, DataClass.PII, retention) == CREATED + timedelta(days=28)


def test_a_naive_creation_time_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        retain_until(datetime(2026, 11, 1), DataClass.PII, RetentionConfig())


# --- the date a write carries ----------------------------------------------------------------


NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_lock_date_is_cut_to_the_whole_second_before() -> None:
    asked = datetime(2026, 11, 29, 12, 0, 59, 999999, tzinfo=UTC)
    assert lock_date("governance", asked, NOW) == datetime(2026, 11, 29, 12, 0, 59, tzinfo=UTC)


def test_lock_date_is_given_in_utc() -> None:
    asked = datetime(2026, 11, 29, 14, 0, tzinfo=timezone(timedelta(hours=1)))
    given = lock_date("compliance", asked, NOW)
    assert given == datetime(2026, 11, 29, 13, 0, tzinfo=UTC)
    assert given is not None and given.tzinfo is UTC


@pytest.mark.parametrize(("mode", "asked"), [
    (None, NOW + timedelta(days=1)),        # no lock configured
    ("governance", None),                   # no date given
    ("governance", NOW),                    # not after now: nothing to lock
    ("governance", NOW - timedelta(days=1)),
    ("governance", NOW + timedelta(microseconds=500)),  # cut to now
])
def test_no_lock_date(mode: str | None, asked: datetime | None) -> None:
    assert lock_date(mode, asked, NOW) is None


def test_lock_date_refuses_a_naive_date() -> None:
    with pytest.raises(ValueError, match="time zone"):
        lock_date("governance", datetime(2030, 1, 1), NOW)


# --- a bucket's settings -------------------------------------------------------------------


GOVERNANCE = ObjectLockConfig(mode="governance")


def problems(configured: ObjectLockConfig | None, url: str = "s3://rv-eu-primary", *,
             versioned: bool = True, enabled: bool = True,
             default: str | None = None) -> list[tuple[str, str]]:
    return [(p.kind, p.message) for p in lock_problems(
        configured, url=url, domain="eu", versioned=versioned, lock_enabled=enabled,
        default_retention=default)]


def test_a_bucket_that_locks_as_configured_has_no_problem() -> None:
    assert problems(GOVERNANCE) == []
    assert problems(None, enabled=False, versioned=False) == []  # no lock asked, none held
    assert problems(None) == []  # a bucket that could lock, where nothing is asked: fine


def test_a_configured_lock_the_bucket_cannot_hold_is_named() -> None:
    [(kind, message)] = problems(GOVERNANCE, enabled=False)
    assert kind == "not-enabled"
    assert message.startswith("s3://rv-eu-primary: object lock (governance mode) is "
                              "configured for domain eu but the bucket cannot lock objects")
    assert message.endswith("run `regionvault provision --domain eu`")
    [(kind, _)] = problems(GOVERNANCE, enabled=True, versioned=False)
    assert kind == "not-versioned"
    # GCS object retention does not need versioning
    assert problems(GOVERNANCE, "gs://rv-eu-replica", versioned=False) == []


def test_a_default_retention_rule_is_always_a_problem() -> None:
    for configured in (GOVERNANCE, None):
        [(kind, message)] = problems(configured, default="COMPLIANCE 400 days")
        assert kind == "default-retention"
        assert "(COMPLIANCE 400 days)" in message and "manifests too" in message
