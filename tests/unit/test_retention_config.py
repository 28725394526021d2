"""Issue 9 in the configuration: the 29-day ceiling holds by construction (the sweep's margin
is bounded and comes off the ceiling), the development clock offset is refused outside
development, and beat sweeps every domain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from beat_schedule import build_beat_schedule
from regionvault.config import PII_MAX_MARGIN_SECONDS, Config, load_config, parse_config
from regionvault.context import DomainContext, clock_for, utc_now
from regionvault.devstack import sample
from regionvault.domains import Domain
from regionvault.errors import ConfigError
from tests.unit import config_data

ROOT = Path(__file__).resolve().parents[2]
DAY = timedelta(days=1)


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, origin="test", env={})


def with_retention(**retention: int) -> dict[str, Any]:
    data = config_data("eu")
    data["retention"] = retention
    return data


@pytest.mark.parametrize(("retention", "cutoff"), [
    ({}, 29 * DAY - timedelta(hours=2)),  # the defaults: pii_days 29, 1 h + 1 h
    ({"pii_days": 29}, 29 * DAY - timedelta(hours=2)),
    ({"pii_days": 28}, 28 * DAY),
    ({"pii_days": 29, "sweep_interval_seconds": 600, "deletion_allowance_seconds": 0},
     29 * DAY - timedelta(minutes=10)),
    ({"sweep_interval_seconds": 20 * 3600, "deletion_allowance_seconds": 4 * 3600}, 28 * DAY),
])
def test_accepted_retention_and_its_cutoff(retention: dict[str, int], cutoff: timedelta) -> None:
    config = parse(with_retention(**retention)).retention
    assert config.pii_cutoff() == cutoff
    margin = timedelta(seconds=config.sweep_interval_seconds + config.deletion_allowance_seconds)
    assert config.pii_cutoff() + margin <= 29 * DAY  # no pii byte outlives the ceiling


@pytest.mark.parametrize(("retention", "expected"), [
    pytest.param({"pii_days": 30}, ["retention.pii_days", "29", "30"], id="pii-30-days"),
    pytest.param({"sweep_interval_seconds": 86400, "deletion_allowance_seconds": 1},
                 ["retention.sweep_interval_seconds (86400)",
                  "retention.deletion_allowance_seconds (1)", "retention.pii_days (29)",
                  str(PII_MAX_MARGIN_SECONDS)], id="margin-over-a-day"),
    pytest.param({"pii_days": 7, "sweep_interval_seconds": 3600,
                  "deletion_allowance_seconds": 30 * 3600},
                 ["retention.deletion_allowance_seconds (108000)", "retention.pii_days (7)"],
                 id="allowance-over-a-day"),
    pytest.param({"sweep_interval_seconds": 59}, ["retention.sweep_interval_seconds", "60"],
                 id="interval-under-a-minute"),
    pytest.param({"deletion_allowance_seconds": -1},
                 ["retention.deletion_allowance_seconds"], id="negative-allowance"),
])
def test_rejected_retention_names_the_fields(retention: dict[str, int],
                                             expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_retention(**retention))
    message = str(info.value)
    assert message.startswith("configuration test is invalid")
    for part in expected:
        assert part in message, message


def test_the_margin_bound_itself_is_accepted() -> None:
    retention = parse(with_retention(sweep_interval_seconds=PII_MAX_MARGIN_SECONDS - 60,
                                     deletion_allowance_seconds=60)).retention
    assert retention.pii_cutoff() == 28 * DAY


def test_shipped_configurations_still_validate(tmp_path: Path) -> None:
    # the dev stack's sample and the compose file both ask for pii_days 29
    data = sample.sample_config(data_dir=tmp_path, sources=sample.SAMPLE_SOURCES,
                                **_sample_files(tmp_path))
    assert data["retention"]["pii_days"] == 29
    assert parse(data).retention.pii_cutoff() == 29 * DAY - timedelta(hours=2)
    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "regionvault.yaml").read_text())
    assert parse(compose).retention.pii_cutoff() == 29 * DAY - timedelta(hours=2)


def _sample_files(tmp_path: Path) -> dict[str, Any]:
    return {
        "dsn_files": {(d, s.name): tmp_path / f"{d.value}-{s.name}.dsn"
                      for d in Domain for s in sample.SAMPLE_SOURCES},
        "keyring_files": {d: tmp_path / f"{d.value}.keyring.json" for d in Domain},
        "scratch_dsn_file": tmp_path / "scratch.dsn",
        "restore_target_files": {d: tmp_path / f"{d.value}-target.dsn" for d in Domain},
    }


# --- the development clock offset ----------------------------------------------------------------


def test_a_clock_offset_without_development_is_rejected() -> None:
    data = config_data("eu")
    data["development_clock_offset_seconds"] = 30 * 86400
    with pytest.raises(ConfigError) as info:
        parse(data)
    assert "development_clock_offset_seconds is 2592000" in str(info.value)
    assert "development: true" in str(info.value)


@pytest.mark.parametrize("offset", [30 * 86400, -3600])
def test_a_clock_offset_moves_the_clock_only_in_development(offset: int) -> None:
    data = config_data("eu")
    data["development"] = True
    data["development_clock_offset_seconds"] = offset
    config = parse(data)
    before = datetime.now(UTC)
    moved = clock_for(config)()
    assert before + timedelta(seconds=offset) <= moved
    assert moved <= datetime.now(UTC) + timedelta(seconds=offset)


def test_no_offset_means_the_real_clock() -> None:
    assert clock_for(parse(config_data("eu"))) is utc_now
    data = config_data("eu")
    data["development"] = True
    assert clock_for(parse(data)) is utc_now
    # even a production configuration built without validation is never moved
    forged = parse(config_data("eu")).model_copy(
        update={"development_clock_offset_seconds": 86400})
    assert clock_for(forged) is utc_now


def test_the_worker_context_uses_the_configured_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import runtime

    data = config_data("eu")
    data.update(development=True, development_clock_offset_seconds=10 * 86400)
    path = tmp_path / "regionvault.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(runtime, "worker_config", lambda: load_config(path, env={}))
    runtime.context_for.cache_clear()
    try:
        ctx = runtime.context_for("eu")
        assert isinstance(ctx, DomainContext)
        assert ctx.clock() - datetime.now(UTC) > 9 * DAY
    finally:
        runtime.context_for.cache_clear()


# --- beat ----------------------------------------------------------------------------------------


def test_every_domain_is_swept_even_without_sources() -> None:
    data = config_data()
    data["domains"]["au"]["sources"] = []
    data["retention"] = {"sweep_interval_seconds": 1800}
    schedule = build_beat_schedule(parse(data))
    entries = {k: v for k, v in schedule.items() if k.startswith("expire-")}
    assert set(entries) == {"expire-us", "expire-eu", "expire-au"}
    assert "backup-au" not in schedule
    for name, entry in entries.items():
        domain = name.removeprefix("expire-")
        assert entry["task"] == "regionvault.expire_domain"
        assert entry["kwargs"] == {"domain": domain}
        assert entry["options"] == {"queue": f"backup.{domain}"}  # never dropped when late
        assert entry["schedule"] == 1800


def test_the_task_is_registered() -> None:
    import tasks  # noqa: F401
    from workers.app import app

    assert "regionvault.expire_domain" in app.tasks
