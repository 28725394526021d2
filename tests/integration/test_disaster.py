"""Issue 3, the second cloud: `restore --from auto` falls back to GCS when the S3 copy is
corrupt or S3 is down, and `dr-restore` brings a whole domain back from GCS alone.

These tests stop the S3 emulator, so they run on a stack of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from regionvault import manifest_store
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import BackupRef
from tests.integration.conftest import running_stack
from tests.integration.helpers import context, regionvault_cli, s3_client

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def outage_stack() -> Iterator[DevStack]:
    with running_stack("rv-test-outage-") as dev:
        yield dev


@pytest.fixture(scope="module")
def eu_backups(outage_stack: DevStack) -> dict[str, str]:
    """One verified backup of every eu source, taken while both clouds are up."""
    ids = {}
    for src in context(outage_stack, Domain.EU).dcfg.sources:
        result = regionvault_cli(outage_stack, "backup", "--domain", "eu", "--source", src.name,
                                 "--wait", "--deep")
        assert result.returncode == 0, result.stdout + result.stderr
        ids[src.name] = result.stdout.split("backup ", 1)[1].split()[0]
    return ids


def _fresh(stack: DevStack, name: str) -> str:
    assert stack.postgres is not None
    stack.postgres.drop_database(name)
    stack.postgres.create_database(name)
    return stack.postgres.dsn(name)


def _source_fingerprint(stack: DevStack, source: str) -> dict[str, tuple[int, str]]:
    assert stack.postgres is not None
    return sample.fingerprint(stack.postgres.dsn(sample.database_name(Domain.EU, source)))


def test_auto_rejects_a_corrupted_s3_copy_and_restores_from_gcs(
        outage_stack: DevStack, eu_backups: dict[str, str]) -> None:
    backup_id = eu_backups["catalog"]
    ctx = context(outage_stack, Domain.EU)
    okey, _ = manifest_store.keys_of(BackupRef.parse(backup_id), ctx.config.source("eu", "catalog"))
    s3 = s3_client(outage_stack, "eu-central-1")
    data = s3.get_object(Bucket=ctx.dcfg.s3_bucket, Key=okey)["Body"].read()
    flipped = data[:100] + bytes([data[100] ^ 0x40]) + data[101:]
    s3.put_object(Bucket=ctx.dcfg.s3_bucket, Key=okey, Body=flipped)

    target = _fresh(outage_stack, "auto_corrupt")
    result = regionvault_cli(outage_stack, "restore", backup_id, "--from", "auto",
                             "--target", target, "--local")
    assert result.returncode == 0, result.stderr
    assert f"restored backup {backup_id} from gcs" in result.stdout
    assert "fell back to GCS" in result.stderr
    assert "does not match its manifest" in result.stderr  # the corruption is reported
    assert sample.fingerprint(target) == _source_fingerprint(outage_stack, "catalog")


def test_auto_restores_from_gcs_when_s3_is_stopped(
        outage_stack: DevStack, eu_backups: dict[str, str]) -> None:
    assert outage_stack.s3 is not None
    outage_stack.s3.stop()
    target = _fresh(outage_stack, "auto_outage")
    result = regionvault_cli(outage_stack, "restore", eu_backups["accounts"], "--from", "auto",
                             "--target", target, "--local")
    assert result.returncode == 0, result.stderr
    assert "from gcs" in result.stdout
    assert "fell back to GCS" in result.stderr and "S3" in result.stderr
    assert sample.fingerprint(target) == _source_fingerprint(outage_stack, "accounts")


def test_dr_restore_brings_back_every_eu_source_from_gcs_alone(
        outage_stack: DevStack, eu_backups: dict[str, str]) -> None:
    """AWS gone: S3 and KMS both stopped. EU's data keys are wrapped by KMS and by the local
    escrow key; the escrow opens every backup from the GCS copy."""
    assert outage_stack.postgres is not None
    assert outage_stack.s3 is not None and not outage_stack.s3.process.alive()
    assert outage_stack.kms is not None
    ctx = context(outage_stack, Domain.EU)
    for backup_id in eu_backups.values():
        ref = BackupRef.parse(backup_id)
        _, mkey = manifest_store.keys_of(ref, ctx.config.source("eu", ref.source))
        manifest = manifest_store.read_manifest(ctx, ctx.gcs, mkey)
        assert manifest is not None
        assert sorted(w.wrapper for w in manifest.wrappings) == ["aws-kms", "local"]
    outage_stack.kms.stop()
    assert not outage_stack.kms.process.alive()
    for source in eu_backups:
        outage_stack.postgres.drop_database(f"dr_{source}")
    result = regionvault_cli(outage_stack, "dr-restore", "--domain", "eu", "--from", "gcs",
                             "--target-server", outage_stack.postgres.dsn(),
                             "--database-template", "dr_{source}", "--parallel", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    for source, backup_id in eu_backups.items():
        assert backup_id in result.stdout
        restored = sample.fingerprint(outage_stack.postgres.dsn(f"dr_{source}"))
        assert restored == _source_fingerprint(outage_stack, source)
