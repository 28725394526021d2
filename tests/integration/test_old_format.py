"""A backup written by the older two-pass chain (stream format RVS1, fixture in
``tests/fixtures/stream-v1``) still restores with today's code, into a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from regionvault.config import parse_config
from regionvault.context import DomainContext
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.keyring import Keyring
from regionvault.restore import restore
from regionvault.sources.postgres import row_counts, scalar
from regionvault.stores.memory import MemoryStore
from tests.unit import config_data

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "stream-v1"
BACKUP_ID = "eu.accounts.20261130T120000Z.00f0a1b2"
PREFIX = "eu/pii/accounts/"


class S3Role(MemoryStore):
    name = "s3"


class GCSRole(MemoryStore):
    name = "gcs"


def fixture_context(tmp_path: Path) -> DomainContext:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    config = parse_config(data, origin="test", env={})
    s3 = S3Role("rv-eu-primary", "eu-central-1")
    gcs = GCSRole("rv-eu-replica", "europe-west4")
    for path in sorted(FIXTURE.glob(f"{BACKUP_ID}.*")):
        if path.suffix != ".md":
            for store in (s3, gcs):
                store.put_bytes(PREFIX + path.name, path.read_bytes())
    keyring = Keyring.local_only(Domain.EU, {"eu-2026": b"\x5f" * 32}, current="eu-2026")
    return DomainContext(config, Domain.EU, s3=s3, gcs=gcs, keyring=keyring,
                         clock=lambda: datetime(2026, 12, 1, tzinfo=UTC))


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_a_backup_of_the_previous_format_restores(stack: DevStack, tmp_path: Path,
                                                  store: str) -> None:
    assert stack.postgres is not None
    target_db = f"old_format_{store}"
    stack.postgres.drop_database(target_db)
    stack.postgres.create_database(target_db)
    target = stack.postgres.dsn(target_db)
    ctx = fixture_context(tmp_path)

    result = restore(ctx, BACKUP_ID, target, from_store=store)

    assert result.store == store
    assert row_counts(target) == {"Billing.Invoice Lines": 500, "public.customers": 240,
                                  "public.empty_table": 0}
    assert scalar(target, "SELECT note FROM customers WHERE id = 7") == (
        "line one\nline two\ttab \\ slash")
    assert scalar(target, "SELECT encode(avatar, 'hex') FROM customers WHERE id = 5") == (
        "e4da3b7fbbce2345d7772b0674a318d5")  # md5('5')
    assert scalar(target, 'SELECT sum(cents) FROM "Billing"."Invoice Lines"') == "125250"
    stack.postgres.drop_database(target_db)
