"""Issue 11, acceptance 4: ``regionvault erase`` crypto-shreds one backup.

After erasure a restore fails with "erased on DATE", both stores' manifests carry the erasure
record and no wrapping, and the object's bytes, fetched before the erasure (or still held by
an Object-Locked bucket), open with no key the system holds: not with any domain key, not
with any data key that any manifest version left in either store still wraps.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from regionvault import manifest_store
from regionvault.devstack.stack import DEV_AWS_ENV, DevStack, environment
from regionvault.domains import Domain
from regionvault.errors import IntegrityError, KeyServiceUnavailable, WrongKeyError
from regionvault.keyring import Wrapping, read_keyring_document
from regionvault.manifest import BackupRef, parse_manifest
from regionvault.provision import bucket_lock
from regionvault.streamformat import decrypt_chunks
from tests.integration.conftest import running_stack
from tests.integration.helpers import config_of, context, gcs_client, regionvault_cli, s3_client

pytestmark = pytest.mark.stack

#: in EU (KMS + escrow) the S3 copy of the erased backup sits locked in an Object Lock bucket;
#: AU (local keys) locks nothing. (The GCS emulator cannot lock, so the lock is put on the S3
#: object by hand rather than by the domain's object_lock setting, which would lock both.)
LOCKED, UNLOCKED = Domain.EU, Domain.AU


def _lock_bucket(stack: DevStack, domain: Domain) -> None:
    """Versioning and Object Lock on the domain's S3 bucket, as ``provision`` enables them."""
    bucket_lock(config_of(stack), domain, "s3").enable()


def _lock_object(stack: DevStack, backup_id: str) -> None:
    ctx = context(stack, BackupRef.parse(backup_id).domain)
    okey, _ = _keys(stack, backup_id)
    until = datetime.now(UTC) + timedelta(days=1)
    s3_client(stack, ctx.dcfg.aws_region).put_object_retention(
        Bucket=ctx.dcfg.s3_bucket, Key=okey,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})


@pytest.fixture(scope="module")
def erase_stack() -> Iterator[DevStack]:
    # the in-process reads below use moto's credentials
    with running_stack("rv-test-erase-") as dev, environment(DEV_AWS_ENV):
        yield dev


def _backup(stack: DevStack, domain: Domain, source: str) -> str:
    result = regionvault_cli(stack, "backup", "--domain", domain.value, "--source", source,
                             "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split("backup ", 1)[1].split()[0]


def _keys(stack: DevStack, backup_id: str) -> tuple[str, str]:
    ref = BackupRef.parse(backup_id)
    ctx = context(stack, ref.domain)
    return manifest_store.keys_of(ref, ctx.config.source(ref.domain, ref.source))


def _object_bytes(stack: DevStack, backup_id: str) -> dict[str, bytes]:
    ref = BackupRef.parse(backup_id)
    ctx = context(stack, ref.domain)
    okey, _ = _keys(stack, backup_id)
    return {store.name: store.get_bytes(okey) for store in (ctx.s3, ctx.gcs)}


def _every_wrapping(stack: DevStack, domain: Domain) -> list[tuple[str, Wrapping]]:
    """(backup id, wrapping) of every manifest the domain's buckets hold, every S3 version
    included: whatever a thief of both buckets could find."""
    ctx = context(stack, domain)
    found: list[tuple[str, Wrapping]] = []

    def take(data: bytes, key: str) -> None:
        try:
            manifest = parse_manifest(ctx, data, key, allow_legacy=True)
        except IntegrityError:
            return
        found.extend((manifest.backup_id, w) for w in manifest.wrappings)

    s3 = s3_client(stack, ctx.dcfg.aws_region)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=ctx.dcfg.s3_bucket):
        for version in page.get("Versions", []):
            if version["Key"].endswith(".manifest.json"):
                body = s3.get_object(Bucket=ctx.dcfg.s3_bucket, Key=version["Key"],
                                     VersionId=version["VersionId"])["Body"].read()
                take(body, version["Key"])
    for blob in gcs_client(stack).list_blobs(ctx.dcfg.gcs_bucket, versions=True):
        if blob.name.endswith(".manifest.json"):
            take(blob.download_as_bytes(), blob.name)
    return found


