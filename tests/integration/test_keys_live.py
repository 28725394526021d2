"""Issue 11, acceptance 1 and 2, on a stack of its own with real workers:

1. EU's data keys are wrapped by AWS KMS (moto's server) and the local escrow key. A backup
   verifies and restores; with KMS stopped, the GCS copy restores through the escrow.
2. ``keys rotate`` reaches the running workers with no restart; ``keys rewrap`` killed half-way
   and run again completes; ``keys retire`` of the old keys succeeds; every backup restores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from regionvault import manifest_store
from regionvault.devstack import sample
from regionvault.devstack.stack import DEV_AWS_ENV, DevStack, environment
from regionvault.domains import Domain
from regionvault.errors import KeyServiceUnavailable
from regionvault.keyring import read_keyring_document
from regionvault.keys import needs_rewrap
from regionvault.kms import AwsKmsWrapper
from regionvault.manifest import BackupRef, Manifest
from tests.integration.conftest import running_stack
from tests.integration.helpers import context, regionvault_cli

pytestmark = pytest.mark.stack

EU = Domain.EU


@pytest.fixture(scope="module")
def keys_stack() -> Iterator[DevStack]:
    # the in-process reads below use moto's credentials
    with running_stack("rv-test-keys-") as dev, environment(DEV_AWS_ENV):
        yield dev


def _backup(stack: DevStack, source: str) -> str:
    result = regionvault_cli(stack, "backup", "--domain", "eu", "--source", source, "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split("backup ", 1)[1].split()[0]


def _manifests(stack: DevStack, backup_id: str) -> dict[str, Manifest]:
    ctx = context(stack, EU)
    ref = BackupRef.parse(backup_id)
    _, mkey = manifest_store.keys_of(ref, ctx.config.source("eu", ref.source))
    found = {}
    for store in (ctx.s3, ctx.gcs):
        manifest = manifest_store.read_manifest(ctx, store, mkey)
        assert manifest is not None, f"no {store.name} manifest of {backup_id}"
        found[store.name] = manifest
    return found


def _restores(stack: DevStack, backup_id: str, role: str, name: str,
              env: dict[str, str] | None = None) -> None:
    """Restore ``backup_id`` from ``role`` into a fresh database; it must equal its source
    (the sample sources are not written to while this module runs)."""
    assert stack.postgres is not None
    stack.postgres.drop_database(name)
    stack.postgres.create_database(name)
    result = regionvault_cli(stack, "restore", backup_id, "--from", role,
                             "--target", stack.postgres.dsn(name), "--local", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"from {role}" in result.stdout
    source = BackupRef.parse(backup_id).source
    expected = sample.fingerprint(stack.postgres.dsn(sample.database_name(EU, source)))
    assert sample.fingerprint(stack.postgres.dsn(name)) == expected


def _keyring_file(stack: DevStack) -> Path:
    dcfg = context(stack, EU).dcfg
    assert dcfg.keyring is not None
    return dcfg.keyring.file


def test_kms_wraps_and_the_escrow_restores_from_gcs_with_kms_stopped(
        keys_stack: DevStack) -> None:
    stack = keys_stack
    assert stack.kms is not None
    backup_id = _backup(stack, "catalog")
    ctx = context(stack, EU)
    for manifest in _manifests(stack, backup_id).values():
        kms_wrapping = next(w for w in manifest.wrappings if w.wrapper == "aws-kms")
        local_wrapping = next(w for w in manifest.wrappings if w.wrapper == "local")
        assert kms_wrapping.key_id.startswith(f"arn:aws:kms:{ctx.dcfg.aws_region}:")
        # KMS alone opens it, to the same data key the escrow holds
        kms = next(w for w in ctx.keyring.wrappers if isinstance(w, AwsKmsWrapper))
        dk_context = manifest_store.data_key_context(BackupRef.parse(backup_id))
        assert kms.unwrap(kms_wrapping, dk_context) == \
            ctx.keyring.local.unwrap(local_wrapping, dk_context)
    _restores(stack, backup_id, "s3", "kms_up")

    stack.kms.stop()
    try:
        assert not stack.kms.process.alive()
        with pytest.raises(KeyServiceUnavailable):  # KMS really is away
            kms.unwrap(kms_wrapping, dk_context)
        _restores(stack, backup_id, "gcs", "kms_down")
    finally:
        stack.restart_kms()  # a new, empty KMS: EU gets a new KMS key


def test_live_rotation_rewrap_killed_half_way_and_retire(keys_stack: DevStack) -> None:
    stack = keys_stack
    worker = stack.worker_processes[EU]
    worker_pid = worker.pid
    before = [_backup(stack, source) for source in ("accounts", "catalog", "ledger")]
    old = dict(context(stack, EU).keyring.current_ids())
    assert set(old) == {"aws-kms", "local"}

    # 1. rotate, with the workers running: the next backup uses the new keys
    rotated = regionvault_cli(stack, "keys", "rotate", "--domain", "eu")
    assert rotated.returncode == 0, rotated.stderr
    new = dict(context(stack, EU).keyring.current_ids())
    assert all(new[w] != old[w] and new[w] in rotated.stdout for w in old)
    after = _backup(stack, "accounts")
    for manifest in _manifests(stack, after).values():
        assert sorted((w.wrapper, w.key_id) for w in manifest.wrappings) == sorted(new.items())
        assert manifest.mac is not None and manifest.mac.key_id == new["local"]
    assert worker.pid == worker_pid and worker.alive()  # no restart

    # the old keys are still needed: retiring one now is refused, naming the way out
    refused = regionvault_cli(stack, "keys", "retire", old["local"], "--domain", "eu")
    assert refused.returncode == 2 and "keys rewrap" in refused.stderr

    # 2. rewrap, killed after its first manifest, then run again
    argv = [str(Path(sys.executable).parent / "regionvault"), "keys", "rewrap", "--domain",
            "eu", "--per-second", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **stack.env})
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("rewrapped "), first
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ctx = context(stack, EU)
    states = [needs_rewrap(ctx, m, None) for store in (ctx.s3, ctx.gcs)
              for m in manifest_store.manifests_under(ctx, store, "eu/")]
    assert len(states) == 2 * 5  # this module's five backups, in both stores
    assert states.count(False) >= 1 and states.count(True) >= 1, states  # really half-way

    again = regionvault_cli(stack, "keys", "rewrap", "--domain", "eu")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 still to rewrap" in again.stdout
    for backup_id in (*before, after):
        for manifest in _manifests(stack, backup_id).values():
            assert not needs_rewrap(ctx, manifest, None)
            assert sorted((w.wrapper, w.key_id) for w in manifest.wrappings) == \
                sorted(new.items())

    # 3. retire the old keys; check reports only held keys in use
    for key_id in old.values():
        retired = regionvault_cli(stack, "keys", "retire", key_id, "--domain", "eu")
        assert retired.returncode == 0, retired.stderr
    doc = read_keyring_document(_keyring_file(stack), EU)
    assert {k.id for k in doc.keys}.isdisjoint(old.values())
    assert set(old.values()) <= {r.id for r in doc.retired}
    check = regionvault_cli(stack, "check", "--domain", "eu")
    assert f"key {new['local']} in use" in check.stdout and "NOT HELD" not in check.stdout

    # every backup still restores, from both stores, with the old keys gone
    for i, backup_id in enumerate((*before, after)):
        _restores(stack, backup_id, "s3" if i % 2 else "gcs", f"rotated_{i}")
