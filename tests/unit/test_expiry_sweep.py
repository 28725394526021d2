"""The expiry sweep over in-memory stores: each store on its own, every prefix of the domain,
quarantine for manifests that cannot be trusted, and the ledger and metrics it feeds.

The stores carry their own clock (``MemoryStore(clock=...)`` stamps ``modified``), apart from
the workers' clock, so a test can make a manifest's ``created_at`` and the store's timestamp
disagree, and move time forward by weeks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from regionvault import chain, expiry, manifest_store
from regionvault import context as context_module
from regionvault.config import Config, SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import PermanentStoreError, TransientStoreError
from regionvault.expiry import (
    MemorySweepLedger,
    Quarantined,
    RedisSweepLedger,
    SweepLedger,
    run_sweep,
    sweep_domain,
)
from regionvault.keyring import Keyring
from regionvault.manifest import BackupRef, Step
from regionvault.stores.memory import MemoryStore
from tests.unit import config_data, source_data
from tests.unit.test_chain import KEY_ID, T0, Clock, FakeSource, GCSRole, S3Role

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: the default pii cutoff: 29 days less a 1 h sweep interval and a 1 h deletion allowance
CUTOFF = 29 * DAY - 2 * HOUR


@dataclass
class Rig:
    ctx: DomainContext
    s3: MemoryStore
    gcs: MemoryStore
    #: the workers' clock (manifests' created_at, the sweep's now)
    clock: Clock
    #: the stores' clock (their ``modified``)
    store_clock: Clock
    keyring: Keyring
    tmp_path: Path

    def at(self, when: datetime) -> None:
        self.clock.now = self.store_clock.now = when

    def reconfigured(self, edit: Any) -> DomainContext:
        """A context over the same stores and keys with an edited configuration (a source
        removed, a data class changed)."""
        data = _config_data(self.tmp_path)
        edit(data["domains"]["eu"])
        config = parse_config(data, origin="test", env={})
        return DomainContext(config, Domain.EU, clock=self.clock, s3=self.s3, gcs=self.gcs,
                             keyring=self.keyring)

    def keys(self, backup_id: str, data_class: str | None = None) -> tuple[str, str]:
        ref = BackupRef.parse(backup_id)
        cls = data_class or self.ctx.config.source(Domain.EU, ref.source).data_class.value
        stem = f"eu/{cls}/{ref.source}/{backup_id}"
        return stem + ".rvb", stem + ".manifest.json"

    def holders(self, backup_id: str) -> set[str]:
        return {store.name for store in (self.s3, self.gcs)
                if any(backup_id in key for key in store.list_keys(""))}


def _config_data(tmp_path: Path) -> dict[str, Any]:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    return data


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    monkeypatch.setattr(context_module, "_residency_checked", set())
    config: Config = parse_config(_config_data(tmp_path), origin="test", env={})
    clock, store_clock = Clock(T0), Clock(T0)
    s3 = S3Role("rv-eu-primary", "eu-central-1", clock=store_clock)
    gcs = GCSRole("rv-eu-replica", "europe-west4", clock=store_clock)
    keyring = Keyring.local_only(Domain.EU, {KEY_ID: os.urandom(32)}, current=KEY_ID)
    ctx = DomainContext(config, Domain.EU, clock=clock, s3=s3, gcs=gcs, keyring=keyring)

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        return FakeSource(name=src.name, between=lambda: None)

    monkeypatch.setattr(chain, "open_source", open_source)
    return Rig(ctx, s3, gcs, clock, store_clock, keyring, tmp_path)


def backup_at(rig: Rig, when: datetime, source: str = "accounts") -> str:
    """A verified backup whose chain ran at ``when`` (both clocks)."""
    rig.at(when)
    backup_id = chain.new_backup(rig.ctx, source)
    for step in (chain.dump, chain.encrypt, chain.upload, chain.replicate):
        step(rig.ctx, backup_id)
    chain.verify(rig.ctx, backup_id, deep=True)
    return backup_id


def sweep(rig: Rig, when: datetime, ctx: DomainContext | None = None,
          **kwargs: Any) -> expiry.ExpiryReport:
    rig.at(when)
    return sweep_domain(ctx or rig.ctx, when, **kwargs)


# --- the rules, carried out ----------------------------------------------------------------------


def test_pii_goes_at_the_cutoff_from_both_stores_metadata_stays(rig: Rig) -> None:
    pii = backup_at(rig, T0)
    old_meta = backup_at(rig, T0, source="catalog")
    new_meta = backup_at(rig, T0 + DAY, source="catalog")

    just_before = sweep(rig, T0 + CUTOFF - timedelta(minutes=1))
    assert just_before.complete and just_before.removed_total == 0
    assert rig.holders(pii) == {"s3", "gcs"}
    for role in ("s3", "gcs"):
        assert just_before.stores[role].oldest_pii_age == CUTOFF - timedelta(minutes=1)
        assert just_before.stores[role].kept == 3

    report = sweep(rig, T0 + CUTOFF)
    assert report.complete
    for role in ("s3", "gcs"):
        assert report.stores[role].removed == {"pii": 1}
        assert report.stores[role].kept == 2
        assert report.stores[role].oldest_pii_age is None
    # the newest verified pii backup of its source is removed all the same, object and manifest
    assert rig.holders(pii) == set()
    assert rig.holders(old_meta) == rig.holders(new_meta) == {"s3", "gcs"}
    assert "s3: removed 1, kept 2" in report.summary()

    # a year later: the older metadata backup goes, the newest verified one stays past 365 days
    late = sweep(rig, T0 + 400 * DAY)
    assert late.stores["s3"].removed == late.stores["gcs"].removed == {"metadata": 1}
    assert rig.holders(old_meta) == set()
    assert rig.holders(new_meta) == {"s3", "gcs"}


def test_running_it_twice_does_no_harm(rig: Rig) -> None:
    pii = backup_at(rig, T0)
    first = sweep(rig, T0 + 30 * DAY)
    second = sweep(rig, T0 + 30 * DAY)
    assert first.removed_total == 2 and second.removed_total == 0
    assert second.complete and rig.holders(pii) == set()


def test_a_created_at_later_than_the_store_time_is_not_trusted(rig: Rig) -> None:
    # the workers' clock runs 20 days ahead of the stores': every manifest says the backup is
    # 20 days younger than the stores know it to be
    rig.clock.now, rig.store_clock.now = T0 + 20 * DAY, T0
    backup_id = chain.new_backup(rig.ctx, "accounts")
    for step in (chain.dump, chain.encrypt, chain.upload, chain.replicate):
        step(rig.ctx, backup_id)
    _, mkey = rig.keys(backup_id)
    manifest = manifest_store.read_manifest(rig.ctx, rig.s3, mkey)
    assert manifest is not None and manifest.created_at == T0 + 20 * DAY
    report = sweep(rig, T0 + CUTOFF)  # 9 days by the manifest, 29 less 2 h by the store
    assert report.stores["s3"].removed == report.stores["gcs"].removed == {"pii": 1}
    assert rig.holders(backup_id) == set()
    assert not report.quarantined


def test_a_store_that_fails_every_call_does_not_stop_the_other(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    pii = backup_at(rig, T0)
    calls: list[str] = []

    def down(name: str) -> Any:
        def fail(*args: object, **kwargs: object) -> Any:
            calls.append(name)
            raise TransientStoreError(f"cannot {name} s3://rv-eu-primary: connection refused")
        return fail

    for name in ("list_info", "list_keys", "get_bytes", "stat", "delete", "incomplete_uploads",
                 "abort_upload", "abort_incomplete_uploads", "put_bytes"):
        monkeypatch.setattr(rig.s3, name, down(name))
    report = sweep(rig, T0 + 30 * DAY)
    s3, gcs = report.stores["s3"], report.stores["gcs"]
    assert not s3.listed and not s3.complete and "connection refused" in s3.errors[0]
    assert calls == ["list_info"]  # not listed: nothing else is asked of it
    assert gcs.complete and gcs.removed == {"pii": 1}
    assert not report.complete and "s3: not swept" in report.summary()
    monkeypatch.undo()
    assert rig.holders(pii) == {"s3"}
    # back up: the next sweep removes the s3 copy
    assert sweep(rig, T0 + 30 * DAY + HOUR).stores["s3"].removed == {"pii": 1}
    assert rig.holders(pii) == set()


def test_a_store_that_stops_answering_mid_sweep_is_left_after_three_errors(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    backups = [backup_at(rig, T0 + i * timedelta(minutes=1)) for i in range(5)]
    deletes: list[str] = []

    def refuse(key: str) -> None:
        deletes.append(key)
        raise TransientStoreError(f"cannot delete s3://rv-eu-primary/{key}: 503")

    monkeypatch.setattr(rig.s3, "delete", refuse)
    report = sweep(rig, T0 + 30 * DAY)
    s3 = report.stores["s3"]
    assert len(deletes) == expiry.MAX_TRANSIENT_IN_A_ROW
    assert s3.listed and not s3.complete and s3.removed == {}
    assert "stopped answering" in s3.errors[-1]
    assert s3.oldest_pii_age is not None and s3.oldest_pii_age >= 30 * DAY
    assert report.stores["gcs"].removed == {"pii": 5}
    assert all(rig.holders(b) == {"s3"} for b in backups)


def test_manifests_that_cannot_be_read_leave_their_backups_for_the_next_sweep(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    backups = [backup_at(rig, T0 + i * timedelta(minutes=1)) for i in range(4)]
    reads: list[str] = []

    def unreadable(key: str) -> bytes:
        reads.append(key)
        raise TransientStoreError(f"cannot get s3://rv-eu-primary/{key}: 503")

    monkeypatch.setattr(rig.s3, "get_bytes", unreadable)
    report = sweep(rig, T0 + 30 * DAY)
    s3 = report.stores["s3"]
    assert len(reads) == expiry.MAX_TRANSIENT_IN_A_ROW and s3.removed == {}
    assert not s3.complete and "stopped answering" in s3.errors[-1] and not s3.quarantined
    assert report.stores["gcs"].removed == {"pii": 4}
    monkeypatch.undo()
    assert all(rig.holders(b) == {"s3"} for b in backups)
    assert sweep(rig, T0 + 30 * DAY + HOUR).stores["s3"].removed == {"pii": 4}


def test_one_refused_delete_does_not_stop_the_rest(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    stuck, *others = [backup_at(rig, T0 + i * timedelta(minutes=1)) for i in range(3)]
    real_delete = rig.s3.delete

    def delete(key: str) -> None:
        if stuck in key:
            raise PermanentStoreError(f"s3://rv-eu-primary/{key}: access denied")
        real_delete(key)

    monkeypatch.setattr(rig.s3, "delete", delete)
    report = sweep(rig, T0 + 30 * DAY)
    s3 = report.stores["s3"]
    assert s3.removed == {"pii": 2} and s3.kept == 1 and not s3.complete
    assert "access denied" in s3.errors[0]
    # what stays is counted: the alert on the oldest pii age sees it
    assert s3.oldest_pii_age == 30 * DAY
    assert all(rig.holders(b) == set() for b in others)


def test_the_object_goes_first_and_a_manifest_left_behind_goes_next_time(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id = backup_at(rig, T0)
    okey, mkey = rig.keys(backup_id)
    order: list[str] = []
    real_delete, real_abort = rig.gcs.delete, rig.gcs.abort_incomplete_uploads

    def abort(prefix: str) -> int:
        order.append(f"abort {prefix}")
        return real_abort(prefix)

    def delete(key: str) -> None:
        order.append(f"delete {key}")
        if key == mkey:
            raise TransientStoreError("the worker died here")
        real_delete(key)

    monkeypatch.setattr(rig.gcs, "abort_incomplete_uploads", abort)
    monkeypatch.setattr(rig.gcs, "delete", delete)
    first = sweep(rig, T0 + 30 * DAY)
    assert order == [f"abort {okey}", f"delete {okey}", f"delete {mkey}"]
    assert list(rig.gcs.list_keys("")) == [mkey] and not first.stores["gcs"].complete
    monkeypatch.undo()
    second = sweep(rig, T0 + 30 * DAY + HOUR)
    assert second.stores["gcs"].removed == {"pii": 1} and second.complete
    assert list(rig.gcs.list_keys("")) == []


def test_open_uploads_of_a_removed_backup_and_stale_ones_are_aborted(rig: Rig) -> None:
    backup_id = backup_at(rig, T0)
    okey, _ = rig.keys(backup_id)
    # an open upload under the backup's key, and one under a key nothing else knows of
    rig.s3.part_size = 1024
    for key in (okey, "eu/pii/accounts/eu.accounts.20261101T020000Z.00000000.rvb"):
        rig.s3.fail_upload_after(1)
        with pytest.raises(TransientStoreError):
            rig.s3.put_bytes(key, os.urandom(4096))
    assert len(rig.s3.incomplete_uploads("eu/")) == 2
    report = sweep(rig, T0 + 30 * DAY)
    assert rig.s3.incomplete_uploads("eu/") == []
    assert report.stores["s3"].uploads_aborted == 1  # the other went with its backup
    assert report.complete


def test_a_young_open_upload_is_left_alone(rig: Rig) -> None:
    rig.s3.part_size = 1024
    rig.s3.fail_upload_after(1)
    with pytest.raises(TransientStoreError):
        rig.s3.put_bytes("eu/pii/accounts/eu.accounts.20261101T020000Z.00000000.rvb",
                         os.urandom(4096))
    report = sweep(rig, T0 + CUTOFF - HOUR)
    assert report.stores["s3"].uploads_aborted == 0
    assert len(rig.s3.incomplete_uploads("eu/")) == 1


# --- every prefix of the domain ------------------------------------------------------------------


def test_backups_of_a_removed_source_still_expire(rig: Rig) -> None:
    gone = backup_at(rig, T0)
    ctx = rig.reconfigured(lambda d: d.update(sources=[source_data("catalog", "metadata")]))
    with pytest.raises(Exception, match="not configured"):
        ctx.config.source(Domain.EU, "accounts")
    assert sweep(rig, T0 + CUTOFF - HOUR, ctx).removed_total == 0
    report = sweep(rig, T0 + CUTOFF, ctx)
    assert report.stores["s3"].removed == report.stores["gcs"].removed == {"pii": 1}
    assert rig.holders(gone) == set()


def test_a_domain_without_sources_is_still_swept(rig: Rig) -> None:
    gone = backup_at(rig, T0)
    ctx = rig.reconfigured(lambda d: d.update(sources=[]))
    assert sweep(rig, T0 + 30 * DAY, ctx).removed_total == 2
    assert rig.holders(gone) == set()


def test_a_source_changed_from_metadata_to_pii_expires_by_the_pii_rule(rig: Rig) -> None:
    # its old backups sit under eu/metadata/catalog/ with manifests that say metadata
    old = backup_at(rig, T0, source="catalog")
    assert rig.keys(old)[0].startswith("eu/metadata/catalog/")
    assert sweep(rig, T0 + 30 * DAY).removed_total == 0  # still metadata: kept

    def now_pii(d: dict[str, Any]) -> None:
        d["sources"] = [source_data("accounts", "pii"), source_data("catalog", "pii")]

    report = sweep(rig, T0 + 30 * DAY + HOUR, rig.reconfigured(now_pii))
    assert report.stores["s3"].removed == report.stores["gcs"].removed == {"pii": 1}
    assert rig.holders(old) == set()


def test_a_source_changed_from_pii_to_metadata_keeps_the_pii_rule_for_its_old_backups(
        rig: Rig) -> None:
    old = backup_at(rig, T0)  # under eu/pii/accounts/

    def now_metadata(d: dict[str, Any]) -> None:
        d["sources"] = [source_data("accounts", "metadata"), source_data("catalog", "metadata")]

    report = sweep(rig, T0 + 30 * DAY, rig.reconfigured(now_metadata))
    assert report.stores["s3"].removed == {"pii": 1}
    assert rig.holders(old) == set()


def test_an_unknown_data_class_prefix_counts_as_pii(rig: Rig) -> None:
    backup_id = backup_at(rig, T0, source="catalog")
    for store in (rig.s3, rig.gcs):  # moved by hand under a class regionvault does not know
        for key in list(store.list_keys("eu/metadata/")):
            store.put_bytes(key.replace("/metadata/", "/archive/"), store.get_bytes(key))
            store.delete(key)
    report = sweep(rig, T0 + 30 * DAY)
    # its manifest now sits under another key than it was signed for: quarantined too
    assert report.stores["s3"].removed == {"pii": 1} and report.stores["gcs"].removed == {"pii": 1}
    assert rig.holders(backup_id) == set()


def test_keys_outside_the_layout_are_quarantined_and_aged_by_the_store(rig: Rig) -> None:
    rig.at(T0)
    rig.gcs.put_bytes("eu/pii/accounts/notes.txt", b"someone's copy")
    report = sweep(rig, T0 + DAY)
    [item] = report.stores["gcs"].quarantined
    assert item.key == "eu/pii/accounts/notes.txt" and item.backup_id is None
    assert "outside the layout" in item.reason
    assert sweep(rig, T0 + CUTOFF).stores["gcs"].removed == {"pii": 1}
    assert list(rig.gcs.list_keys("")) == []


def test_a_source_variant_sweeps_only_that_source(rig: Rig) -> None:
    accounts = backup_at(rig, T0)
    rig.at(T0)
    rig.s3.put_bytes("eu/pii/other/stray.bin", b"x")
    report = sweep(rig, T0 + 30 * DAY, source="catalog")
    assert report.removed_total == 0 and report.complete
    report = sweep(rig, T0 + 30 * DAY, source="accounts")
    assert report.removed_total == 2 and rig.holders(accounts) == set()
    assert list(rig.s3.list_keys("")) == ["eu/pii/other/stray.bin"]


# --- quarantine ----------------------------------------------------------------------------------


def test_a_malformed_manifest_is_quarantined_and_the_rest_is_swept(rig: Rig) -> None:
    broken = backup_at(rig, T0, source="catalog")  # metadata: kept 365 days if trusted
    other_meta = backup_at(rig, T0 + HOUR, source="catalog")
    pii = backup_at(rig, T0 + HOUR)
    _, mkey = rig.keys(broken)
    rig.store_clock.now = T0 + 2 * DAY  # the manifest is rewritten later than its object
    rig.s3.put_bytes(mkey, b'{"version": 2, "backup_id": ')
    noted: list[Quarantined] = []

    report = sweep(rig, T0 + 3 * DAY, on_quarantine=noted.append)
    [item] = report.stores["s3"].quarantined
    assert noted == [item]
    assert (item.store, item.key, item.backup_id) == ("s3", mkey, broken)
    assert "cannot be trusted" in item.reason
    assert report.complete and not report.stores["gcs"].quarantined
    assert report.stores["s3"].kept == 3

    # past the pii cutoff, by the object's store time: the s3 copy goes as pii, the other
    # backups are judged as usual in the same sweep
    report = sweep(rig, T0 + CUTOFF + 2 * HOUR, on_quarantine=noted.append)
    assert report.stores["s3"].removed == {"pii": 2}
    assert report.stores["gcs"].removed == {"pii": 1}
    assert rig.holders(broken) == {"gcs"}  # its gcs manifest is sound: metadata, kept
    assert rig.holders(other_meta) == {"s3", "gcs"}
    assert rig.holders(pii) == set()
    # reported by every sweep that finds it, until it is gone
    assert [q.backup_id for q in report.stores["s3"].quarantined] == [broken]
    assert sweep(rig, T0 + CUTOFF + 3 * HOUR).quarantined == ()


def test_a_manifest_copied_under_another_backup_is_quarantined(rig: Rig) -> None:
    first = backup_at(rig, T0, source="catalog")
    second = backup_at(rig, T0 + HOUR, source="catalog")
    rig.gcs.put_bytes(rig.keys(second)[1], rig.gcs.get_bytes(rig.keys(first)[1]))
    report = sweep(rig, T0 + DAY)
    [item] = report.stores["gcs"].quarantined
    assert item.backup_id == second and item.key == rig.keys(second)[1]


def test_an_object_without_a_manifest_is_reported_after_the_grace_and_aged_as_pii(
        rig: Rig) -> None:
    backup_id = backup_at(rig, T0, source="catalog")
    okey, mkey = rig.keys(backup_id)
    rig.s3.delete(mkey)
    grace = timedelta(seconds=rig.ctx.config.reconcile.orphan_after_seconds)
    early = sweep(rig, T0 + grace - timedelta(minutes=1))
    assert early.quarantined == ()  # its chain may still be writing the manifest
    later = sweep(rig, T0 + grace + timedelta(minutes=1))
    [item] = later.stores["s3"].quarantined
    assert item.key == okey and "no manifest" in item.reason
    gone = sweep(rig, T0 + CUTOFF)
    assert gone.stores["s3"].removed == {"pii": 1}  # a metadata prefix, judged as pii
    assert rig.holders(backup_id) == {"gcs"}


def test_a_manifest_without_its_object_is_removed_with_its_backup(rig: Rig) -> None:
    backup_id = backup_at(rig, T0)
    rig.gcs.delete(rig.keys(backup_id)[0])
    report = sweep(rig, T0 + CUTOFF)
    assert report.stores["gcs"].removed == {"pii": 1} and report.quarantined == ()
    assert rig.holders(backup_id) == set()


# --- the ledger ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def ledger(request: pytest.FixtureRequest) -> SweepLedger:
    if request.param == "memory":
        return MemorySweepLedger()
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True)
    client.flushdb()
    return RedisSweepLedger(client)


def test_the_ledger_records_complete_sweeps_and_notes_each_quarantine_once(
        rig: Rig, ledger: SweepLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = backup_at(rig, T0, source="catalog")
    rig.gcs.put_bytes(rig.keys(broken)[1], b"not json")
    noted: list[Quarantined] = []
    first_at = T0 + DAY
    rig.at(first_at)
    first = run_sweep(rig.ctx, ledger, first_at, on_new_quarantine=noted.append)
    assert first.complete
    assert ledger.last_sweeps("eu") == {"s3": first_at, "gcs": first_at}
    assert [q.key for q in noted] == [rig.keys(broken)[1]]

    def down(*_: object, **__: object) -> None:
        raise TransientStoreError("cannot list s3://rv-eu-primary: connection refused")

    monkeypatch.setattr(rig.s3, "list_info", down)
    second_at = first_at + HOUR
    rig.at(second_at)
    second = run_sweep(rig.ctx, ledger, second_at, on_new_quarantine=noted.append)
    assert not second.complete
    assert ledger.last_sweeps("eu") == {"s3": first_at, "gcs": second_at}
    assert len(noted) == 1  # already reported: not noted again
    summary = ledger.last_summary("eu")
    assert summary["complete"] == "no" and "connection refused" in summary["errors:s3"]
    assert summary["quarantined:gcs"] == rig.keys(broken)[1]
    assert summary["pii_cutoff_seconds"] == str(int(CUTOFF.total_seconds()))
    assert ledger.last_sweeps("au") == {} and ledger.last_summary("au") == {}


def test_redis_ledger_layout(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    RedisSweepLedger(client).record_sweep("eu", "s3", T0)
    RedisSweepLedger(client).record_sweep("eu", "gcs", T0 + HOUR)
    assert client.hgetall("regionvault:expiry:eu") == {
        "s3": T0.isoformat(), "gcs": (T0 + HOUR).isoformat()}


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_count_removals_and_quarantine_and_show_the_oldest_pii(rig: Rig) -> None:
    from prometheus_client import REGISTRY

    from workers.metrics import record_expiry, record_last_sweeps

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"domain": "eu", **labels})

    before = value("regionvault_expiry_removed_total", store="gcs", data_class="pii") or 0.0
    quarantined = value("regionvault_expiry_quarantined_total", store="s3") or 0.0
    backup_at(rig, T0)
    young = backup_at(rig, T0 + 10 * DAY)
    rig.s3.put_bytes(rig.keys(young)[1], b"garbled")
    report = sweep(rig, T0 + 30 * DAY)
    record_expiry(report)
    assert value("regionvault_expiry_removed_total", store="gcs", data_class="pii") == before + 1
    assert value("regionvault_expiry_removed_total", store="gcs", data_class="metadata") \
        is not None
    assert value("regionvault_expiry_quarantined_total", store="s3") == quarantined + 1
    assert value("regionvault_oldest_pii_age_seconds", store="s3") == (20 * DAY).total_seconds()
    assert value("regionvault_expiry_last_sweep_timestamp_seconds", store="s3") \
        == report.at.timestamp()
    record_last_sweeps("eu", {"s3": T0 + 40 * DAY})
    assert value("regionvault_expiry_last_sweep_timestamp_seconds", store="s3") \
        == (T0 + 40 * DAY).timestamp()
    assert report.as_dict()["stores"]["s3"]["quarantined"][0]["backup_id"] == young  # type: ignore[index]


def test_the_manifest_of_a_kept_backup_is_not_touched(rig: Rig) -> None:
    backup_id = backup_at(rig, T0, source="catalog")
    before = {key: rig.s3.get_bytes(key) for key in rig.s3.list_keys("")}
    sweep(rig, T0 + 30 * DAY)
    assert {key: rig.s3.get_bytes(key) for key in rig.s3.list_keys("")} == before
    manifest = manifest_store.read_manifest(rig.ctx, rig.s3, rig.keys(backup_id)[1])
    assert manifest is not None and Step.EXPIRE not in manifest.steps