def _candidate_keys(stack: DevStack, domain: Domain) -> list[bytes]:
    """Every key the system holds that could be a data key: each domain key's material, and
    every data key that any wrapping in either store opens to."""
    ctx = context(stack, domain)
    assert ctx.dcfg.keyring is not None
    doc = read_keyring_document(ctx.dcfg.keyring.file, domain)
    keys = [base64.b64decode(k.material) for k in doc.keys if k.material is not None]
    for backup_id, wrapping in _every_wrapping(stack, domain):
        dk_context = manifest_store.data_key_context(BackupRef.parse(backup_id))
        with contextlib.suppress(WrongKeyError, KeyServiceUnavailable):  # KMS lost its key
            keys.append(bytes(ctx.keyring.unwrap([wrapping], dk_context)))
    return keys


def _opens(blob: bytes, backup_id: str, keys: list[bytes]) -> bool:
    """Whether any of ``keys`` authenticates the first chunk of the backup's object."""
    ref = BackupRef.parse(backup_id)
    context_bytes = manifest_store.stream_context(ref, "backup-stream")
    for key in keys:
        try:
            next(iter(decrypt_chunks(io.BytesIO(blob), key, context_bytes)))
            return True
        except (IntegrityError, StopIteration, ValueError):
            continue
    return False


def _restore_fails_erased(stack: DevStack, backup_id: str, role: str) -> str:
    assert stack.postgres is not None
    name = f"erased_{role}"
    stack.postgres.drop_database(name)
    stack.postgres.create_database(name)
    result = regionvault_cli(stack, "restore", backup_id, "--from", role,
                             "--target", stack.postgres.dsn(name), "--local")
    assert result.returncode != 0
    assert "erased on" in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize("domain", [UNLOCKED, LOCKED], ids=["unlocked", "object-locked"])
def test_erase_makes_a_backup_unreadable_everywhere(erase_stack: DevStack,
                                                    domain: Domain) -> None:
    stack = erase_stack
    if domain is LOCKED:
        _lock_bucket(stack, domain)
    backup_id = _backup(stack, domain, "accounts")
    if domain is LOCKED:
        _lock_object(stack, backup_id)
    other = _backup(stack, domain, "accounts")  # a neighbour that must stay readable
    before = _object_bytes(stack, backup_id)
    # positive control: the keys the system holds open the backup before the erasure
    assert all(_opens(blob, backup_id, _candidate_keys(stack, domain))
               for blob in before.values())

    result = regionvault_cli(stack, "erase", backup_id, "--reason", "GDPR art. 17 request 42",
                             env={"REGIONVAULT_OPERATOR": "dpo@example.com"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "erased on" in result.stdout

    # both stores' manifests: the record, no wrapping
    ctx = context(stack, domain)
    _, mkey = _keys(stack, backup_id)
    for store in (ctx.s3, ctx.gcs):
        manifest = manifest_store.read_manifest(ctx, store, mkey)
        assert manifest is not None and manifest.erasure is not None
        assert manifest.wrappings == ()
        assert manifest.erasure.by == "dpo@example.com"
        assert manifest.erasure.reason == "GDPR art. 17 request 42"
    # no key the system holds opens the bytes fetched before the erasure
    keys = _candidate_keys(stack, domain)
    assert keys, "no candidate key at all: the check below would prove nothing"
    for store, blob in before.items():
        assert not _opens(blob, backup_id, keys), f"the {store} bytes still open"
    assert _opens(_object_bytes(stack, other)["s3"], other, keys)  # the neighbour does

    for role in ("s3", "gcs"):
        _restore_fails_erased(stack, backup_id, role)
    shown = regionvault_cli(stack, "show", backup_id)
    assert shown.returncode == 0 and shown.stdout.count("ERASED on") == 2, shown.stdout
    listed = regionvault_cli(stack, "list", "--domain", domain.value, "--source", "accounts")
    assert "erased" in listed.stdout and "GDPR art. 17 request 42" in listed.stdout

    okey, _ = _keys(stack, backup_id)
    s3 = s3_client(stack, ctx.dcfg.aws_region)
    versions = s3.list_object_versions(Bucket=ctx.dcfg.s3_bucket, Prefix=okey).get(
        "Versions", [])
    if domain is UNLOCKED:
        assert versions == [] and "deleted" in result.stdout
        return
    # Object Lock: the S3 bytes stay until the lock ends, and a plain delete is refused...
    assert "kept, unreadable" in result.stdout
    assert len(versions) == 1
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=ctx.dcfg.s3_bucket, Key=okey,
                         VersionId=versions[0]["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # ...but what is left is ciphertext that nothing opens any more
    locked = s3.get_object(Bucket=ctx.dcfg.s3_bucket, Key=okey)["Body"].read()
    assert locked == before["s3"]
    assert not _opens(locked, backup_id, keys)
