"""Real failures of the real PostgresSource, classified at the edge: a wrong password or a missing
database fails at once (SourceError), a server that is not there is worth retrying
(TransientSourceError). One real PostgreSQL for the module; no Celery, no stores.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from regionvault.devstack.services import PostgresService, free_port, start_postgres
from regionvault.errors import SourceError, TransientSourceError
from regionvault.sources.postgres import PostgresSource, database_dsn, restore_dump, row_counts

# stack: like every test here it needs the embedded PostgreSQL; it starts that server alone
pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

PASSWORD_USER = "rv_password_user"
RIGHT_PASSWORD = "right-pw-7d1f"
WRONG_PASSWORD = "wrong-pw-3c9a"
LIMITED_USER = "rv_one_connection"
DATABASE = "rv_errors"
ROW_MARKER = "row-marker-5e2b@example.com"


def _dsn(user: str, port: int, database: str, password: str | None = None) -> str:
    secret = f":{password}" if password else ""
    return f"postgresql://{user}{secret}@127.0.0.1:{port}/{database}"


def _wait_for_password_rule(port: int, timeout: float = 10) -> None:
    # pg_reload_conf() only signals the postmaster; wait until new sessions see the rule
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(_dsn(PASSWORD_USER, port, "postgres", WRONG_PASSWORD),
                            connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            if "password authentication failed" in str(exc):
                return
            raise
        if time.monotonic() > deadline:
            raise AssertionError("the password rule in pg_hba.conf never took effect")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresService]:
    # Not under pytest's basetemp, which a concurrent pytest run resets to 0700 and so locks
    # the unprivileged PostgreSQL user out (see tests/integration/conftest.py).
    root = Path(tempfile.mkdtemp(prefix="rv-test-source-errors-"))
    service = start_postgres(root)
    try:
        # The devstack trusts every local connection; one role must give a password.
        hba = service.data_dir / "pg_hba.conf"
        hba.write_text(f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
                       + hba.read_text())
        service.execute("postgres", f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD "
                                    f"'{RIGHT_PASSWORD}'; SELECT pg_reload_conf()")
        _wait_for_password_rule(service.port)
        # The role's only connection holds the snapshot, so pg_dump's own connection is refused.
        service.execute("postgres", f"CREATE ROLE {LIMITED_USER} LOGIN CONNECTION LIMIT 1")
        service.create_database(DATABASE)
        service.execute(DATABASE, f"ALTER DATABASE {DATABASE} OWNER TO {LIMITED_USER}")
        service.execute(DATABASE, f"SET ROLE {LIMITED_USER};"
                                  "CREATE TABLE accounts (id int PRIMARY KEY, email text);"
                                  f"INSERT INTO accounts VALUES (1, '{ROW_MARKER}')")
        yield service
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


def _dump(dsn: str, name: str = "billing") -> bytes:
    chunks: list[bytes] = []
    PostgresSource(name=name, dsn=dsn).dump(chunks.append)
    return b"".join(chunks)


def _raises(kind: type[SourceError], action: Callable[[], object]) -> str:
    """Run ``action``; it must raise exactly ``kind``. The message, which must be one line."""
    with pytest.raises(SourceError) as info:
        action()
    assert type(info.value) is kind, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_good_source_dumps(postgres: PostgresService) -> None:
    # the positive control: the fixture's server and the dump path work
    assert _dump(postgres.dsn(DATABASE)).startswith(b"PGDMP")


def test_wrong_password_is_permanent(postgres: PostgresService) -> None:
    dsn = _dsn(PASSWORD_USER, postgres.port, DATABASE, WRONG_PASSWORD)
    message = _raises(SourceError, lambda: _dump(dsn))
    assert message.startswith("source 'billing' cannot be read: ")
    assert f'password authentication failed for user "{PASSWORD_USER}"' in message
    assert WRONG_PASSWORD not in message
    assert RIGHT_PASSWORD not in message


def test_nothing_listening_is_transient(postgres: PostgresService) -> None:
    dsn = _dsn("postgres", free_port(), DATABASE)
    message = _raises(TransientSourceError, lambda: _dump(dsn))
    assert message.startswith("source 'billing' cannot be read: ")
    assert "Connection refused" in message
    assert "Is the server running" not in message  # libpq's second line is not the cause


def test_missing_database_is_permanent(postgres: PostgresService) -> None:
    message = _raises(SourceError, lambda: _dump(postgres.dsn("rv_no_such_database")))
    assert 'database "rv_no_such_database" does not exist' in message


def test_pg_dump_refused_a_connection_is_transient(postgres: PostgresService) -> None:
    # psycopg gets the role's one connection; the real pg_dump process is turned away
    dsn = _dsn(LIMITED_USER, postgres.port, DATABASE)
    message = _raises(TransientSourceError, lambda: _dump(dsn, name="ledger"))
    assert message.startswith("pg_dump of source 'ledger' failed (exit 1): pg_dump: error: ")
    assert f'too many connections for role "{LIMITED_USER}"' in message


def _older_pg_dump_dir() -> Path | None:
    for pg_dump in sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump")):
        if pg_dump.parent.parent.name.isdigit() and int(pg_dump.parent.parent.name) < 18:
            return pg_dump.parent
    return None


def test_pg_dump_older_than_the_server_is_permanent(postgres: PostgresService,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _older_pg_dump_dir()
    # this machine kind ships PostgreSQL 15 there: a missing one is a broken machine, not a
    # reason to pass without checking
    assert bin_dir is not None, (
        "no pg_dump older than the embedded PostgreSQL 18 in /usr/lib/postgresql/*/bin: "
        "install an older PostgreSQL major's client (e.g. Debian's postgresql-client-15)")
    monkeypatch.setenv("REGIONVAULT_PG_BIN", str(bin_dir))
    message = _raises(SourceError, lambda: _dump(postgres.dsn(DATABASE)))
    assert message.startswith("pg_dump of source 'billing' failed (exit 1): ")
    assert "server version mismatch" in message


def test_row_counting_classifies_psycopg_errors(postgres: PostgresService) -> None:
    assert row_counts(postgres.dsn(DATABASE)) == {"public.accounts": 1}
    _raises(SourceError, lambda: row_counts(postgres.dsn("rv_no_such_database")))
    _raises(TransientSourceError, lambda: row_counts(_dsn("postgres", free_port(), DATABASE)))


def test_pg_restore_failures_are_classified(postgres: PostgresService) -> None:
    dump = _dump(postgres.dsn(DATABASE))
    label = "backup of source 'billing'"

    missing = database_dsn(postgres.dsn(), "rv_no_such_target")
    message = _raises(SourceError, lambda: restore_dump([dump], missing, label=label))
    assert message.startswith(f"pg_restore of the {label} failed (exit 1): ")
    assert 'database "rv_no_such_target" does not exist' in message

    unreachable = _dsn("postgres", free_port(), "rv_target")
    _raises(TransientSourceError, lambda: restore_dump([dump], unreachable, label=label))

    # Restoring over the source itself: the error line is kept, the statement after it is not.
    message = _raises(SourceError, lambda: restore_dump([dump], postgres.dsn(DATABASE),
                                                        label=label))
    assert re.search(r'ERROR: +relation "accounts" already exists$', message), message
    assert "Command was" not in message
    assert "CREATE TABLE" not in message
    assert ROW_MARKER not in message
