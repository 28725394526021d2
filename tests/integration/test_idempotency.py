"""Acceptance 7: running any single step twice leaves one object and one manifest per store
and the same final state."""

from __future__ import annotations

import pytest

from regionvault import chain, manifest_store
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import STEPS, BackupRef, Manifest
from tests.integration.helpers import config_of, context, object_names, run_step

pytestmark = pytest.mark.stack

STABLE = ("backup_id", "domain", "source", "data_class", "created_at", "wrappings",
          "plaintext_size", "plaintext_sha256", "ciphertext_size",
          "ciphertext_sha256", "ciphertext_crc32c", "object_key")


def _stable(manifest: Manifest) -> dict[str, object]:
    return {field: getattr(manifest, field) for field in STABLE} | {
        "steps": sorted(manifest.steps)}


def test_every_step_twice(stack: DevStack) -> None:
    domain, source = Domain.US, "catalog"
    ctx = context(stack, domain)
    backup_id = chain.new_backup(ctx, source)
    outcomes = []
    for step in STEPS:
        first = run_step(stack, step, backup_id, domain, source)
        second = run_step(stack, step, backup_id, domain, source)
        outcomes.append((step, first, second))
        if step.value in ("dump", "encrypt", "upload", "replicate"):
            assert second["skipped"] is True, f"{step} did its work twice: {second}"

    dcfg = config_of(stack).domain(domain)
    names = object_names(stack)
    for bucket in (f"s3://{dcfg.s3_bucket}", f"gs://{dcfg.gcs_bucket}"):
        mine = sorted(k for k in names[bucket] if backup_id in k)
        assert len(mine) == 2, mine
        assert mine[0].endswith(".manifest.json") and mine[1].endswith(".rvb")

    _, src = manifest_store.resolve(ctx, backup_id)
    mkey = manifest_store.keys_of(BackupRef.parse(backup_id), src)[1]
    s3_manifest = manifest_store.read_manifest(ctx, ctx.s3, mkey)
    gcs_manifest = manifest_store.read_manifest(ctx, ctx.gcs, mkey)
    assert s3_manifest is not None and gcs_manifest is not None
    assert s3_manifest.verified and set(s3_manifest.steps) == set(STEPS)
    assert _stable(s3_manifest) == _stable(gcs_manifest)
    assert not config_of(stack).spool_for(domain).joinpath(backup_id).exists()


def test_a_step_whose_input_is_gone_names_the_step_to_run_again(stack: DevStack) -> None:
    from regionvault.errors import StepOrderError
    from regionvault.manifest import Step

    domain, source = Domain.AU, "accounts"
    backup_id = chain.new_backup(context(stack, domain), source)
    with pytest.raises(StepOrderError, match="run step 'dump' again"):
        run_step(stack, Step.UPLOAD, backup_id, domain, source)
    with pytest.raises(StepOrderError, match="run step 'upload' again"):
        run_step(stack, Step.VERIFY, backup_id, domain, source)
