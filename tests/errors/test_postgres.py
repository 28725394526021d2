"""Error corpus: real PostgreSQL failures and the exact sentence each one gives.

On a PostgreSQL 15 server (Debian's, /usr/lib/postgresql/15/bin) and the embedded PostgreSQL
18, each dumped and restored by its own major's tools: a pg_dump whose backend an administrator
terminates, mid-COPY or while it waits for a lock; a backup restored into a server too old for
it; and restores that fail on row data (a unique violation whose DETAIL quotes the key, an input
value the server quotes in its message itself), which must never reach the message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from regionvault.devstack.services import pg_bin_dir
from regionvault.errors import SourceError, TransientSourceError
from regionvault.sources.postgres import PostgresSource, user_relations
from tests.sources.kit_postgres import PostgresKit, postgres_kit

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
CANARY = "RV-ERRORS-CANARY-9d04@example.com"
SOURCE = "corpus"
BIG = "rv_corpus_big"
ROWS_DB = "rv_corpus_rows"

#: a table big enough that its COPY runs for a good part of a second
BIG_TABLE = """
CREATE TABLE big (id integer, v text);
INSERT INTO big SELECT i, repeat(md5(i::text), 8) FROM generate_series(1, 300000) AS i;
"""
#: the canary is the first row of accounts, so that its COPY quotes it first
ROWS_TABLE = "CREATE TABLE accounts (id integer PRIMARY KEY, email text)"
ROWS_INSERT = "INSERT INTO accounts VALUES (1, %s), (2, 'second@example.com')"


def _kit(prefix: str, bin_dir: Path | None) -> Iterator[PostgresKit]:
    # Not under pytest's basetemp (see tests/integration/conftest.py).
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with postgres_kit(root, bin_dir) as kit:
            for database in (BIG, ROWS_DB):
                kit.service.create_database(database)
            kit.service.execute(BIG, BIG_TABLE)
            with psycopg.connect(kit.dsn(ROWS_DB), autocommit=True) as conn:
                conn.execute(ROWS_TABLE)
                conn.execute(ROWS_INSERT, (CANARY,))
            yield kit
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg15() -> Iterator[PostgresKit]:
    if not (PG15_BIN / "postgres").is_file():
        pytest.fail(f"{PG15_BIN}/postgres is missing: this machine kind ships PostgreSQL 15")
    yield from _kit("rv-test-errors-pg15-", PG15_BIN)


@pytest.fixture(scope="module")
def pg18() -> Iterator[PostgresKit]:
    yield from _kit("rv-test-errors-pg18-", None)


@pytest.fixture(params=["15", "18"])
def kit(request: pytest.FixtureRequest) -> PostgresKit:
    """Each test once on each major (each server dumped by its own pg_dump)."""
    fixture: PostgresKit = request.getfixturevalue(f"pg{request.param}")
    return fixture


@pytest.fixture(autouse=True)
def no_tool_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REGIONVAULT_PG_BIN", "REGIONVAULT_PG_BIN_15", "REGIONVAULT_PG_BIN_18"):
        monkeypatch.delenv(name, raising=False)


def _raised(kind: type[SourceError], action: Callable[[], object]) -> str:
    """Run ``action``: it must raise exactly ``kind``; its message, one line without the
    canary or the kit's password."""
    with pytest.raises(SourceError) as caught:
        action()
    assert type(caught.value) is kind, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    assert "\n" not in message
    assert CANARY not in message
    assert "Command was" not in message and "Query was" not in message
    return message


def _terminate(kit: PostgresKit, condition: str) -> Callable[[], None]:
    """A function that terminates pg_dump's backend once it is seen in ``condition`` (a
    pg_stat_activity predicate). Its connection is opened now, so that it acts at once."""
    conn = psycopg.connect(kit.dsn(BIG), autocommit=True)

    def terminate() -> None:
        with conn:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                                   f"'pg_dump' AND datname = %s AND {condition}",
                                   (BIG,)).fetchone()
                if row is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", row)
                    return
                time.sleep(0.005)
        raise AssertionError(f"pg_dump's backend was never seen with {condition}")

    return terminate


def test_pg_dump_terminated_mid_copy(kit: PostgresKit) -> None:
    terminate = _terminate(kit, "query LIKE 'COPY %%'")
    killer: list[threading.Thread] = []

    def write(chunk: bytes) -> None:
        # after the first chunk the COPY of big runs: terminate its backend while this side
        # keeps reading, as a worker's upload would
        if not killer:
            killer.append(threading.Thread(target=terminate))
            killer[0].start()

    try:
        message = _raised(TransientSourceError,
                          lambda: PostgresSource(SOURCE, kit.dsn(BIG)).dump(write))
    finally:
        killer[0].join()
    step = (f"pg_dump of source '{SOURCE}' failed (exit 1): pg_dump: error: Dumping the "
            'contents of table "big" failed: ')
    # The server's FATAL is the cause. PostgreSQL drops it instead of blocking when the
    # signal finds the backend waiting to send rows (its socket full), and then libpq only
    # sees the connection close; which of the two happens depends on the socket's buffers at
    # that instant, on both majors. Either way the step, the table and the cause are named.
    assert message in (
        f"{step}PQgetResult() failed. Error message from server: FATAL:  terminating "
        "connection due to administrator command",
        f"{step}PQgetCopyData() failed. Error message from server: server closed the "
        "connection unexpectedly",
    ), message


