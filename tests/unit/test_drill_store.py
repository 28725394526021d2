"""Drills alternate the store they restore from: each source's drill restores from the other
store than its previous drill; only an unreachable store makes a drill use the other one."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from regionvault import drill
from regionvault.config import parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import IntegrityError, TransientStoreError
from regionvault.manifest import Manifest
from regionvault.restore import RestoreResult
from regionvault.stores.memory import MemoryStore
from tests.unit import config_data

SUNDAY = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
ROWS = {"public.customers": 3}


class S3Role(MemoryStore):
    name = "s3"


class GCSRole(MemoryStore):
    name = "gcs"


@pytest.mark.parametrize(("previous", "expected"), [("s3", "gcs"), ("gcs", "s3")])
def test_the_other_store_than_last_time(previous: str, expected: str) -> None:
    assert drill.drill_store(("s3", "gcs"), previous, SUNDAY) == expected
    assert drill.drill_store(("s3", "gcs"), previous, SUNDAY + timedelta(days=1)) == expected


def test_without_a_previous_drill_the_date_decides_and_alternates_weekly_and_daily() -> None:
    weekly = [drill.drill_store(("s3", "gcs"), None, SUNDAY + timedelta(weeks=w)) for w in range(4)]
    daily = [drill.drill_store(("s3", "gcs"), None, SUNDAY + timedelta(days=d)) for d in range(4)]
    for stores in (weekly, daily):
        assert stores[0] != stores[1] and stores[0::2] == [stores[0]] * 2
        assert set(stores) == {"s3", "gcs"}


@dataclass
class Drills:
    """A domain with in-memory stores, a scratch server that is never touched, and a restore
    that records which store it was asked for (and may be told to fail)."""

    ctx: DomainContext
    asked: list[str] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)


@pytest.fixture
def drills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Drills:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    config = parse_config(data, origin="test", env={})
    ticks = iter(range(10_000))  # drills one minute apart: report keys sort by time
    ctx = DomainContext(config, Domain.EU, clock=lambda: SUNDAY + timedelta(minutes=next(ticks)),
                        s3=S3Role("rv-eu-primary", "eu-central-1"),
                        gcs=GCSRole("rv-eu-replica", "europe-west4"))
    world = Drills(ctx)

    def select_backup(ctx: DomainContext, source: str, at: datetime, *,
                      role: str | None) -> Manifest:
        return Manifest.model_validate({
            "backup_id": f"eu.{source}.20261128T020000Z.0000000a", "domain": "eu",
            "source": source, "source_kind": "postgres", "data_class": "pii",
            "created_at": SUNDAY - timedelta(days=1), "expires_at": SUNDAY + timedelta(days=28),
            "key_id": "eu-2026", "wrapped_data_key": "x", "plaintext_size": 1,
            "plaintext_sha256": "0" * 64, "ciphertext_size": 1, "ciphertext_sha256": "0" * 64,
            "ciphertext_crc32c": "AAAAAA==", "object_key": "k", "row_counts": ROWS})

    def restore(ctx: DomainContext, backup_id: str, target: str, *,
                from_store: str) -> RestoreResult:
        world.asked.append(from_store)
        if from_store in world.fail:
            raise world.fail[from_store]
        return RestoreResult(backup_id, from_store, 1, 1, 0.1)

    class Scratch:
        """A scratch server that makes nothing: the restore is faked too."""

        def database_dsn(self, server_dsn: str, name: str) -> str:
            return f"postgresql://scratch/{name}"

        def create_database(self, server_dsn: str, name: str) -> None:
            pass

        def drop_database(self, server_dsn: str, name: str) -> None:
            pass

        def database_exists(self, server_dsn: str, name: str) -> bool:
            return True

        def scalar(self, dsn: str, query: str) -> str:
            return "0"

    class Counted:
        def row_counts(self, target_dsn: str) -> dict[str, int]:
            return dict(ROWS)

    monkeypatch.setattr(drill, "scratch_server_dsn",
                        lambda ctx, kind: "postgresql://scratch/postgres")
    monkeypatch.setattr(drill, "scratch_server_for", lambda kind: Scratch())
    monkeypatch.setattr(drill, "restorer_for", lambda kind, name: Counted())
    monkeypatch.setattr(drill, "select_backup", select_backup)
    monkeypatch.setattr(drill, "restore", restore)
    return world


def _stores(report: drill.DrillReport) -> dict[str, str | None]:
    return {s.source: s.store for s in report.sources}


def test_each_source_alternates_from_drill_to_drill(drills: Drills) -> None:
    first = drill.run_drill(drills.ctx)
    assert first.passed
    start = drill.drill_store(("s3", "gcs"), None, SUNDAY)
    assert _stores(first) == {"accounts": start, "catalog": start}
    second = drill.run_drill(drills.ctx, ["catalog"])
    other = "gcs" if start == "s3" else "s3"
    assert _stores(second) == {"catalog": other}
    third = drill.run_drill(drills.ctx)  # accounts was last drilled from start, catalog other
    assert _stores(third) == {"accounts": other, "catalog": start}
    assert drills.asked == [start, start, other, other, start]


def test_an_unreachable_store_falls_back_and_the_next_drill_goes_back_to_it(
        drills: Drills) -> None:
    start = drill.drill_store(("s3", "gcs"), None, SUNDAY)
    other = "gcs" if start == "s3" else "s3"
    drills.fail[start] = TransientStoreError(f"cannot open {start}: connection refused")
    report = drill.run_drill(drills.ctx, ["accounts"])
    [entry] = report.sources
    assert entry.passed and entry.store == other
    assert entry.fallback_reason and "connection refused" in entry.fallback_reason
    drills.fail.clear()
    nxt = drill.run_drill(drills.ctx, ["accounts"])
    assert _stores(nxt) == {"accounts": start}  # the store not proven last time


def test_a_copy_that_fails_its_checks_fails_the_drill_without_fallback(drills: Drills) -> None:
    start = drill.drill_store(("s3", "gcs"), None, SUNDAY)
    drills.fail[start] = IntegrityError(f"backup cannot be restored from {start}: SHA-256")
    report = drill.run_drill(drills.ctx, ["accounts"])
    [entry] = report.sources
    assert not entry.passed and entry.store == start and "SHA-256" in (entry.error or "")
    assert drills.asked == [start]


def test_unreadable_history_means_the_date_decides(
        drills: Drills, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: DomainContext, limit: int = 20) -> list[drill.DrillReport]:
        raise IntegrityError("drill report s3:drills/eu/x.json is malformed")

    monkeypatch.setattr(drill, "list_reports", broken)
    assert drill.previous_stores(drills.ctx) == {}
    report = drill.run_drill(drills.ctx, ["accounts"])
    assert _stores(report) == {"accounts": drill.drill_store(("s3", "gcs"), None, SUNDAY)}
