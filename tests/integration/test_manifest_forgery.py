"""Issue 9, acceptance 3 (verify's part): editing any field of a stored manifest by hand, in S3
itself, is found by ``regionvault verify``, which exits non-zero naming the forged manifest;
``list`` names it without hiding the others; restore refuses it (``auto`` restores the intact
GCS copy instead). An untouched manifest verifies, also after the domain key is rotated.

Every test puts the original manifests back, so the backup stays usable for the others."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from regionvault import manifest_store
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.errors import ManifestForged
from regionvault.manifest import BackupRef
from regionvault.restore import restore
from tests.integration.helpers import config_of, context, regionvault_cli, run_chain, s3_client

pytestmark = pytest.mark.stack

DOMAIN = Domain.US
SOURCE = "accounts"  # pii: the data class whose retention a forger would want to stretch

Edit = Callable[[dict[str, Any]], None]


def _set(field: str, value: Any) -> Edit:
    return lambda d: d.__setitem__(field, value)


def _other_class(d: dict[str, Any]) -> None:
    d["data_class"] = "metadata" if d["data_class"] == "pii" else "pii"


def _bump_rows(d: dict[str, Any]) -> None:
    table = sorted(d["row_counts"])[0]
    d["row_counts"][table] += 1


EDITS: dict[str, Edit] = {
    # moved forward: retention would keep the backup longer
    "created_at": _set("created_at", "2099-01-01T00:00:00Z"),
    # pii claimed as metadata: kept for a year instead of 29 days
    "data_class": _other_class,
    # a step removed (or claimed) changes what "verified" means
    "steps": lambda d: d["steps"].pop("verify"),
    "row_counts": _bump_rows,
    "expires_at": _set("expires_at", "2099-01-01T00:00:00Z"),
    "wrapping-key": lambda d: d["wrappings"][0].__setitem__("key_id", "us-dev-0"),
    "wrapping-blob": lambda d: d["wrappings"][0].__setitem__(
        "blob", base64.b64encode(b"x" * 60).decode()),
}


@pytest.fixture(scope="module")
def backup(stack: DevStack) -> str:
    """One verified pii backup that every test of this module edits and puts back."""
    backup_id = run_chain(stack, DOMAIN, SOURCE)
    assert "/pii/" in _keys(stack, backup_id)[2]
    return backup_id


def _keys(stack: DevStack, backup_id: str) -> tuple[str, str, str]:
    """(bucket, object key, manifest key) in S3."""
    ctx = context(stack, DOMAIN)
    _, src = manifest_store.resolve(ctx, backup_id)
    okey, mkey = manifest_store.keys_of(BackupRef.parse(backup_id), src)
    return config_of(stack).domain(DOMAIN).s3_bucket, okey, mkey


@contextmanager
def forged(stack: DevStack, backup_id: str, edit: Edit) -> Iterator[str]:
    """The S3 manifest edited by hand (boto3, as anyone with write access to the bucket could);
    yields its key and puts the original back afterwards."""
    bucket, _, mkey = _keys(stack, backup_id)
    s3 = s3_client(stack, config_of(stack).domain(DOMAIN).aws_region)
    original = s3.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    data = json.loads(original)
    edit(data)
    s3.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(data, indent=2).encode())
    try:
        yield mkey
    finally:
        s3.put_object(Bucket=bucket, Key=mkey, Body=original)


def test_an_untouched_manifest_verifies(stack: DevStack, backup: str) -> None:
    for args in ((), ("--deep",)):
        result = regionvault_cli(stack, "verify", backup, *args)
        assert result.returncode == 0, result.stderr
        assert f"backup {backup} verified" in result.stdout


@pytest.mark.parametrize("field", list(EDITS))
def test_verify_names_a_forged_manifest(stack: DevStack, backup: str, field: str) -> None:
    bucket, _, _ = _keys(stack, backup)
    with forged(stack, backup, EDITS[field]) as mkey:
        result = regionvault_cli(stack, "verify", backup)
    assert result.returncode != 0
    message = " ".join(result.stderr.split())  # the console may wrap long lines
    assert f"s3 manifest s3://{bucket}/{mkey} fails its MAC" in message, result.stderr
    assert f"backup {backup} failed verification" in message
    assert "take a new backup" in message  # and what to do
    # put back, it verifies again: nothing was written while it was forged
    again = regionvault_cli(stack, "verify", backup)
    assert again.returncode == 0, again.stderr


def test_list_and_show_name_a_forged_manifest_and_keep_the_others(
        stack: DevStack, backup: str) -> None:
    other = run_chain(stack, DOMAIN, SOURCE)
    with forged(stack, backup, EDITS["created_at"]) as mkey:
        listed = regionvault_cli(stack, "list", "--domain", DOMAIN.value, "--source", SOURCE)
        shown = regionvault_cli(stack, "show", backup)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines()
            if line.strip().startswith("│") and len(line.split()) > 2}
    assert "FORGED" in rows[backup] and "2099" not in rows[backup]
    assert "verified" in rows[other]
    assert mkey in " ".join(listed.stderr.split())
    assert shown.returncode == 0, shown.stderr
    assert "s3: FORGED" in shown.stdout and "gcs: verified" in shown.stdout


@pytest.fixture
def target(stack: DevStack) -> Iterator[str]:
    assert stack.postgres is not None
    stack.postgres.drop_database("forgery_target")
    stack.postgres.create_database("forgery_target")
    yield stack.postgres.dsn("forgery_target")
    stack.postgres.drop_database("forgery_target")


def test_restore_refuses_a_forged_manifest_and_auto_uses_the_intact_copy(
        stack: DevStack, backup: str, target: str) -> None:
    ctx = context(stack, DOMAIN)
    with forged(stack, backup, EDITS["wrapping-blob"]) as mkey:
        with pytest.raises(ManifestForged, match="fails its MAC") as error:
            restore(ctx, backup, target, from_store="s3")
        assert mkey in str(error.value)
        result = restore(ctx, backup, target, from_store="auto")
    assert result.store == "gcs"
    assert result.fallback_reason is not None and "fails its MAC" in result.fallback_reason
    assert stack.postgres is not None
    expected = sample.fingerprint(stack.postgres.dsn(sample.database_name(DOMAIN, SOURCE)))
    assert sample.fingerprint(target) == expected


def test_a_manifest_from_before_key_rotation_still_verifies(
        stack: DevStack, backup: str) -> None:
    """Rotation (``keys rotate``): a new current key, the old one kept. The untouched
    manifest, signed with the old key, verifies; verify then signs it with the new key."""
    bucket, _, mkey = _keys(stack, backup)
    s3 = s3_client(stack, config_of(stack).domain(DOMAIN).aws_region)
    ctx = context(stack, DOMAIN)
    gcs_before = ctx.gcs.get_bytes(mkey)
    s3_before = s3.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    old_id = json.loads(s3_before)["mac"]["key_id"]
    rotated = regionvault_cli(stack, "keys", "rotate", "--domain", DOMAIN.value)
    assert rotated.returncode == 0, rotated.stderr
    new_id = context(stack, DOMAIN).keyring.local.current_key_id
    assert new_id != old_id and new_id in rotated.stdout
    try:
        result = regionvault_cli(stack, "verify", backup)
        assert result.returncode == 0, result.stderr
        resigned = json.loads(s3.get_object(Bucket=bucket, Key=mkey)["Body"].read())
        assert resigned["mac"]["key_id"] == new_id
        # the data key stays wrapped by the old key until 'keys rewrap'
        assert [w["key_id"] for w in resigned["wrappings"]] == [old_id]
        # the new signature verifies, and edits are still found
        assert regionvault_cli(stack, "verify", backup).returncode == 0
        with forged(stack, backup, EDITS["created_at"]):
            refused = regionvault_cli(stack, "verify", backup)
        assert refused.returncode != 0 and "fails its MAC" in refused.stderr
    finally:  # put the manifests back as they were (the old key is still held)
        s3.put_object(Bucket=bucket, Key=mkey, Body=s3_before)
        ctx.gcs.put_bytes(mkey, gcs_before)
