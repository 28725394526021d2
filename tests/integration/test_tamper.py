"""Acceptance 3: a flipped byte, a truncated object or a wrong domain key is caught by deep
verify and by restore, naming the backup and the store; the GCS copy still restores. (Edited
manifests: test_manifest_forgery.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from regionvault import chain, manifest_store
from regionvault.config import Config
from regionvault.context import DomainContext
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.errors import IntegrityError, ManifestForged, WrongKeyError
from regionvault.keyring import Keyring
from regionvault.manifest import BackupRef
from regionvault.restore import load_manifest, restore
from tests.integration.helpers import config_of, context, run_chain, s3_client

pytestmark = pytest.mark.stack


@pytest.fixture
def target(stack: DevStack) -> Iterator[str]:
    assert stack.postgres is not None
    stack.postgres.drop_database("tamper_target")
    stack.postgres.create_database("tamper_target")
    yield stack.postgres.dsn("tamper_target")
    stack.postgres.drop_database("tamper_target")


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def _truncate(data: bytes) -> bytes:
    return data[:-40]


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flipped-byte", "truncated"])
def test_damaged_s3_copy_is_named_and_gcs_still_restores(
        stack: DevStack, target: str, damage: Callable[[bytes], bytes]) -> None:
    config = config_of(stack)
    backup_id = run_chain(stack, Domain.US, "accounts")
    ctx = context(stack, Domain.US)
    _, src = manifest_store.resolve(ctx, backup_id)
    okey, _ = manifest_store.keys_of(BackupRef.parse(backup_id), src)
    s3 = s3_client(stack)
    bucket = config.domain(Domain.US).s3_bucket
    original = s3.get_object(Bucket=bucket, Key=okey)["Body"].read()
    s3.put_object(Bucket=bucket, Key=okey, Body=damage(original))

    with pytest.raises(IntegrityError) as verify_error:
        chain.verify(ctx, backup_id, deep=True)
    assert backup_id in str(verify_error.value) and "s3" in str(verify_error.value)

    with pytest.raises(IntegrityError) as restore_error:
        restore(ctx, backup_id, target, from_store="s3")
    assert backup_id in str(restore_error.value) and "s3" in str(restore_error.value)

    restore(ctx, backup_id, target, from_store="gcs")
    assert stack.postgres is not None
    expected = sample.fingerprint(stack.postgres.dsn(sample.database_name(Domain.US, "accounts")))
    assert sample.fingerprint(target) == expected


def test_damage_that_keeps_the_store_checksum_is_caught_by_the_stream(
        stack: DevStack, target: str) -> None:
    """Even when the store reports the manifest's CRC32C, the bytes themselves are checked."""
    backup_id = run_chain(stack, Domain.US, "catalog")
    ctx = context(stack, Domain.US)
    _, src = manifest_store.resolve(ctx, backup_id)
    okey, _ = manifest_store.keys_of(BackupRef.parse(backup_id), src)
    manifest = manifest_store.read_manifest(ctx, ctx.s3,
                                   manifest_store.keys_of(BackupRef.parse(backup_id), src)[1])
    assert manifest is not None
    s3 = s3_client(stack)
    bucket = config_of(stack).domain(Domain.US).s3_bucket
    damaged = _flip(s3.get_object(Bucket=bucket, Key=okey)["Body"].read())
    # moto echoes the checksum it is given: claim the original one for the damaged bytes
    s3.put_object(Bucket=bucket, Key=okey, Body=damaged, ChecksumAlgorithm="CRC32C",
                  ChecksumCRC32C=manifest.ciphertext_crc32c)
    with pytest.raises(IntegrityError, match="SHA-256"):
        chain.verify(ctx, backup_id, deep=True)
    with pytest.raises(IntegrityError) as restore_error:
        restore(ctx, backup_id, target, from_store="s3")
    assert backup_id in str(restore_error.value) and "s3" in str(restore_error.value)


def _context_with_key_of(config: Config, domain: Domain, key_domain: Domain) -> DomainContext:
    """The domain's context, but holding another domain's key material under its own key id."""
    foreign = DomainContext(config, key_domain).keyring.local
    own_id = DomainContext(config, domain).keyring.local.current_key_id
    keyring = Keyring.local_only(domain, {own_id: foreign.key(foreign.current_key_id)},
                                 current=own_id)
    return DomainContext(config, domain, keyring=keyring)


def test_wrong_domain_key_cannot_restore(stack: DevStack, target: str) -> None:
    """Another domain's key configured under this domain's key id: the manifest's MAC is the
    first thing that fails (issue 9), and past it the data key does not unwrap either."""
    config = config_of(stack)
    backup_id = run_chain(stack, Domain.AU, "catalog")
    wrong = _context_with_key_of(config, Domain.AU, Domain.EU)
    with pytest.raises(ManifestForged) as error:
        restore(wrong, backup_id, target, from_store="gcs")
    message = str(error.value)
    assert backup_id in message and "gcs manifest gs://" in message
    assert "is not the one that signed it" in message
    manifest = load_manifest(context(stack, Domain.AU), backup_id, "gcs")  # the right keys
    with pytest.raises(WrongKeyError) as unwrap_error:
        wrong.keyring.unwrap(manifest.wrappings,
                             manifest_store.data_key_context(BackupRef.parse(backup_id)))
    assert "cannot open this data key" in str(unwrap_error.value)
    assert stack.postgres is not None
    # nothing was restored
    tables = stack.postgres.execute("tamper_target",
                                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert tables == [(0,)]