def test_pg_dump_terminated_while_waiting_for_a_lock(kit: PostgresKit) -> None:
    # A session holds the table: pg_dump's LOCK TABLE waits, and its backend, sending
    # nothing, always gets its FATAL out.
    with psycopg.connect(kit.dsn(BIG)) as holder:
        holder.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        killer = threading.Thread(target=_terminate(kit, "wait_event_type = 'Lock'"))
        killer.start()
        try:
            message = _raised(TransientSourceError,
                              lambda: PostgresSource(SOURCE, kit.dsn(BIG)).dump(lambda c: None))
        finally:
            killer.join()
    assert message == (f"pg_dump of source '{SOURCE}' failed (exit 1): pg_dump: error: query "
                       "failed: FATAL:  terminating connection due to administrator command")


def _dump(kit: PostgresKit, database: str) -> bytes:
    chunks: list[bytes] = []
    PostgresSource(SOURCE, kit.dsn(database)).dump(chunks.append)
    return b"".join(chunks)


def _number(kit: PostgresKit) -> str:
    found = re.match(r"\d+\.\d+", kit.server_version())
    assert found
    return found.group(0)


def test_restore_into_a_server_too_old_for_the_dump(pg15: PostgresKit, pg18: PostgresKit) -> None:
    dump = _dump(pg18, ROWS_DB)
    target = pg15.empty_target()
    message = _raised(SourceError, lambda: PostgresSource(SOURCE).restore([dump], target))
    version = subprocess.run([str(pg_bin_dir() / "pg_dump"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    pg_dump = re.search(r"\d+\.\d+", version)
    assert pg_dump
    assert message == (
        f"backup of source '{SOURCE}' was dumped by pg_dump {pg_dump.group(0)} from a "
        f"PostgreSQL {_number(pg18)} server; the target runs PostgreSQL {_number(pg15)}, which "
        "cannot load it: restore into a PostgreSQL 18 or newer server")
    assert user_relations(target) == 0


#: run in the target as pg_restore creates accounts: the restore's COPY then fails on row data
SABOTAGE = """
CREATE FUNCTION rv_sabotage() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
               WHERE object_identity = 'public.accounts') THEN
        {action}
    END IF;
END $$;
CREATE EVENT TRIGGER rv_sabotage ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
    EXECUTE FUNCTION rv_sabotage();
"""
#: a unique index and a row that the canary's row duplicates: DETAIL quotes the canary
DUPLICATE = ("CREATE UNIQUE INDEX accounts_email_idx ON public.accounts (email); "
             "INSERT INTO public.accounts VALUES (-1, (SELECT string_agg(chr(c), '') "
             "FROM unnest(ARRAY[{codes}]) AS c));")
#: email becomes an integer column: the server quotes the canary in its ERROR line itself
RETYPE = "ALTER TABLE public.accounts ALTER COLUMN email TYPE integer USING 0;"


def _sabotaged_target(kit: PostgresKit, action: str) -> str:
    target = kit.empty_target()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(SABOTAGE.replace("{action}", action))
    return target


def _duplicate() -> str:
    # the canary spelled as character codes: not even the trigger's text holds it
    return DUPLICATE.replace("{codes}", ", ".join(str(ord(c)) for c in CANARY))


def _legacy_dump(kit: PostgresKit) -> bytes:
    """The PostgreSQL 15 rows dumped by pg_dump 18, as before the tools were chosen by major:
    its restore into 15 goes through pg_restore 18's script and psql."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REGIONVAULT_PG_BIN", str(pg_bin_dir()))
        return _dump(kit, ROWS_DB)


COPY_FAILED = (f"pg_restore of the backup of source '{SOURCE}' failed (exit 1): pg_restore: "
               'error: COPY failed for table "accounts": ERROR:  ')


def test_a_unique_violation_never_shows_its_key(kit: PostgresKit) -> None:
    dump = _dump(kit, ROWS_DB)
    assert CANARY.encode() in dump  # positive control: the row is in the dump
    target = _sabotaged_target(kit, _duplicate())
    message = _raised(SourceError, lambda: PostgresSource(SOURCE).restore([dump], target))
    assert message == (f'{COPY_FAILED}duplicate key value violates unique constraint '
                       '"accounts_email_idx"')
    assert user_relations(target) == 0


def test_an_input_value_in_the_servers_message_is_not_shown(kit: PostgresKit) -> None:
    target = _sabotaged_target(kit, RETYPE)
    message = _raised(SourceError,
                      lambda: PostgresSource(SOURCE).restore([_dump(kit, ROWS_DB)], target))
    assert message == f"{COPY_FAILED}invalid input syntax for type integer: (not shown)"
    assert user_relations(target) == 0


@pytest.mark.parametrize(("action", "error"), [
    (_duplicate(), 'duplicate key value violates unique constraint "accounts_email_idx"'),
    (RETYPE, "invalid input syntax for type integer: (not shown)"),
], ids=["duplicate", "retype"])
def test_a_restore_through_psql_quotes_no_row_data_either(pg15: PostgresKit, action: str,
                                                          error: str) -> None:
    target = _sabotaged_target(pg15, action)
    dump = _legacy_dump(pg15)
    message = _raised(SourceError, lambda: PostgresSource(SOURCE).restore([dump], target))
    # psql names the line of pg_restore's script where it stopped
    assert re.fullmatch(
        re.escape(f"psql of the backup of source '{SOURCE}' failed (exit 3): psql:<stdin>:")
        + r"\d+" + re.escape(f": ERROR:  {error}"), message), message
    assert user_relations(target) == 0
