"""Acceptance 5: with the clock 40 days ahead, expire removes pii backups older than 29 days
from both clouds and keeps the newest verified one; metadata backups are kept; a configuration
asking for 30 days of pii retention is rejected naming the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from regionvault import chain, manifest_store
from regionvault.catalogue import list_backups
from regionvault.context import DomainContext, utc_now
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import BackupRef, Step
from tests.integration.helpers import config_of, object_names, regionvault_cli, run_chain

pytestmark = pytest.mark.stack


def _holders(stack: DevStack, backup_id: str) -> set[str]:
    return {bucket for bucket, keys in object_names(stack).items()
            if any(backup_id in key for key in keys)}


def test_expire_forty_days_later(stack: DevStack) -> None:
    config = config_of(stack)
    dcfg = config.domain(Domain.EU)
    both = {f"s3://{dcfg.s3_bucket}", f"gs://{dcfg.gcs_bucket}"}
    old_pii = [run_chain(stack, Domain.EU, "ledger") for _ in range(2)]
    old_metadata = run_chain(stack, Domain.EU, "catalog")
    for backup_id in [*old_pii, old_metadata]:
        assert _holders(stack, backup_id) == both

    later = utc_now() + timedelta(days=40)
    ctx = DomainContext(config, Domain.EU, clock=lambda: later)
    # the newest backup is taken "40 days later" by running the core steps with that clock
    newest = chain.new_backup(ctx, "ledger")
    chain.dump(ctx, newest)
    chain.encrypt(ctx, newest)
    chain.upload(ctx, newest)
    chain.replicate(ctx, newest)
    chain.verify(ctx, newest, deep=True)
    outcome = chain.expire(ctx, newest)

    # Step 6 runs the expiry sweep for the source, which ages a backup by the earlier of its
    # manifest's created_at and the store's own timestamp. The stores stamped every backup
    # here with the real time, 40 days before this clock, the newest one included: a
    # created_at later than the store's time is never trusted, so every pii backup of the
    # source is past the ceiling, even the newest verified one.
    assert outcome.detail.endswith("kept 0"), outcome.detail
    for backup_id in [*old_pii, newest]:
        assert _holders(stack, backup_id) == set(), f"{backup_id} outlived 29 days"
    assert list_backups(ctx, "ledger") == []

    # metadata is kept for 365 days: the same clock removes nothing from it
    meta_outcome = chain.expire(ctx, old_metadata)
    assert meta_outcome.detail.startswith("removed 0")
    assert _holders(stack, old_metadata) == both
    kept = manifest_store.read_manifest(ctx, ctx.gcs, manifest_store.keys_of(
        BackupRef.parse(old_metadata), config.source(Domain.EU, "catalog"))[1])
    assert kept is not None and Step.EXPIRE in kept.steps


def test_thirty_days_of_pii_retention_is_rejected(stack: DevStack, tmp_path: Path) -> None:
    assert stack.config is not None
    data = yaml.safe_load(Path(stack.env["REGIONVAULT_CONFIG"]).read_text())
    data["retention"]["pii_days"] = 30
    bad = tmp_path / "too-long.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = regionvault_cli(stack, "list", "--config", str(bad))
    assert result.returncode == 2
    assert "retention.pii_days" in result.stderr
    assert "at most 29 days" in result.stderr
