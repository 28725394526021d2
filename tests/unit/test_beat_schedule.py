"""The beat schedule is data built from the configuration: one backup entry per domain with
sources, one drill entry per domain with a scratch server, each to that domain's queue."""

from __future__ import annotations

from beat_schedule import build_beat_schedule
from regionvault.config import parse_config
from tests.unit import config_data


def test_one_backup_entry_per_domain_in_its_own_queue() -> None:
    data = config_data()
    for dcfg in data["domains"].values():
        dcfg["sources"] = [{"name": "accounts", "dsn": {"env": "X"}, "data_class": "pii"}]
    data["domains"]["eu"]["schedule"] = "30 1 * * *"
    schedule = build_beat_schedule(parse_config(data, origin="test", env={}))
    backups = {k: v for k, v in schedule.items() if k.startswith("backup-")}
    assert set(backups) == {"backup-us", "backup-eu", "backup-au"}
    for name, entry in backups.items():
        domain = name.removeprefix("backup-")
        assert entry["task"] == "regionvault.backup_domain"
        assert entry["kwargs"] == {"domain": domain}
        assert entry["options"] == {"queue": f"backup.{domain}"}
    eu = backups["backup-eu"]["schedule"]
    assert eu.minute == {30} and eu.hour == {1}
    assert not any(k.startswith("restore-drill-") for k in schedule)


def test_drill_entries_only_where_a_scratch_server_is_configured() -> None:
    data = config_data()
    for dcfg in data["domains"].values():
        dcfg["sources"] = [{"name": "accounts", "dsn": {"env": "X"}, "data_class": "pii"}]
    data["domains"]["au"]["drill"] = {"scratch_dsn": {"env": "SCRATCH"}, "schedule": "0 5 * * 1"}
    schedule = build_beat_schedule(parse_config(data, origin="test", env={}))
    drills = {k: v for k, v in schedule.items() if k.startswith("restore-drill-")}
    assert list(drills) == ["restore-drill-au"]
    entry = drills["restore-drill-au"]
    assert entry["task"] == "regionvault.restore_drill"
    assert entry["options"] == {"queue": "backup.au"}
    assert entry["schedule"].day_of_week == {1} and entry["schedule"].hour == {5}
