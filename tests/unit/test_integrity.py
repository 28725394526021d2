"""Integrity over time: which copies a sample reads (a table and a 60-day simulation), and a
sample over in-memory stores finding bit rot that only reading shows, store by store."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from beat_schedule import build_beat_schedule
from regionvault import chain, integrity
from regionvault import context as context_module
from regionvault.config import SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import ConfigError, TransientStoreError
from regionvault.integrity import (
    LAST_CHANCE,
    NEVER_READ,
    OVERDUE,
    SPREAD,
    MemoryReadLedger,
    Pick,
    ReadLedger,
    RedisReadLedger,
    StoredBackup,
    choose_sample,
    run_sample,
    sampling_interval,
)
from regionvault.keyring import Keyring
from regionvault.manifest import BackupRef
from tests.unit import config_data
from tests.unit.test_chain import (
    KEY_ID,
    PAYLOAD,
    T0,
    Clock,
    FakeSource,
    GCSRole,
    Rig,
    S3Role,
    backup_at,
    keys_of,
    make_config,
    restore_bytes,
)

DAY = timedelta(days=1)
PERIOD = timedelta(days=30)
NOW = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)


def _backup(name: str, age_days: float, *, s3: float | None = None, gcs: float | None = None,
            expires_in: float | None = None) -> StoredBackup:
    """A backup created ``age_days`` before NOW, each copy last read that many days ago."""
    last = {store: NOW - timedelta(days=days)
            for store, days in (("s3", s3), ("gcs", gcs)) if days is not None}
    expires = NOW + timedelta(days=expires_in) if expires_in is not None else None
    return StoredBackup(name, NOW - timedelta(days=age_days), expires, last)


# --- the choice, as a table ------------------------------------------------------------------

CASES = [
    pytest.param([], [], id="nothing-stored"),
    pytest.param(
        # 15 new backups, 30 copies, 30 runs a period: one copy a run, the newest first
        [_backup(f"b{i:02d}", 0.5 + i) for i in range(15)],
        [("b00", "gcs", NEVER_READ)], id="new-backups-newest-first"),
    pytest.param(
        # the quota (ceil(6 / 30) = 1) goes to a never-read copy; the copies read 10 days ago
        # get the steady pace of their own (one a run at least)
        [_backup("old-read", 40, s3=10, gcs=10), _backup("new", 1), _backup("newer", 0.5)],
        [("newer", "gcs", NEVER_READ), ("old-read", "gcs", SPREAD)],
        id="never-read-first"),
    pytest.param(
        # 60 copies read in one burst yesterday: read again ceil(60 / 29) = 3 a run from
        # now on, not all 60 on the day they fall due
        [_backup(f"b{i:02d}", 40, s3=1, gcs=1) for i in range(30)],
        [("b00", "gcs", SPREAD), ("b00", "s3", SPREAD), ("b01", "gcs", SPREAD)],
        id="a-burst-is-spread-over-the-period"),
    pytest.param(
        [_backup("a", 60, s3=29.5, gcs=3), _backup("b", 60, s3=5, gcs=5)],
        [("a", "s3", OVERDUE)], id="read-29.5-days-ago-is-overdue"),
    pytest.param(
        [_backup("a", 60, s3=28, gcs=3), _backup("b", 60, s3=5, gcs=4)],
        [("a", "s3", SPREAD)], id="otherwise-the-least-recently-read"),
    pytest.param(
        # the due copies are all read even beyond the quota of one a run
        [_backup("a", 60, s3=29.1, gcs=31), _backup("b", 30.5)],
        [("a", "gcs", OVERDUE), ("b", "gcs", OVERDUE), ("b", "s3", OVERDUE),
         ("a", "s3", OVERDUE)], id="every-due-copy-beyond-the-quota"),
    pytest.param(
        # never read, and retention removes it before the next run: read now or never
        [_backup("old-read", 60, s3=20, gcs=20), _backup("expiring", 28.8, expires_in=0.2)],
        [("expiring", "gcs", LAST_CHANCE), ("expiring", "s3", LAST_CHANCE)],
        id="expires-soon-never-read"),
    pytest.param(
        # already read and gone before the next run: not read again just to fill the quota
        [_backup("expiring", 28.8, s3=2, gcs=2, expires_in=0.2),
         _backup("other", 20, s3=1, gcs=1)],
        [("other", "gcs", SPREAD)], id="expires-soon-already-read"),
    pytest.param(
        [_backup("kept", 400, s3=29.2, gcs=1, expires_in=-35)],
        [("kept", "s3", OVERDUE)], id="kept-past-its-expiry-still-due"),
]


@pytest.mark.parametrize(("backups", "expected"), CASES)
def test_choice(backups: list[StoredBackup], expected: list[tuple[str, str, str]]) -> None:
    sample = choose_sample(backups, period=PERIOD, interval=DAY, now=NOW)
    assert [(p.backup_id, p.store, p.reason) for p in sample.picks] == expected
    assert sample.copies == 2 * len(backups)


def test_steady_pace_reads_just_before_the_deadlines() -> None:
    backups = [_backup(f"b{i:03d}", 100, s3=i / 10, gcs=i / 10 + 0.05) for i in range(100)]
    sample = choose_sample(backups, period=PERIOD, interval=DAY, now=NOW)
    # 200 copies, deadlines spread over the next 10 to 30 days: 200 / 30 a run
    assert len(sample.picks) == math.ceil(200 / 30) == 7
    assert all(p.reason == SPREAD for p in sample.picks)
    # the least recently read: b099 gcs (9.95 days), then b099 s3 (9.9), b098 gcs, ...
    assert sample.pairs[:3] == [("b099", "gcs"), ("b099", "s3"), ("b098", "gcs")]


def test_a_sample_each_period_or_less_reads_everything() -> None:
    backups = [_backup("a", 3, s3=1, gcs=1), _backup("b", 2)]
    sample = choose_sample(backups, period=PERIOD, interval=PERIOD, now=NOW)
    assert sorted(sample.pairs) == [("a", "gcs"), ("a", "s3"), ("b", "gcs"), ("b", "s3")]


def test_only_the_stores_asked_for() -> None:
    sample = choose_sample([_backup("a", 40)], period=PERIOD, interval=DAY, now=NOW,
                           stores=("gcs",))
    assert sample.picks == (Pick("a", "gcs", OVERDUE),)


def test_interval_is_the_time_to_the_next_run_plus_a_start_grace() -> None:
    assert sampling_interval("30 3 * * *", NOW) == DAY + integrity.START_GRACE
    friday = datetime(2026, 12, 4, 3, 30, tzinfo=UTC)
    assert friday.weekday() == 4
    assert sampling_interval("30 3 * * 1-5", friday) == 3 * DAY + integrity.START_GRACE


def test_no_copy_goes_unread_longer_than_the_period_over_60_days() -> None:
    """60 daily runs over a changing set of backups: backups from before the sampling began,
    new pii and metadata backups most days, pii expiring at 29 days, metadata backups of a
    source removed halfway, and a run missed. No copy is ever unread longer than the period
    (counted from its backup's creation, or from the first run for older backups), and after
    the first run no run reads much more than its even share."""
    rng = random.Random(9)
    start = datetime(2026, 1, 1, 3, 30, tzinfo=UTC)
    interval = DAY
    backups: dict[str, StoredBackup] = {}
    for i in range(60):  # stored before the sampling began, never read
        created = start - timedelta(days=rng.uniform(0.1, 200))
        backups[f"old-{i}"] = StoredBackup(f"old-{i}", created, created + timedelta(days=365))
    last_read: dict[tuple[str, str], datetime] = {}
    counted_from: dict[tuple[str, str], datetime] = {}
    reads_per_run: list[int] = []
    shares: list[int] = []
    worst = timedelta(0)
    for day in range(60):
        now = start + day * interval
        for source, data_class in (("accounts", "pii"), ("events", "pii"), ("catalog", "meta")):
            if source == "catalog" and day >= 30:
                continue  # removed from the configuration: its backups stay until they expire
            if rng.random() < 0.8:  # a backup most days; some chains fail
                created = now - timedelta(hours=rng.uniform(0.5, 23))
                keep = timedelta(days=29 if data_class == "pii" else 365)
                name = f"{source}-{day}"
                backups[name] = StoredBackup(name, created, created + keep)
        for name in [n for n, b in backups.items() if b.expires_at and b.expires_at <= now]:
            del backups[name]  # expired: gone from both stores
        for name, backup in backups.items():
            for store in integrity.STORES:
                basis = last_read.get((name, store), counted_from.setdefault(
                    (name, store), max(backup.created_at, start)))
                if day > 0:  # the first run starts with backups that are already old
                    worst = max(worst, now - basis)
        if day == 17:
            continue  # the worker was down: this run never happened
        view = [StoredBackup(b.backup_id, b.created_at, b.expires_at,
                             {s: at for (n, s), at in last_read.items() if n == b.backup_id})
                for b in backups.values()]
        # the run before the missed one knows nothing of it: it expects the next one in a day
        sample = choose_sample(view, period=PERIOD, interval=interval, now=now)
        for pair in sample.pairs:
            last_read[pair] = now
        reads_per_run.append(len(sample.picks))
        shares.append(sample.budget)
    # the missed run costs at most that run's interval; every other gap is within the period
    assert worst <= PERIOD + interval
    # the first run reads every copy of the old backups that is overdue, and then some
    overdue = [b for b in backups.values() if b.backup_id.startswith("old-")
               and b.created_at <= start - (PERIOD - interval)]
    assert reads_per_run[0] >= 2 * len(overdue) > 0
    assert max(reads_per_run[1:]) <= 2 * max(shares)


def test_without_missed_runs_the_period_is_never_exceeded() -> None:
    rng = random.Random(4)
    start = datetime(2026, 3, 1, 3, 30, tzinfo=UTC)
    backups: dict[str, StoredBackup] = {}
    last_read: dict[tuple[str, str], datetime] = {}
    for day in range(60):
        now = start + day * DAY
        for n in range(rng.randint(0, 4)):
            created = now - timedelta(hours=rng.uniform(0.1, 23.9))
            keep = timedelta(days=rng.choice((29, 90)))
            backups[f"{day}-{n}"] = StoredBackup(f"{day}-{n}", created, created + keep)
        for name in [n for n, b in backups.items() if b.expires_at and b.expires_at <= now]:
            del backups[name]
        for name, backup in backups.items():
            for store in integrity.STORES:
                basis = last_read.get((name, store), backup.created_at)
                assert now - basis <= PERIOD, (name, store, day)
        view = [StoredBackup(b.backup_id, b.created_at, b.expires_at,
                             {s: at for (n, s), at in last_read.items() if n == b.backup_id})
                for b in backups.values()]
        for pair in choose_sample(view, period=PERIOD, interval=DAY, now=now).pairs:
            last_read[pair] = now


# --- the ledger --------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> ReadLedger:
    if request.param == "memory":
        return MemoryReadLedger()
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    client.flushdb()
    return RedisReadLedger(client)


def test_ledger_contract(ledger: ReadLedger) -> None:
    bid = "eu.accounts.20261130T020000Z.0000000a"
    assert ledger.last_reads("eu") == {}
    ledger.record("eu", bid, "s3", NOW - DAY)
    ledger.record("eu", bid, "s3", NOW)
    ledger.record("eu", bid, "gcs", NOW - DAY)
    ledger.record("au", "au.catalog.20261130T020000Z.0000000b", "gcs", NOW)
    assert ledger.last_reads("eu") == {(bid, "s3"): NOW, (bid, "gcs"): NOW - DAY}
    ledger.forget("eu", [(bid, "gcs"), ("eu.gone.20261130T020000Z.0000000c", "s3")])
    ledger.forget("eu", [])
    assert ledger.last_reads("eu") == {(bid, "s3"): NOW}
    assert list(ledger.last_reads("au")) == [("au.catalog.20261130T020000Z.0000000b", "gcs")]
    ledger.record_sample("eu", {"at": NOW.isoformat(), "mismatches": "0"})
    assert ledger.last_sample("eu") == {"at": NOW.isoformat(), "mismatches": "0"}
    assert ledger.last_sample("au") == {}


def test_redis_ledger_layout(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    RedisReadLedger(client).record("eu", "eu.accounts.20261130T020000Z.0000000a", "gcs", NOW)
    assert client.hgetall("regionvault:integrity:eu") == {
        "eu.accounts.20261130T020000Z.0000000a:gcs": NOW.isoformat()}


# --- a sample over in-memory stores ------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    """test_chain's rig: in-memory S3 and GCS, a temporary spool, a fake source."""
    monkeypatch.setattr(context_module, "_residency_checked", set())
    config = make_config(tmp_path)
    clock = Clock(T0)
    s3 = S3Role("rv-eu-primary", "eu-central-1", clock=clock)
    gcs = GCSRole("rv-eu-replica", "europe-west4", clock=clock)
    keyring = Keyring.local_only(Domain.EU, {KEY_ID: b"k" * 32}, current=KEY_ID)
    ctx = DomainContext(config, Domain.EU, clock=clock, s3=s3, gcs=gcs, keyring=keyring)
    built = Rig(ctx=ctx, s3=s3, gcs=gcs, clock=clock, spool_root=config.spool_for(Domain.EU))

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        return FakeSource(name=src.name, between=lambda: None)

    monkeypatch.setattr(chain, "open_source", open_source)
    return built


def _sample(rig: Rig, ledger: ReadLedger, *, every: timedelta = DAY) -> integrity.SampleReport:
    return run_sample(rig.ctx, ledger, rig.clock(), interval=every)


def test_a_flipped_byte_in_the_gcs_copy_is_found_and_the_s3_copy_still_restores(
        rig: Rig) -> None:
    backup_id = backup_at(rig, T0)
    okey, _ = keys_of(backup_id, rig)
    # bit rot: GCS still reports the CRC32C it computed at upload, so only reading shows it
    rig.gcs.corrupt(okey, 100, keep_checksum=True)
    assert chain.verify(rig.ctx, backup_id, deep=False).detail.startswith("store checksums")

    ledger = MemoryReadLedger()
    rig.clock.now = T0 + timedelta(hours=2)
    report = _sample(rig, ledger, every=PERIOD)  # one run a period: every copy is read
    assert [(m.backup_id, m.store) for m in report.mismatches] == [(backup_id, "gcs")]
    problem = report.mismatches[0].problem
    assert "SHA-256" in problem and f"gs://rv-eu-replica/{okey}" in problem
    assert report.matched == ((backup_id, "s3"),)
    assert report.bytes_read["s3"] > 0 and report.bytes_read["gcs"] == 0
    assert report.complete
    assert "gcs" in report.summary() and backup_id in report.summary()
    # the copy that matched is recorded; the damaged one is read (and fails) again next time
    assert set(ledger.last_reads("eu")) == {(backup_id, "s3")}
    rig.clock.now += DAY
    again = _sample(rig, ledger)
    assert [(m.backup_id, m.store) for m in again.mismatches] == [(backup_id, "gcs")]
    # the S3 copy is intact: it decrypts to exactly what was dumped
    assert restore_bytes(rig.s3, backup_id, rig) == PAYLOAD


def test_a_missing_copy_and_a_missing_manifest_are_mismatches(rig: Rig) -> None:
    gone_object = backup_at(rig, T0)
    gone_manifest = backup_at(rig, T0 + timedelta(minutes=1), source="catalog")
    rig.s3.delete(keys_of(gone_object, rig)[0])
    rig.gcs.delete(keys_of(gone_manifest, rig)[1])
    report = _sample(rig, MemoryReadLedger(), every=PERIOD)
    found = {(m.backup_id, m.store): m.problem for m in report.mismatches}
    assert set(found) == {(gone_object, "s3"), (gone_manifest, "gcs")}
    assert "s3 copy" in found[(gone_object, "s3")] and "missing" in found[(gone_object, "s3")]
    assert "gcs manifest" in found[(gone_manifest, "gcs")]


def test_a_store_down_at_listing_does_not_stop_the_other(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id = backup_at(rig, T0)

    def unreachable(*_: object, **__: object) -> None:
        raise TransientStoreError("cannot list s3://rv-eu-primary: connection refused")

    monkeypatch.setattr(rig.s3, "list_info", unreachable)
    ledger = MemoryReadLedger()
    report = _sample(rig, ledger, every=PERIOD)
    assert report.matched == ((backup_id, "gcs"),)
    assert "connection refused" in report.store_errors["s3"]
    assert not report.mismatches and not report.complete
    assert ledger.last_sample("eu")["complete"] == "no"


def test_a_store_failing_while_read_does_not_stop_the_other(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    first = backup_at(rig, T0)
    second = backup_at(rig, T0 + timedelta(minutes=1), source="catalog")
    calls: list[str] = []

    def failing_stat(key: str) -> None:
        calls.append(key)
        raise TransientStoreError(f"cannot stat gs://rv-eu-replica/{key}: 503")

    monkeypatch.setattr(rig.gcs, "stat", failing_stat)
    report = _sample(rig, MemoryReadLedger(), every=PERIOD)
    assert sorted(report.matched) == [(first, "s3"), (second, "s3")]
    assert "503" in report.store_errors["gcs"] and not report.mismatches
    assert len(calls) == 1  # a store that stopped answering is not asked again in this run


def test_a_malformed_manifest_is_reported_and_skipped(rig: Rig) -> None:
    broken = backup_at(rig, T0)
    fine = backup_at(rig, T0 + timedelta(minutes=1), source="catalog")
    rig.s3.put_bytes(keys_of(broken, rig)[1], b'{"version": 1, "backup_id": ')
    report = _sample(rig, MemoryReadLedger(), every=PERIOD)
    assert len(report.skipped) == 1 and "malformed" in report.skipped[0]
    assert keys_of(broken, rig)[1] in report.skipped[0]
    # both copies of the other backup, and the gcs copy of the broken one (by its gcs
    # manifest; its s3 copy is checked against that too) are read; no mismatch is invented
    assert sorted(report.matched) == sorted([(broken, "gcs"), (broken, "s3"), (fine, "gcs"),
                                             (fine, "s3")])
    assert not report.mismatches and report.complete


def test_unverified_backups_are_left_to_their_chain(rig: Rig) -> None:
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload, chain.replicate):
        step(rig.ctx, backup_id)
    report = _sample(rig, MemoryReadLedger(), every=PERIOD)
    assert report.copies == 0 and not report.matched and not report.mismatches


def test_a_backup_removed_while_sampled_is_no_mismatch(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id = backup_at(rig, T0)
    real_check = integrity.check_copy

    def expire_first(ctx: DomainContext, role: str, key: str, *args: object,
                     **kwargs: object) -> list[str]:
        for store in (rig.s3, rig.gcs):  # expiry runs between listing and reading
            for k in keys_of(backup_id, rig):
                store.delete(k)
        return real_check(ctx, role, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(integrity, "check_copy", expire_first)
    report = _sample(rig, MemoryReadLedger(), every=PERIOD)
    assert not report.mismatches and not report.matched


def test_removed_backups_leave_the_ledger(rig: Rig) -> None:
    kept = backup_at(rig, T0)
    removed = backup_at(rig, T0 + timedelta(minutes=1), source="catalog")
    ledger = MemoryReadLedger()
    _sample(rig, ledger, every=PERIOD)
    assert len(ledger.last_reads("eu")) == 4
    for store in (rig.s3, rig.gcs):
        for key in keys_of(removed, rig):
            store.delete(key)
    _sample(rig, ledger)
    assert {b for b, _ in ledger.last_reads("eu")} == {kept}


def test_daily_samples_read_every_copy_within_the_period(rig: Rig) -> None:
    ids = [backup_at(rig, T0 + timedelta(minutes=i), source=("accounts", "catalog")[i % 2])
           for i in range(8)]
    ledger = MemoryReadLedger()
    first_read: dict[tuple[str, str], datetime] = {}
    for day in range(30):
        rig.clock.now = T0 + timedelta(hours=1) + day * DAY
        report = _sample(rig, ledger)
        assert not report.mismatches
        assert 1 <= len(report.matched) <= 2  # 16 copies over 30 runs: one, rarely two a run
        for pair in report.matched:
            first_read.setdefault(pair, rig.clock.now)
    assert set(first_read) == {(b, s) for b in ids for s in ("s3", "gcs")}


def test_backups_of_a_source_no_longer_configured_are_still_read(rig: Rig) -> None:
    backup_id = backup_at(rig, T0, source="catalog")
    data = config_data("eu")
    data["domains"]["eu"]["sources"] = [data["domains"]["eu"]["sources"][0]]  # accounts only
    data["spool_dir"] = str(rig.spool_root.parent)
    config = parse_config(data, origin="test", env={})
    ctx = DomainContext(config, Domain.EU, clock=rig.clock, s3=rig.s3, gcs=rig.gcs,
                        keyring=rig.ctx.keyring)
    assert BackupRef.parse(backup_id).source == "catalog"
    report = run_sample(ctx, MemoryReadLedger(), rig.clock(), interval=PERIOD)
    assert sorted(report.matched) == [(backup_id, "gcs"), (backup_id, "s3")]


# --- configuration, schedule, metrics --------------------------------------------------------


def test_integrity_settings_default_and_validate() -> None:
    config = parse_config(config_data("eu"), origin="test", env={})
    assert config.integrity.period_days == 30 and config.integrity.schedule == "30 3 * * *"
    for bad, field in (({"period_days": 0}, "integrity.period_days"),
                       ({"schedule": "daily"}, "integrity.schedule")):
        data = config_data("eu")
        data["integrity"] = bad
        with pytest.raises(ConfigError, match=field):
            parse_config(data, origin="test", env={})


def test_beat_samples_every_domain_in_its_own_queue() -> None:
    data = config_data()
    data["integrity"] = {"schedule": "15 5 * * *"}
    data["domains"]["au"]["sources"] = []  # no sources left: its stored backups are still read
    schedule = build_beat_schedule(parse_config(data, origin="test", env={}))
    entries = {k: v for k, v in schedule.items() if k.startswith("integrity-")}
    assert set(entries) == {"integrity-us", "integrity-eu", "integrity-au"}
    for name, entry in entries.items():
        domain = name.removeprefix("integrity-")
        assert entry["task"] == "regionvault.integrity_sample"
        assert entry["kwargs"] == {"domain": domain}
        assert entry["options"] == {"queue": f"backup.{domain}"}
        assert entry["schedule"].hour == {5} and entry["schedule"].minute == {15}


def test_metrics_count_mismatches_and_bytes_by_store() -> None:
    from prometheus_client import REGISTRY

    from workers.metrics import record_integrity

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("regionvault_integrity_mismatches_total", domain="au", store="gcs")
    report = integrity.SampleReport(
        domain="au", at=NOW, copies=4, matched=(("au.catalog.20261130T020000Z.0000000a", "s3"),),
        mismatches=(integrity.Mismatch("au.catalog.20261130T020000Z.0000000a", "gcs", "bad"),),
        bytes_read={"s3": 1000, "gcs": 0}, store_errors={})
    record_integrity(report)
    assert value("regionvault_integrity_mismatches_total", domain="au", store="gcs") == before + 1
    assert value("regionvault_integrity_bytes_read_total", domain="au", store="s3") >= 1000
    assert value("regionvault_integrity_last_sample_timestamp_seconds", domain="au") > 0
