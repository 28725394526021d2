"""classify_failure and cause_line against a table of real pg_dump, pg_restore, psql and psycopg
output (PostgreSQL 15 and 18 print these; most rows were captured from this machine's servers).

Transient only when the server could not be reached or dropped the connection; everything else,
above all a wrong password, is permanent. The cause line is the one a person should read: the
server's own ERROR/FATAL message where there is one, with the step that failed. A server's DETAIL
or CONTEXT line or quoted SQL (any can hold row data) is never part of it, and an input value
the server quotes in its message is replaced by "(not shown)". pg_dump's own lower-case
``detail: Error message from server:`` line is not a server DETAIL: it carries the cause.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pytest

from regionvault.errors import SourceError, TransientSourceError
from regionvault.sources.postgres import (
    CAUSE_LIMIT,
    _psycopg_failure,
    _reported_lines,
    cause_line,
    classify_failure,
    source_failure,
)


@dataclass(frozen=True)
class Case:
    """A row of the table: the output, its class and the line the message must quote."""

    output: str
    kind: type[SourceError]
    cause: str


REFUSED = ('pg_dump: error: connection to server at "127.0.0.1", port 53611 failed: '
           "Connection refused")
WRONG_PASSWORD = ('pg_dump: error: connection to server at "127.0.0.1", port 56447 failed: '
                  'FATAL:  password authentication failed for user "rv_pw"')
ADMIN_SHUTDOWN = ("pg_dump: detail: Error message from server: FATAL:  terminating connection "
                  "due to administrator command")
COPY_RESULT_FAILED = ('pg_dump: error: Dumping the contents of table "accounts" failed: '
                      "PQgetResult() failed.")
#: a value that must never reach a message: the suite looks for it in every one
CANARY = "CANARY-5e2b"
COPY_FAILED = ('pg_restore: error: COPY failed for table "accounts": ERROR:  duplicate key value '
               'violates unique constraint "accounts_email_key"')
ALREADY_EXISTS = 'pg_restore: error: could not execute query: ERROR:  relation "t" already exists'
LOCK_DENIED = "pg_dump: error: query failed: ERROR:  permission denied for table secrets"

CASES: dict[str, Case] = {
    # --- transient: not reachable, not accepting connections yet, or the connection dropped
    "pg_dump connection refused": Case(
        f"{REFUSED}\n\tIs the server running on that host and accepting TCP/IP connections?\n",
        TransientSourceError, REFUSED),
    "psycopg connection refused": Case(
        'connection failed: connection to server at "127.0.0.1", port 53611 failed: Connection '
        "refused\n\tIs the server running on that host and accepting TCP/IP connections?",
        TransientSourceError,
        'connection failed: connection to server at "127.0.0.1", port 53611 failed: Connection '
        "refused"),
    "old libpq could not connect": Case(
        'pg_dump: [archiver (db)] connection to database "app" failed: could not connect to '
        'server: No such file or directory\n\tIs the server running locally and accepting\n'
        '\tconnections on Unix domain socket "/var/run/postgresql/.s.PGSQL.5432"?\n',
        TransientSourceError,
        'pg_dump: [archiver (db)] connection to database "app" failed: could not connect to '
        "server: No such file or directory"),
    "libpq connect timeout": Case(
        'pg_dump: error: connection to server at "10.0.0.5", port 5432 failed: timeout expired\n',
        TransientSourceError,
        'pg_dump: error: connection to server at "10.0.0.5", port 5432 failed: timeout expired'),
    "psycopg connect timeout": Case(
        "connection timeout expired", TransientSourceError, "connection timeout expired"),
    "server closed the connection": Case(
        "pg_dump: error: query failed: server closed the connection unexpectedly\n"
        "\tThis probably means the server terminated abnormally\n"
        "\tbefore or while processing the request.\n"
        "pg_dump: detail: Query was: SELECT count(*) FROM public.accounts\n",
        TransientSourceError,
        "pg_dump: error: query failed: server closed the connection unexpectedly"),
    # pg_terminate_backend() on pg_dump's backend mid-COPY: the step (which table) and the
    # server's FATAL, from two lines; the COPY command after them is not shown
    "administrator shutdown mid-COPY": Case(
        f"{COPY_RESULT_FAILED}\n{ADMIN_SHUTDOWN}\n"
        "pg_dump: detail: Command was: COPY public.accounts (id, email) TO stdout;\n",
        TransientSourceError,
        f"{COPY_RESULT_FAILED} Error message from server: FATAL:  terminating connection due to "
        "administrator command"),
    # the same, when the backend was blocked sending rows as the signal came: PostgreSQL then
    # drops its FATAL rather than block, and libpq sees only the closed socket
    "administrator shutdown mid-COPY, server blocked sending": Case(
        'pg_dump: error: Dumping the contents of table "big" failed: PQgetCopyData() failed.\n'
        "pg_dump: detail: Error message from server: server closed the connection unexpectedly\n"
        "\tThis probably means the server terminated abnormally\n"
        "\tbefore or while processing the request.\n"
        "pg_dump: detail: Command was: COPY public.big (id, v) TO stdout;\n",
        TransientSourceError,
        'pg_dump: error: Dumping the contents of table "big" failed: PQgetCopyData() failed. '
        "Error message from server: server closed the connection unexpectedly"),
    "administrator shutdown while waiting for a lock": Case(
        "pg_dump: error: query failed: FATAL:  terminating connection due to administrator "
        "command\nserver closed the connection unexpectedly\n"
        "\tThis probably means the server terminated abnormally\n"
        "\tbefore or while processing the request.\n"
        "pg_dump: detail: Query was: LOCK TABLE public.big IN ACCESS SHARE MODE\n",
        TransientSourceError,
        "pg_dump: error: query failed: FATAL:  terminating connection due to administrator "
        "command"),
    "psycopg administrator shutdown": Case(
        "terminating connection due to administrator command", TransientSourceError,
        "terminating connection due to administrator command"),
    "starting up": Case(
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  the database '
        "system is starting up\n",
        TransientSourceError,
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  the database '
        "system is starting up"),
    "shutting down": Case(
        'connection failed: connection to server at "db", port 5432 failed: FATAL:  the database '
        "system is shutting down",
        TransientSourceError,
        'connection failed: connection to server at "db", port 5432 failed: FATAL:  the database '
        "system is shutting down"),
    "too many clients": Case(
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  sorry, too many '
        "clients already\n",
        TransientSourceError,
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  sorry, too many '
        "clients already"),
    "too many connections for role": Case(
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  too many '
        'connections for role "backup"\n',
        TransientSourceError,
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  too many '
        'connections for role "backup"'),
    "connection reset": Case(
        "pg_dump: error: could not receive data from server: Connection reset by peer\n",
        TransientSourceError,
        "pg_dump: error: could not receive data from server: Connection reset by peer"),
    "SSL EOF, then the statement": Case(
        "pg_restore: error: could not execute query: SSL SYSCALL error: EOF detected\n"
        "Command was: CREATE TABLE public.accounts (\n    id integer NOT NULL\n);\n",
        TransientSourceError,
        "pg_restore: error: could not execute query: SSL SYSCALL error: EOF detected"),
    # --- permanent: retrying cannot help
    "wrong password": Case(f"{WRONG_PASSWORD}\n", SourceError, WRONG_PASSWORD),
    "wrong password after a refused address": Case(
        # localhost tried over ::1 (refused), then 127.0.0.1 (wrong password)
        'pg_dump: error: connection to server at "localhost" (::1), port 5432 failed: Connection '
        "refused\n\tIs the server running on that host and accepting TCP/IP connections?\n"
        'connection to server at "localhost" (127.0.0.1), port 5432 failed: FATAL:  password '
        'authentication failed for user "backup"\n',
        SourceError,
        'connection to server at "localhost" (127.0.0.1), port 5432 failed: FATAL:  password '
        'authentication failed for user "backup"'),
    "no pg_hba.conf entry": Case(
        'pg_dump: error: connection to server at "10.0.0.5", port 5432 failed: FATAL:  no '
        'pg_hba.conf entry for host "10.0.0.9", user "backup", database "app", no encryption\n',
        SourceError,
        'pg_dump: error: connection to server at "10.0.0.5", port 5432 failed: FATAL:  no '
        'pg_hba.conf entry for host "10.0.0.9", user "backup", database "app", no encryption'),
    "role does not exist": Case(
        'connection failed: connection to server at "db", port 5432 failed: FATAL:  role "ghost" '
        "does not exist",
        SourceError,
        'connection failed: connection to server at "db", port 5432 failed: FATAL:  role "ghost" '
        "does not exist"),
    "database does not exist": Case(
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  database "nope" '
        "does not exist\n",
        SourceError,
        'pg_dump: error: connection to server at "db", port 5432 failed: FATAL:  database "nope" '
        "does not exist"),
    "permission denied, then the query": Case(
        f"{LOCK_DENIED}\npg_dump: detail: Query was: LOCK TABLE public.secrets IN ACCESS SHARE "
        "MODE\n",
        SourceError, LOCK_DENIED),
    "socket permission denied (also 'could not connect')": Case(
        "psql: could not connect to server: Permission denied\n"
        "\tIs the server running locally and accepting\n",
        SourceError, "psql: could not connect to server: Permission denied"),
    "version mismatch": Case(
        "pg_dump: error: aborting because of server version mismatch\n"
        "pg_dump: detail: server version: 18.0; pg_dump version: 15.8\n",
        SourceError, "pg_dump: error: aborting because of server version mismatch"),
    "version mismatch, old format": Case(
        "pg_dump: server version: 16.1; pg_dump version: 14.9\n"
        "pg_dump: aborting because of server version mismatch\n",
        SourceError, "pg_dump: aborting because of server version mismatch"),
    "statement timeout is not a connection timeout": Case(
        "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n",
        SourceError,
        "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout"),
    "restore: the statement follows on many lines": Case(
        f"{ALREADY_EXISTS}\nCommand was: CREATE TABLE public.t (\n    id integer NOT NULL,\n"
        "    email text\n);\n\n\n",
        SourceError, ALREADY_EXISTS),
    "restore: DETAIL quotes a row that reads like a transient failure": Case(
        f"{COPY_FAILED}\n"
        "DETAIL:  Key (email)=(connection refused <ada@example.com>) already exists.\n"
        "CONTEXT:  COPY accounts, line 1\n",
        SourceError, COPY_FAILED),
    "restore: quoted SQL mentions a connection reset": Case(
        "pg_restore: error: could not execute query: ERROR:  syntax error at or near \"IS\"\n"
        "LINE 1: COMMENT ON TABLE public.t IS IS 'retry on connection reset';\n"
        "                                     ^\n"
        "Command was: COMMENT ON TABLE public.t IS IS 'retry on connection reset';\n",
        SourceError,
        'pg_restore: error: could not execute query: ERROR:  syntax error at or near "IS"'),
    "psycopg error with a DETAIL line": Case(
        'duplicate key value violates unique constraint "t_pkey"\n'
        "DETAIL:  Key (id, email)=(1, ada@example.com) already exists.",
        SourceError, 'duplicate key value violates unique constraint "t_pkey"'),
    "the server's message completes the tool's summary": Case(
        'pg_dump: error: Dumping the contents of table "t" failed: PQgetResult() failed.\n'
        'pg_dump: detail: Error message from server: ERROR:  could not open file "base/5/16384"\n'
        "pg_dump: detail: Command was: COPY public.t (id) TO stdout;\n",
        SourceError,
        'pg_dump: error: Dumping the contents of table "t" failed: PQgetResult() failed. Error '
        'message from server: ERROR:  could not open file "base/5/16384"'),
    "a server DETAIL after the server's message is row data": Case(
        f"{COPY_RESULT_FAILED}\n"
        "pg_dump: detail: Error message from server: ERROR:  could not read block 7 in file "
        '"base/5/16384": read only 0 of 8192 bytes\n'
        f"DETAIL:  connection reset while reading the row ({CANARY})\n"
        "pg_dump: detail: Command was: COPY public.accounts (id, email) TO stdout;\n",
        SourceError,
        f"{COPY_RESULT_FAILED} Error message from server: ERROR:  could not read block 7 in file "
        '"base/5/16384": read only 0 of 8192 bytes'),
    # --- restores into a server the dump does not suit (check_target refuses these first)
    "pg_restore 17+ into a server older than 17": Case(
        "pg_restore: error: could not execute query: ERROR:  unrecognized configuration "
        'parameter "transaction_timeout"\nCommand was: SET transaction_timeout = 0;\n',
        SourceError,
        "pg_restore: error: could not execute query: ERROR:  unrecognized configuration "
        'parameter "transaction_timeout"'),
    "pg_restore older than the archive": Case(
        "pg_restore: error: unsupported version (1.16) in file header\n", SourceError,
        "pg_restore: error: unsupported version (1.16) in file header"),
    "a column option the target does not know": Case(
        'pg_restore: error: could not execute query: ERROR:  unrecognized parameter "pg_attver"\n'
        "Command was: CREATE TABLE public.t (\n    id integer NOT NULL\n);\n"
        "ALTER TABLE ONLY public.t ALTER COLUMN id SET (pg_attver=26489096);\n\n",
        SourceError,
        'pg_restore: error: could not execute query: ERROR:  unrecognized parameter "pg_attver"'),
    # --- row data the server quotes: never shown
    "restore: a unique violation, its DETAIL quotes the key": Case(
        'pg_restore: error: COPY failed for table "accounts": ERROR:  duplicate key value '
        'violates unique constraint "accounts_email_idx"\n'
        f"DETAIL:  Key (email)=({CANARY}) already exists.\nCONTEXT:  COPY accounts, line 6\n",
        SourceError,
        'pg_restore: error: COPY failed for table "accounts": ERROR:  duplicate key value '
        'violates unique constraint "accounts_email_idx"'),
    "psql: a unique violation, its DETAIL quotes the key": Case(
        'psql:<stdin>:225: ERROR:  duplicate key value violates unique constraint '
        f'"accounts_email_idx"\nDETAIL:  Key (email)=({CANARY}) already exists.\n'
        "CONTEXT:  COPY accounts, line 6\n",
        SourceError,
        'psql:<stdin>:225: ERROR:  duplicate key value violates unique constraint '
        '"accounts_email_idx"'),
    "restore: the server quotes the input value in its message": Case(
        'pg_restore: error: COPY failed for table "accounts": ERROR:  invalid input syntax for '
        f'type integer: "{CANARY}"\n'
        f'CONTEXT:  COPY accounts, line 1, column email: "{CANARY}"\n',
        SourceError,
        'pg_restore: error: COPY failed for table "accounts": ERROR:  invalid input syntax for '
        "type integer: (not shown)"),
    "psql: a value out of range": Case(
        f'psql:<stdin>:31: ERROR:  value "{CANARY}" is out of range for type integer\n'
        f"CONTEXT:  COPY t, line 2, column n: \"{CANARY}\"\n",
        SourceError,
        "psql:<stdin>:31: ERROR:  value (not shown) is out of range for type integer"),
    "no severity: the last line": Case(
        "pg_dump: reading extensions\npg_dump: killed\n", SourceError, "pg_dump: killed"),
    "no output at all": Case("", SourceError, "no error output"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_classify_and_cause(name: str) -> None:
    case = CASES[name]
    assert classify_failure(case.output) is case.kind
    assert cause_line(case.output) == case.cause


@pytest.mark.parametrize("name", list(CASES))
def test_message_never_quotes_detail_or_sql(name: str) -> None:
    error = source_failure("pg_restore of the backup of source 'billing' failed (exit 1)",
                           CASES[name].output)
    message = str(error)
    assert type(error) is CASES[name].kind
    assert message.startswith("pg_restore of the backup of source 'billing' failed (exit 1): ")
    assert "\n" not in message
    for quoted in ("DETAIL", "CONTEXT", "Command was", "Query was", "LINE 1", "example.com",
                   "CREATE TABLE", "SET transaction_timeout", "pg_attver=", CANARY):
        assert quoted not in message


def test_the_tools_detail_line_is_not_a_server_detail() -> None:
    # pg_dump's "detail:" is lower case and carries the server's message; the server's own
    # "DETAIL:" (row data) and the tool's "detail: Command was:" (SQL) are dropped
    output = (f"{COPY_RESULT_FAILED}\n{ADMIN_SHUTDOWN}\n"
              f"DETAIL:  Key (id)=({CANARY}) already exists.\n"
              "pg_dump: detail: Command was: COPY public.accounts (id, email) TO stdout;\n")
    assert _reported_lines(output) == [COPY_RESULT_FAILED, ADMIN_SHUTDOWN]


def test_transient_is_a_source_error() -> None:
    # callers that only know SourceError still catch it
    assert issubclass(TransientSourceError, SourceError)


def test_a_long_cause_line_keeps_its_end() -> None:
    line = "pg_dump: error: " + "x" * 1000 + " FATAL:  password authentication failed"
    cause = cause_line(line)
    assert len(cause) == CAUSE_LIMIT + 3
    assert cause.startswith("...")
    assert cause.endswith("password authentication failed")


def test_psycopg_only_an_operational_error_can_be_transient() -> None:
    # a ProgrammingError's text may quote an identifier: it is never a connection problem
    quoted = psycopg.ProgrammingError('relation "connection refused" does not exist')
    assert type(_psycopg_failure("cannot count rows", quoted)) is SourceError

    dropped = psycopg.OperationalError("consuming input failed: server closed the connection "
                                       "unexpectedly\n\tThis probably means the server "
                                       "terminated abnormally")
    error = _psycopg_failure("cannot count rows", dropped)
    assert type(error) is TransientSourceError
    assert str(error) == ("cannot count rows: consuming input failed: server closed the "
                          "connection unexpectedly")

    empty = psycopg.OperationalError()
    assert str(_psycopg_failure("cannot count rows", empty)) == (
        "cannot count rows: OperationalError")
