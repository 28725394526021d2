"""The expiry sweep's rules as tables: ``decide_expiry``, ``strictest``, ``parse_key`` and the
effective pii cutoff. Pure: no stores, no clock but ``NOW``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from regionvault.config import DataClass, RetentionConfig
from regionvault.domains import Domain
from regionvault.expiry import parse_key
from regionvault.retention import ExpiryRules, StoredCopy, decide_expiry, strictest

NOW = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: the default rules: pii at 29 days less a 1 h interval and a 1 h allowance
RULES = ExpiryRules.from_config(RetentionConfig())
CUTOFF = 29 * DAY - 2 * HOUR
PII, META = DataClass.PII, DataClass.METADATA


@dataclass(frozen=True)
class C:
    """A row: name, source, data class, age by the store, age by the manifest (None: no
    readable manifest), verified, quarantined."""

    name: str
    source: str | None
    data_class: DataClass
    store_age: timedelta | None
    manifest_age: timedelta | None = None
    verified: bool = True
    quarantined: str | None = None

    def copy(self) -> StoredCopy:
        return StoredCopy(
            name=self.name, source=self.source, data_class=self.data_class,
            store_time=None if self.store_age is None else NOW - self.store_age,
            created_at=None if self.manifest_age is None else NOW - self.manifest_age,
            verified=self.verified, quarantined=self.quarantined)


@dataclass(frozen=True)
class Case:
    copies: tuple[C, ...]
    keep: frozenset[str]
    #: name -> a phrase its reason must contain
    reasons: dict[str, str]
    rules: ExpiryRules = RULES


CASES = {
    "empty": Case((), frozenset(), {}),
    "pii-past-cutoff-removed-although-newest-verified": Case(
        (C("p1", "acc", PII, CUTOFF + HOUR, CUTOFF + 2 * HOUR),), frozenset(),
        {"p1": "older than the pii cutoff of 28 days 22 h"}),
    "pii-at-the-cutoff-removed": Case(
        (C("p1", "acc", PII, CUTOFF, CUTOFF),), frozenset(), {"p1": "older than the pii cutoff"}),
    "pii-just-within-cutoff-kept": Case(
        (C("p1", "acc", PII, CUTOFF - timedelta(seconds=1), CUTOFF - timedelta(seconds=2)),),
        frozenset({"p1"}), {"p1": "within the pii cutoff"}),
    "pii-not-protected-by-newer-verified": Case(
        (C("p1", "acc", PII, 30 * DAY, 30 * DAY), C("p2", "acc", PII, DAY, DAY)),
        frozenset({"p2"}), {"p1": "older than the pii cutoff", "p2": "within"}),
    "metadata-newest-verified-kept-past-retention": Case(
        (C("m1", "cat", META, 500 * DAY, 500 * DAY), C("m2", "cat", META, 400 * DAY, 400 * DAY)),
        frozenset({"m2"}),
        {"m1": "older than the retention of 365 days", "m2": "newest verified metadata"}),
    "metadata-unverified-newest-does-not-protect": Case(
        (C("m1", "cat", META, 420 * DAY, 420 * DAY),
         C("m2", "cat", META, 400 * DAY, 400 * DAY, verified=False)),
        frozenset({"m1"}), {"m1": "newest verified", "m2": "retention"}),
    "metadata-within-retention-kept": Case(
        (C("m1", "cat", META, 40 * DAY, 40 * DAY),), frozenset({"m1"}),
        {"m1": "newest verified"}),
    "metadata-sources-judged-apart": Case(
        (C("a1", "alpha", META, 500 * DAY, 500 * DAY), C("b1", "beta", META, 450 * DAY, 450 * DAY)),
        frozenset({"a1", "b1"}), {"a1": "newest verified", "b1": "newest verified"}),
    "created-at-later-than-the-store-time-is-not-trusted": Case(
        # the manifest says 10 days old; the store wrote the object 30 days ago
        (C("p1", "acc", PII, 30 * DAY, 10 * DAY),), frozenset(),
        {"p1": "older than the pii cutoff"}),
    "created-at-earlier-than-the-store-time-counts": Case(
        # the dump started 2 hours before its upload: its data is that much older
        (C("p1", "acc", PII, CUTOFF - HOUR, CUTOFF + HOUR),), frozenset(),
        {"p1": "older than the pii cutoff"}),
    "no-store-time-falls-back-to-created-at": Case(
        (C("p1", "acc", PII, None, CUTOFF + HOUR), C("p2", "acc", PII, None, DAY)),
        frozenset({"p2"}), {"p1": "older", "p2": "within"}),
    "quarantined-metadata-is-judged-as-pii-by-store-time": Case(
        (C("m1", "cat", META, 30 * DAY, DAY, quarantined="malformed"),
         C("m2", "cat", META, DAY, 30 * DAY, quarantined="malformed")),
        frozenset({"m2"}),
        {"m1": "quarantined (malformed), judged as pii, older than the pii cutoff",
         "m2": "within the pii cutoff"}),
    "quarantined-never-counts-as-newest-verified": Case(
        (C("m1", "cat", META, 400 * DAY, 400 * DAY),
         C("m2", "cat", META, DAY, DAY, quarantined="forged")),
        frozenset({"m1", "m2"}), {"m1": "newest verified metadata", "m2": "quarantined"}),
    "unknown-age-is-kept-and-said": Case(
        (C("x1", None, PII, None, None, verified=False, quarantined="no manifest"),),
        frozenset({"x1"}), {"x1": "age is unknown"}),
    "a-shorter-pii-policy-is-the-cutoff": Case(
        (C("p1", "acc", PII, 8 * DAY, 8 * DAY), C("p2", "acc", PII, 6 * DAY, 6 * DAY)),
        frozenset({"p2"}), {"p1": "pii cutoff of 7 days"},
        rules=ExpiryRules.from_config(RetentionConfig(pii_days=7))),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_decide_expiry(case: Case) -> None:
    decision = decide_expiry([c.copy() for c in case.copies], case.rules, NOW)
    every = {c.name for c in case.copies}
    assert set(decision.keep) == case.keep
    assert set(decision.remove) == every - case.keep
    assert len(decision.keep) + len(decision.remove) == len(every)
    assert set(decision.reasons) == every
    for name, phrase in case.reasons.items():
        assert phrase in decision.reasons[name], decision.reasons[name]


def test_removals_come_oldest_first() -> None:
    copies = [C(f"p{age}", "acc", PII, age * DAY, age * DAY).copy() for age in (30, 45, 40)]
    assert decide_expiry(copies, RULES, NOW).remove == ("p45", "p40", "p30")


@pytest.mark.parametrize(("classes", "expected"), [
    ((META,), META),
    ((META, META), META),
    ((META, PII), PII),
    ((PII, META), PII),
    ((None, META), PII),  # an unknown class counts as pii
    ((META, None), PII),
    ((), PII),
])
def test_strictest(classes: tuple[DataClass | None, ...], expected: DataClass) -> None:
    assert strictest(*classes) is expected


BID = "eu.accounts.20261128T020000Z.0a1b2c3d"


@pytest.mark.parametrize(("key", "stem", "suffix", "data_class", "backup_id"), [
    (f"eu/pii/accounts/{BID}.rvb", f"eu/pii/accounts/{BID}", ".rvb", PII, BID),
    (f"eu/pii/accounts/{BID}.manifest.json", f"eu/pii/accounts/{BID}", ".manifest.json", PII,
     BID),
    (f"eu/metadata/accounts/{BID}.rvb", f"eu/metadata/accounts/{BID}", ".rvb", META, BID),
    # an unknown data class prefix keeps the backup together, with no class (so: pii)
    (f"eu/secret/accounts/{BID}.rvb", f"eu/secret/accounts/{BID}", ".rvb", None, BID),
    # outside the layout: each key on its own, no class
    ("eu/pii/accounts/notes.txt", "eu/pii/accounts/notes.txt", "", None, None),
    (f"eu/pii/{BID}.rvb", f"eu/pii/{BID}.rvb", "", None, None),
    (f"eu/pii/accounts/x/{BID}.rvb", f"eu/pii/accounts/x/{BID}.rvb", "", None, None),
    (f"eu/pii/billing/{BID}.rvb", f"eu/pii/billing/{BID}.rvb", "", None, None),  # wrong source
    (f"us/pii/accounts/{BID}.rvb", f"us/pii/accounts/{BID}.rvb", "", None, None),
    ("eu/pii/accounts/eu.accounts.junk.rvb", "eu/pii/accounts/eu.accounts.junk.rvb", "", None,
     None),
])
def test_parse_key(key: str, stem: str, suffix: str, data_class: DataClass | None,
                   backup_id: str | None) -> None:
    parts = parse_key(Domain.EU, key)
    assert (parts.stem, parts.suffix, parts.data_class, parts.backup_id) == (
        stem, suffix, data_class, backup_id)
    assert parts.in_layout == (backup_id is not None)


@pytest.mark.parametrize(("retention", "cutoff"), [
    ({}, 29 * DAY - 2 * HOUR),
    ({"pii_days": 28}, 28 * DAY),
    ({"pii_days": 29, "sweep_interval_seconds": 900, "deletion_allowance_seconds": 900},
     29 * DAY - timedelta(minutes=30)),
    ({"pii_days": 29, "sweep_interval_seconds": 60, "deletion_allowance_seconds": 0},
     29 * DAY - timedelta(minutes=1)),
    ({"pii_days": 29, "sweep_interval_seconds": 12 * 3600, "deletion_allowance_seconds": 12 * 3600},
     28 * DAY),
    ({"pii_days": 7}, 7 * DAY),
])
def test_pii_cutoff(retention: dict[str, int], cutoff: timedelta) -> None:
    config = RetentionConfig(**retention)
    assert config.pii_cutoff() == cutoff
    # the ceiling by construction: a copy just younger than the cutoff at one sweep is gone
    # by the next sweep plus the allowance, at most 29 x 24 h after it was written
    worst = cutoff + timedelta(seconds=config.sweep_interval_seconds
                               + config.deletion_allowance_seconds)
    assert worst <= 29 * DAY
