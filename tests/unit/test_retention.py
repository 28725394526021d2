"""apply_policy against a table of cases: hard limit first, then newest verified, then retention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from regionvault.config import DataClass, RetentionConfig
from regionvault.retention import BackupSummary, RetentionPolicy, apply_policy

NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
METADATA = RetentionPolicy.for_data_class(DataClass.METADATA, RetentionConfig(metadata_days=365))
PII = RetentionPolicy.for_data_class(DataClass.PII, RetentionConfig(pii_days=7))


@dataclass(frozen=True)
class B:
    """A row of a case: backup id, source, age in days, verified."""

    id: str
    source: str
    age_days: float
    verified: bool = True

    def summary(self) -> BackupSummary:
        return BackupSummary(backup_id=self.id, source=self.source,
                             created_at=NOW - timedelta(days=self.age_days),
                             verified=self.verified)


@dataclass(frozen=True)
class Case:
    policy: RetentionPolicy
    backups: tuple[B, ...]
    keep: frozenset[str]
    #: backup id -> a word its reason must contain
    reasons: dict[str, str]


CASES = {
    "empty": Case(METADATA, (), frozenset(), {}),
    "metadata-within-retention": Case(
        METADATA, (B("m1", "cat", 30), B("m2", "cat", 10)), frozenset({"m1", "m2"}),
        {"m1": "within", "m2": "newest verified"}),
    "metadata-after-retention": Case(
        METADATA, (B("m1", "cat", 400), B("m2", "cat", 10)), frozenset({"m2"}),
        {"m1": "retention of 365 days"}),
    "metadata-newest-verified-kept-past-retention": Case(
        METADATA, (B("m1", "cat", 500), B("m2", "cat", 400)), frozenset({"m2"}),
        {"m1": "retention", "m2": "newest verified"}),
    "pii-newest-verified-kept-past-retention-within-hard-limit": Case(
        PII, (B("p1", "acc", 20), B("p2", "acc", 10)), frozenset({"p2"}),
        {"p1": "retention of 7 days", "p2": "newest verified"}),
    "pii-newest-verified-past-29-days-removed": Case(
        PII, (B("p1", "acc", 40), B("p2", "acc", 30)), frozenset(),
        {"p1": "hard limit of 29 days", "p2": "hard limit of 29 days"}),
    "pii-hard-limit-exact-boundary": Case(
        PII, (B("p1", "acc", 29),), frozenset(), {"p1": "hard limit"}),
    "pii-just-inside-hard-limit-newest-verified": Case(
        PII, (B("p1", "acc", 28.99),), frozenset({"p1"}), {"p1": "newest verified"}),
    "unverified-newest-does-not-protect": Case(
        METADATA, (B("m1", "cat", 420), B("m2", "cat", 400, verified=False),
                   B("m3", "cat", 380, verified=False)),
        frozenset({"m1"}), {"m1": "newest verified", "m2": "retention", "m3": "retention"}),
    "unverified-within-retention-kept": Case(
        METADATA, (B("m1", "cat", 420), B("m2", "cat", 1, verified=False)),
        frozenset({"m1", "m2"}), {"m1": "newest verified", "m2": "within"}),
    "nothing-verified-all-old-removed": Case(
        METADATA, (B("m1", "cat", 420, verified=False), B("m2", "cat", 400, verified=False)),
        frozenset(), {"m1": "retention", "m2": "retention"}),
    "sources-judged-independently": Case(
        METADATA, (B("a1", "alpha", 500), B("a2", "alpha", 10), B("b1", "beta", 450),
                   B("b2", "beta", 400, verified=False)),
        frozenset({"a2", "b1"}),
        {"a1": "retention", "a2": "newest verified", "b1": "newest verified",
         "b2": "retention"}),
    "exact-retention-boundary-removed": Case(
        METADATA, (B("m1", "cat", 365), B("m2", "cat", 364.99), B("m3", "cat", 1)),
        frozenset({"m2", "m3"}), {"m1": "retention of 365 days", "m2": "within"}),
    "input-order-does-not-matter": Case(
        METADATA, (B("m3", "cat", 400), B("m1", "cat", 500), B("m2", "cat", 450)),
        frozenset({"m3"}), {"m3": "newest verified", "m1": "retention", "m2": "retention"}),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_apply_policy(case: Case) -> None:
    decision = apply_policy([b.summary() for b in case.backups], case.policy, NOW)
    every = {b.id for b in case.backups}
    assert set(decision.keep) == case.keep
    assert set(decision.remove) == every - case.keep
    assert not set(decision.keep) & set(decision.remove)
    assert len(decision.keep) + len(decision.remove) == len(every)  # no id decided twice
    assert set(decision.reasons) == every
    assert all(reason.strip() for reason in decision.reasons.values())
    for backup_id, word in case.reasons.items():
        assert word in decision.reasons[backup_id]


def test_pii_policy_is_capped_by_the_gdpr_ceiling() -> None:
    assert PII.hard_limit == timedelta(days=29)
    assert PII.retention == timedelta(days=7)
    assert METADATA.hard_limit is None


def test_apply_policy_accepts_a_generator() -> None:
    rows = (B(f"m{i}", "cat", 400 + i).summary() for i in range(3))
    decision = apply_policy(rows, METADATA, NOW)
    assert decision.keep == ("m0",)
    assert set(decision.remove) == {"m1", "m2"}
