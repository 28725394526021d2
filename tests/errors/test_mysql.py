"""Error corpus: a mysql source with a wrong password, one whose server is down, and a restore
into a database that already holds tables.

A wrong password fails at once (never a retry) with one sentence that names the source and
quotes the server's own line, user and host included, password never; the same sentence comes
out of the dump step of a real backup chain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from regionvault import chain
from regionvault import context as context_module
from regionvault.config import parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import SourceError, TransientSourceError
from regionvault.keyring import Keyring
from regionvault.sources import open_source, restorer_for
from regionvault.stores.memory import MemoryStore
from tests.sources.kit_mysql import MySQLKit, database_of, mysql_kit
from tests.unit import config_data

DSN_ENV = "RV_TEST_DSN_ORDERS"
WRONG_PASSWORD = ("source 'orders' cannot be read: ERROR 1045 (28000): Access denied for user "
                  "'rv_kit'@'127.0.0.1' (using password: YES)")


class S3Role(MemoryStore):
    name = "s3"


class GCSRole(MemoryStore):
    name = "gcs"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLKit]:
    with mysql_kit(tmp_path_factory.mktemp("mysql")) as started:
        yield started


def _context(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DomainContext:
    data = config_data("eu")
    data["spool_dir"] = str(tmp_path / "spool")
    data["domains"]["eu"]["sources"] = [
        {"name": "orders", "kind": "mysql", "dsn": {"env": DSN_ENV}, "data_class": "pii"}]
    monkeypatch.setenv(DSN_ENV, dsn)
    monkeypatch.setattr(context_module, "_residency_checked", set())
    config = parse_config(data, origin="test", env={})
    keyring = Keyring.local_only(Domain.EU, {"eu-k": os.urandom(32)}, current="eu-k")
    return DomainContext(config, Domain.EU, s3=S3Role("rv-eu-primary", "eu-central-1"),
                         gcs=GCSRole("rv-eu-replica", "europe-west4"), keyring=keyring)


def test_a_wrong_password(kit: MySQLKit, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = kit.wrong_password_dsn(kit.seeded("corpus-canary"))
    assert wrong is not None
    ctx = _context(wrong, tmp_path, monkeypatch)

    # the source itself, as a worker opens it
    written: list[bytes] = []
    with pytest.raises(SourceError) as caught:
        open_source(Domain.EU, ctx.config.source(Domain.EU, "orders")).dump(written.append)
    assert str(caught.value) == WRONG_PASSWORD
    assert not isinstance(caught.value, TransientSourceError)
    assert written == []

    # and the dump step of a real backup chain, which must not turn it into a retry
    backup_id = chain.new_backup(ctx, "orders")
    with pytest.raises(SourceError) as in_chain:
        chain.dump(ctx, backup_id)
    assert str(in_chain.value) == WRONG_PASSWORD
    assert not isinstance(in_chain.value, TransientSourceError)


def test_a_server_that_is_down(kit: MySQLKit) -> None:
    with pytest.raises(TransientSourceError) as caught:
        restorer_for("mysql", "orders").row_counts(kit.unreachable_dsn())
    assert str(caught.value) == (
        "the rows of database 'nothing' for source 'orders' cannot be counted: ERROR 2003: "
        "Can't connect to MySQL server on '127.0.0.1' ([Errno 111] Connection refused)")


def test_a_restore_into_a_database_that_holds_tables(kit: MySQLKit) -> None:
    occupied = kit.seeded("another-canary")
    with pytest.raises(SourceError) as caught:
        restorer_for("mysql", "orders").check_target(occupied)
    assert str(caught.value) == (
        f"the target database '{database_of(occupied)}' for source 'orders' is not empty (it "
        "holds 5 tables, 1 view, 2 routines, 1 event): restore into an empty database, or pass "
        "--clean to replace what it holds")
