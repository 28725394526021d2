"""PostgreSQL sources: ``pg_dump`` to a stream, ``pg_restore`` from a stream.

The client programs are chosen per server major (``regionvault.sources.pgtools``): a source is
dumped by the pg_dump of its own major (else the nearest newer one), and a backup is restored by
the pg_restore of the target's major when that can read the archive. ``check_target`` refuses,
before anything is written, a target too old for the dump. The versions of the source server and
of pg_dump are recorded in ``DumpInfo`` (the manifest) and are also read back from the archive's
own header at restore time, so a backup whose manifest predates them is planned the same way.

The DSN is split so that the password travels only in the child's environment
(``PGPASSWORD``), never on its command line where ``ps`` would show it. That environment is
built from an allowlist (``regionvault.childenv``): the worker's own secrets (domain keys,
cloud credentials, its settings) never reach pg_dump or pg_restore.

Every failure of pg_dump, pg_restore, psql or psycopg is classified here, once, where it
enters: ``TransientSourceError`` when the server could not be reached or dropped the connection
(worth retrying), plain ``SourceError`` for everything else (a wrong password is never
retried). The message names the step and quotes the line that says why: the server's own
ERROR/FATAL message where there is one, never a DETAIL or CONTEXT line or quoted SQL (they can
hold row data), and with a quoted input value in the message itself left out.

Row counts are read from the archive as it streams past (``pgarchive``), so a dump scans each
table once. Which tables are counted, and how, is defined once here (``_counted_tables``) and
used both for the manifest at dump time and for the restored database in a drill.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from regionvault.childenv import child_environment
from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.sources.base import DumpInfo
from regionvault.sources.pgarchive import ArchiveRowCounter, TableName
from regionvault.sources.pgtools import (
    DumpVersions,
    PgTools,
    PgVersion,
    RestorePlan,
    archive_versions,
    installed_tools,
    plan_restore,
    tools_for_server,
)
from regionvault.sources.programs import READ_SIZE, pump_stdout

log = logging.getLogger(__name__)


#: how much of a restore's stream is read before pg_restore starts, to learn the archive's
#: versions from its header (a few hundred bytes; the first chunk is usually much larger)
ARCHIVE_HEAD_BYTES = 4096


def pg_tool(name: str) -> str:
    """Path of a client program of the default tools: ``REGIONVAULT_PG_BIN`` if set, else the
    newest installed major (``pgtools``). Dumps and restores choose per server instead."""
    return installed_tools().newest().program(name)


def split_dsn(dsn: str) -> tuple[str, dict[str, str]]:
    """(conninfo without the password, environment carrying the password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError("a PostgreSQL DSN is malformed (its value is not shown)") from None
    env: dict[str, str] = {}
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


# --- failure classification -------------------------------------------------------------------

#: the start of a message from a PostgreSQL client program ("psql:<stdin>:12: " names where
#: in its input psql was); such a line also ends a quoted block
_TOOL_PREFIX = r"(?:pg_dump|pg_restore|pg_dumpall|psql)(?::[^:\s]+:\d+)?: "
_TOOL_LINE = re.compile(f"^{_TOOL_PREFIX}")

#: Lines that quote SQL or row data (DETAIL can hold a row's values, CONTEXT a COPY input line,
#: ``Command was:`` a whole statement, continued on the lines after it). They and what follows
#: them, up to the next tool message, are never classified and never shown: a quoted row could
#: say anything. pg_dump's own ``detail: Error message from server:`` is not one of them: it
#: carries the server's primary message, which is the cause (see ``_SERVER_MESSAGE``).
#: Case-sensitive on purpose: the tool's own lower-case ``detail:`` must not read as the
#: server's ``DETAIL:``.
_QUOTING = re.compile(
    f"^(?:{_TOOL_PREFIX}detail: |{_TOOL_PREFIX})?"
    r"(?:DETAIL|CONTEXT|HINT|QUERY|STATEMENT|LINE \d+|Command was|Query was):")

#: pg_dump and pg_restore (15 and later) report a failed libpq call as an ``error:`` line
#: naming the step ('Dumping the contents of table "t" failed: PQgetResult() failed.') and a
#: ``detail:`` line with the server's message: together they say what failed and why.
_SERVER_MESSAGE = re.compile(
    r"^(?:pg_dump|pg_restore|pg_dumpall): detail: (Error message from server: .*)$")

#: Failures that trying again will not fix. Checked first: a line can carry both kinds
#: ("could not connect to server: Permission denied").
_PERMANENT = re.compile(
    "|".join([
        r"authentication failed",  # password, ident, peer, cert, ...
        r"no pg_hba\.conf entry",
        r"no password supplied",
        r'(?:role|database) "[^"]*" does not exist',
        r"permission denied",
        r"server version mismatch",  # pg_dump older than the server
    ]),
    re.IGNORECASE,
)

#: The server could not be reached, was not accepting connections yet, or dropped the
#: connection: worth trying again with backoff.
_TRANSIENT = re.compile(
    "|".join([
        r"connection refused",
        r"could not connect",
        r"timeout expired",
        r"timed out",
        r"server closed the connection unexpectedly",
        r"terminating connection due to administrator command",
        r"conflict with recovery",  # a hot standby replaying WAL cancelled the query
        r"the database system is (?:starting up|shutting down|in recovery mode"
        r"|not (?:yet )?accepting connections)",
        r"too many (?:connections|clients)",
        r"remaining connection slots are reserved",
        r"connection reset",
        r"SSL SYSCALL error",
        r"SSL connection has been closed unexpectedly",
        r"could not (?:send data to|receive data from) server",
        r"the connection is lost",
        r"no route to host",
        r"network is unreachable",
        r"temporary failure in name resolution",
    ]),
    re.IGNORECASE,
)

#: the lines a person should read when no marker above matched, best first
_SEVERITY = re.compile(r"\b(?:FATAL|PANIC|ERROR):")
_TOOL_ERROR = re.compile(f"^{_TOOL_PREFIX}error:")

#: An input value quoted in a server's primary message: 'invalid input syntax for type
#: integer: "<value>"' (also enum, array, date/time, ... input), 'value "<value>" is out of
#: range'. A restore's COPY puts row data there; identifiers are quoted after a noun
#: ('relation "t"') and stay.
_QUOTED_VALUES = (
    (re.compile(r'(: )".*"$'), r"\1(not shown)"),
    (re.compile(r'\bvalue "[^"]*"'), "value (not shown)"),
)

CAUSE_LIMIT = 400


def _reported_lines(output: str) -> list[str]:
    """The non-empty lines of ``output`` outside quoted SQL and row data, stripped."""
    lines: list[str] = []
    quoting = False
    for raw in output.splitlines():
        line = raw.strip()
        if not line:
            continue
        if _QUOTING.match(line):
            quoting = True
            continue
        if _TOOL_LINE.match(line):
            quoting = False
        if not quoting:
            lines.append(line)
    return lines


def classify_failure(output: str) -> type[SourceError]:
    """``TransientSourceError`` or ``SourceError`` for the stderr of pg_dump/pg_restore/psql or
    the message of a psycopg error. Anything not known to be transient is permanent."""
    lines = _reported_lines(output)
    if any(_PERMANENT.search(line) for line in lines):
        return SourceError
    if any(_TRANSIENT.search(line) for line in lines):
        return TransientSourceError
    return SourceError


def _hide_values(line: str) -> str:
    for pattern, replacement in _QUOTED_VALUES:
        line = pattern.sub(replacement, line)
    return line


def cause_line(output: str, limit: int = CAUSE_LIMIT) -> str:
    """The line of ``output`` that says what went wrong (never a DETAIL or quoted SQL).

    The line that decided the classification, else the first with a server severity or a
    tool's ``error:``, else the last line. A tool's ``error:`` line and the server message on
    the ``detail:`` line after it are one cause: both are given, joined. An input value quoted
    in it is replaced by "(not shown)". Clipped to its last ``limit`` characters.
    """
    lines = _reported_lines(output)
    if not lines:
        return "no error output"
    index = len(lines) - 1
    for pattern in (_PERMANENT, _TRANSIENT, _SEVERITY, _TOOL_ERROR):
        found = next((i for i, line in enumerate(lines) if pattern.search(line)), None)
        if found is not None:
            index = found
            break
    chosen = lines[index]
    if _SERVER_MESSAGE.match(chosen) and index > 0 and _TOOL_ERROR.match(lines[index - 1]):
        index -= 1
    server = _SERVER_MESSAGE.match(lines[index + 1]) if index + 1 < len(lines) else None
    if _TOOL_ERROR.match(lines[index]) and server is not None:
        chosen = f"{lines[index]} {server.group(1)}"
    chosen = _hide_values(chosen)
    return chosen if len(chosen) <= limit else "..." + chosen[-limit:]


def source_failure(what: str, output: str) -> SourceError:
    """The error to raise: classified by ``output``, saying "<what>: <cause line>"."""
    return classify_failure(output)(f"{what}: {cause_line(output)}")


def _psycopg_failure(what: str, exc: psycopg.Error) -> SourceError:
    # psycopg messages name host, port and user, never the password. Only an OperationalError
    # (connection trouble, shutdown, too many connections) can be transient: the text of a
    # ProgrammingError may quote an identifier that happens to read "connection refused".
    message = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, psycopg.OperationalError):
        return SourceError(f"{what}: {cause_line(message)}")
    return source_failure(what, message)


def _tool_failure(tool: str, what: str, code: int, stderr: Path) -> SourceError:
    output = stderr.read_text(errors="replace")
    return source_failure(f"{tool} of {what} failed (exit {code})", output)


def _server_version(conn: psycopg.Connection[Any]) -> PgVersion:
    """The server's major (from ``server_version_num``: 150020 is 15, 90624 is 9) and its
    version number as it reports it, without a packager's suffix ("15.20")."""
    row = conn.execute("SELECT current_setting('server_version_num'), "
                       "current_setting('server_version')").fetchone()
    assert row is not None
    number = str(row[1]).split()[0] if str(row[1]).split() else str(row[0])
    return PgVersion(major=int(row[0]) // 10000, number=number)


class PostgresSource:
    """A PostgreSQL database. Opened without a DSN (``restorer_for``) it can only check,
    count and restore into targets: it has no source to dump."""

    kind = "postgres"

    def __init__(self, name: str, dsn: str | None = None) -> None:
        self.name = name
        self._dsn = dsn

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"PostgresSource(name={self.name!r})"

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        # One repeatable-read transaction exports its snapshot and pg_dump imports it
        # (--snapshot). The rows are counted in the archive as it passes to ``write``; what the
        # archive cannot tell is counted in SQL in that same transaction, after pg_dump, so
        # counts and dump always describe the same instant.
        if self._dsn is None:
            raise ConfigError(f"source {self.name!r} was opened for restores only: it has no "
                              "DSN to dump from")
        archive = ArchiveRowCounter()

        def write_counted(chunk: bytes) -> None:
            archive.feed(chunk)
            write(chunk)

        try:
            with psycopg.connect(self._dsn, connect_timeout=30) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                server = _server_version(conn)
                try:
                    tools = tools_for_server(server.major)
                except SourceError as exc:
                    raise SourceError(f"source {self.name!r} cannot be dumped: {exc}") from None
                row = conn.execute("SELECT pg_export_snapshot()").fetchone()
                assert row is not None
                self._run_pg_dump(tools, write_counted, snapshot=str(row[0]))
                archive.finish()
                counts = self._snapshot_counts(conn, archive)
                conn.rollback()
        except psycopg.Error as exc:
            raise _psycopg_failure(f"source {self.name!r} cannot be read", exc) from None
        return DumpInfo(row_counts=counts, server_version=server.number,
                        tool_version=tools.version)

    def _snapshot_counts(self, conn: psycopg.Connection[Any],
                         archive: ArchiveRowCounter) -> dict[str, int]:
        """The counts of ``_counted_tables`` in the dump's snapshot (``conn`` is still in it)."""
        in_archive = archive.rows_by_table()
        if in_archive is None:
            log.warning("source %r: the dump's archive could not be counted (%s); counting "
                        "every table in SQL instead, in the same snapshot, which reads each "
                        "table a second time", self.name, archive.failure)
            return _row_counts(conn)
        counts: dict[str, int] = {}
        in_sql: list[str] = []
        for table in _counted_tables(conn):
            rows = table.rows_in(in_archive)
            if rows is None:
                rows = _count_rows(conn, table.name)
                in_sql.append(str(table.name))
            counts[str(table.name)] = rows
        if in_sql:
            log.info("source %r: %d table(s) whose rows the archive does not hold in full "
                     "(extension tables, foreign partitions, ...) counted in SQL in the dump's "
                     "snapshot: %s", self.name, len(in_sql), ", ".join(in_sql[:20]))
        return counts

    def _run_pg_dump(self, tools: PgTools, write: Callable[[bytes], object], *,
                     snapshot: str) -> None:
        assert self._dsn is not None
        conninfo, env = split_dsn(self._dsn)
        # custom format: pg_restore can select and reorder; no compression here because the
        # stream is compressed with zstd afterwards.
        argv = [tools.program("pg_dump"), "--format=custom", "--compress=0", "--no-password",
                f"--snapshot={snapshot}", f"--dbname={conninfo}"]
        with tempfile.TemporaryDirectory(prefix="rv-pgdump-") as tmp:
            stderr_path = Path(tmp) / "stderr"
            with stderr_path.open("wb") as stderr:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr,
                                        env=child_environment(os.environ, env))
                code = pump_stdout(proc, write)
            if code != 0:
                raise _tool_failure("pg_dump", f"source {self.name!r}", code, stderr_path)

    def check_target(self, target_dsn: str, *, clean: bool = False,
                     dump: DumpInfo | None = None) -> None:
        """Refuse, before anything is written, a target this backup cannot be restored into:
        one whose server is too old for the dump, or whose tools are missing
        (``pgtools.plan_restore`` says which), or one that already holds tables, views or
        sequences unless ``clean``. ``dump`` is what the manifest recorded; without its
        versions (an older manifest) only the contents are checked here, and ``restore``
        checks the versions from the archive's own header before pg_restore starts."""
        target, relations = _inspect_target(target_dsn)
        versions = (DumpVersions.of(dump.server_version, dump.tool_version)
                    if dump is not None else None)
        if versions is not None:
            plan = plan_restore(versions, target, label=f"backup of source {self.name!r}")
            if plan.unknown_settings:
                plan.tools.program("psql")  # the restore goes through psql: is it there?
        if relations and not clean:
            raise ConfigError(
                f"the target database is not empty ({relations} tables, views or sequences); "
                "pass --clean to replace its contents, or restore into an empty database"
            )

    def row_counts(self, target_dsn: str) -> dict[str, int]:
        return row_counts(target_dsn)

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        restore_dump(chunks, target_dsn, label=f"backup of source {self.name!r}", clean=clean)


@dataclass(frozen=True)
class TablePart:
    """A table itself, or one of its partitions or inheritance children (at any depth)."""

    name: TableName
    #: pg_class.relkind: 'r' holds rows, 'p' (partitioned) holds none, 'f' is foreign, ...
    relkind: str
    #: created by an extension: pg_dump dumps its rows only if the extension asks, filtered
    extension: bool


@dataclass(frozen=True)
class CountedTable:
    """A table whose rows the manifest records: what ``SELECT count(*)`` returns for it."""

    name: TableName
    #: the table and everything ``SELECT count(*) FROM name`` reads besides it
    parts: tuple[TablePart, ...]

    def rows_in(self, in_archive: Mapping[TableName, int]) -> int | None:
        """Its rows from the archive's own rows per table, or None when the archive does not
        hold every row that ``count(*)`` would see (so the caller must count in SQL)."""
        total = 0
        for part in self.parts:
            if part.relkind == "p":
                continue  # a partitioned table stores nothing itself
            if part.relkind != "r" or part.extension or part.name not in in_archive:
                return None
            total += in_archive[part.name]
        return total


#: The tables whose rows the manifest records, and what ``count(*)`` reads for each: every
#: ordinary or partitioned table outside the system schemas (as ``pg_tables`` lists them) but
#: other sessions' temporary tables, which nobody else can read and pg_dump never dumps.
_COUNTED_TABLES = """
WITH RECURSIVE counted AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
), tree (root, rel) AS (
    SELECT oid, oid FROM counted
    UNION
    SELECT tree.root, i.inhrelid FROM tree JOIN pg_inherits i ON i.inhparent = tree.rel
)
SELECT rn.nspname, r.relname, pn.nspname, p.relname, p.relkind::text,
       EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
               AND d.objid = p.oid AND d.deptype = 'e')
FROM tree
JOIN pg_class r ON r.oid = tree.root JOIN pg_namespace rn ON rn.oid = r.relnamespace
JOIN pg_class p ON p.oid = tree.rel JOIN pg_namespace pn ON pn.oid = p.relnamespace
ORDER BY 1, 2, 3, 4
"""


def _counted_tables(conn: psycopg.Connection[Any]) -> list[CountedTable]:
    """The tables to count, each with its parts (catalog reads only: no table is scanned)."""
    parts: dict[TableName, list[TablePart]] = {}
    for schema, table, part_schema, part_table, relkind, extension in conn.execute(
            _COUNTED_TABLES).fetchall():
        parts.setdefault(TableName(schema, table), []).append(
            TablePart(TableName(part_schema, part_table), relkind, bool(extension)))
    return [CountedTable(name, tuple(found)) for name, found in parts.items()]


def _count_rows(conn: psycopg.Connection[Any], table: TableName) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(table.schema), sql.Identifier(table.name))
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def _row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {str(t.name): _count_rows(conn, t.name) for t in _counted_tables(conn)}


def row_counts(dsn: str) -> dict[str, int]:
    """Exact rows per table ("schema.table") of a database, as a dump records them in
    ``DumpInfo.row_counts`` (see ``_COUNTED_TABLES``)."""
    try:
        with psycopg.connect(dsn, connect_timeout=30) as conn:
            return _row_counts(conn)
    except psycopg.Error as exc:
        raise _psycopg_failure("cannot count rows", exc) from None


#: tables, views, sequences, ... outside the system schemas: what makes a target "not empty"
_USER_RELATIONS = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' "
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')")


def user_relations(dsn: str) -> int:
    """How many tables, views, sequences, ... live outside the system schemas."""
    return _inspect_target(dsn)[1]


def _inspect_target(dsn: str) -> tuple[PgVersion, int]:
    """A target server's version and how many user relations its database holds."""
    try:
        with psycopg.connect(dsn, connect_timeout=30) as conn:
            version = _server_version(conn)
            row = conn.execute(_USER_RELATIONS).fetchone()
    except psycopg.Error as exc:
        raise _psycopg_failure("cannot inspect the target database", exc) from None
    return version, int(row[0]) if row else 0


def scalar(dsn: str, query: str) -> str:
    """The first column of the first row of ``query`` as text ("" when no row)."""
    try:
        with psycopg.connect(dsn, connect_timeout=30) as conn:
            conn.read_only = True
            row = conn.execute(query.encode()).fetchone()
    except psycopg.Error as exc:
        raise _psycopg_failure("the check query failed", exc) from None
    return "" if row is None or row[0] is None else str(row[0])


def database_dsn(server_dsn: str, dbname: str) -> str:
    """The same server and credentials as ``server_dsn``, another database."""
    params = conninfo_to_dict(server_dsn)
    params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def create_database(server_dsn: str, name: str) -> None:
    _admin(server_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_dsn: str, name: str) -> None:
    _admin(server_dsn,
           sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(server_dsn: str, name: str) -> bool:
    try:
        with psycopg.connect(server_dsn, connect_timeout=30) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    except psycopg.Error as exc:
        raise _psycopg_failure("cannot list databases", exc) from None
    return row is not None


class PostgresServer:
    """A PostgreSQL server as a ``ScratchServer`` (drills and disaster recovery)."""

    database_dsn = staticmethod(database_dsn)
    create_database = staticmethod(create_database)
    drop_database = staticmethod(drop_database)
    database_exists = staticmethod(database_exists)
    scalar = staticmethod(scalar)


def _admin(server_dsn: str, statement: sql.Composed) -> None:
    try:
        # CREATE/DROP DATABASE cannot run inside a transaction block
        with psycopg.connect(server_dsn, autocommit=True, connect_timeout=30) as conn:
            conn.execute(statement)
    except psycopg.Error as exc:
        raise _psycopg_failure("database administration failed", exc) from None


def restore_dump(chunks: Iterable[bytes], target_dsn: str, *, label: str,
                 clean: bool = False) -> None:
    """Feed a custom-format dump into ``pg_restore`` for the target database.

    One transaction: if the stream fails its checks half-way, or pg_restore fails, the target
    is left exactly as it was. That rules out ``--jobs``, which also needs a seekable archive
    file, and regionvault never writes the plaintext to disk.

    The first bytes of the stream (the archive's header) say which server and pg_dump made it;
    with the target's version they choose the pg_restore (``pgtools.plan_restore``), which may
    also refuse, before anything is written. Usually pg_restore loads the target itself
    (``--single-transaction``); when the only pg_restore that reads the archive sends settings
    the target does not know, its script goes through psql instead (``_restore_through_psql``).
    """
    stream = iter(chunks)
    head: list[bytes] = []
    while sum(map(len, head)) < ARCHIVE_HEAD_BYTES and (chunk := next(stream, None)) is not None:
        head.append(chunk)
    dump = archive_versions(b"".join(head)[:ARCHIVE_HEAD_BYTES])
    plan = _plan_for(dump, target_dsn, label)
    conninfo, env = split_dsn(target_dsn)
    everything = itertools.chain(head, stream)
    if plan.unknown_settings:
        _restore_through_psql(everything, plan, conninfo, env, label=label, clean=clean)
    else:
        _restore_directly(everything, plan.tools, conninfo, env, label=label, clean=clean)


def _plan_for(dump: DumpVersions | None, target_dsn: str, label: str) -> RestorePlan:
    try:
        target, _ = _inspect_target(target_dsn)
    except SourceError:
        # The target cannot be inspected (not there, wrong password, missing database): the
        # pg_restore that reads the archive tries, and says why in its own words, classified
        # as any pg_restore failure is. It cannot write anything a plan would have refused:
        # a target it can reach after all gets a transaction that fails or loads the dump.
        installed = installed_tools()
        floor = dump.pg_dump.major if dump is not None else 0
        try:
            return RestorePlan(tools=tools_for_server(floor, installed) if floor
                               else installed.newest())
        except SourceError:
            return RestorePlan(tools=installed.newest())
    return plan_restore(dump, target, label=label)


def _feed(proc: subprocess.Popen[bytes], stream: Iterator[bytes]) -> None:
    """Write ``stream`` to the process's stdin and close it; a process that stopped reading
    (a broken pipe) ends the feeding quietly: its exit code and stderr say why."""
    assert proc.stdin is not None
    try:
        for chunk in stream:
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            proc.stdin.close()


def _restore_directly(stream: Iterator[bytes], tools: PgTools, conninfo: str,
                      env: Mapping[str, str], *, label: str, clean: bool) -> None:
    argv = [tools.program("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
            "--single-transaction", "--no-password", f"--dbname={conninfo}"]
    if clean:
        argv[1:1] = ["--clean", "--if-exists"]
    with tempfile.TemporaryDirectory(prefix="rv-pgrestore-") as tmp:
        stderr_path = Path(tmp) / "stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env=child_environment(os.environ, env))
            try:
                _feed(proc, stream)
            except BaseException:
                _stop(proc)  # before the end of its input: its transaction is rolled back
                raise
            code = proc.wait()
        if code != 0:
            raise _tool_failure("pg_restore", f"the {label}", code, stderr_path)


#: a line of the preamble pg_restore writes before the first object: comments, session
#: settings and psql meta-commands (``\restrict``)
_PREAMBLE_LINE = re.compile(
    rb"^(?:[ \t\r]*|--.*|SET [a-z_]+ = .*;|SELECT pg_catalog\.set_config\(.*\);|\\[a-z]+.*)\n$")
#: a line longer than this is no preamble line (the filter then passes everything on)
_PREAMBLE_LINE_LIMIT = 64 * 1024


class _SettingsFilter:
    """Leaves ``SET <name> = ...;`` lines of the given settings out of the preamble of a
    pg_restore script, and passes everything from the first object on untouched.

    pg_restore writes its session settings once, at the very start, before any object or row;
    only there is such a line its own. Further on, the same text could be a row of COPY data
    or part of a function body, which must reach the target byte for byte.
    """

    def __init__(self, settings: Iterable[str]) -> None:
        self._drop = tuple(f"SET {name} = ".encode() for name in settings)
        self._pending = b""
        self._in_preamble = True

    def feed(self, data: bytes) -> bytes:
        if not self._in_preamble:
            return data
        self._pending += data
        out = bytearray()
        while self._in_preamble:
            end = self._pending.find(b"\n")
            if end < 0:
                self._in_preamble = len(self._pending) <= _PREAMBLE_LINE_LIMIT
                break
            line, self._pending = self._pending[:end + 1], self._pending[end + 1:]
            if not _PREAMBLE_LINE.match(line):
                self._in_preamble = False
            elif line.startswith(self._drop):
                continue
            out += line
        if not self._in_preamble:
            out += self._pending
            self._pending = b""
        return bytes(out)

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest


class _ScriptPump(threading.Thread):
    """Carries pg_restore's script to psql through a ``_SettingsFilter``.

    It never closes psql's input: psql commits its single transaction at the end of its input,
    so only the caller, once pg_restore has succeeded, may give it that end. If psql stops
    reading (it failed), pg_restore is killed: nothing more could be loaded.
    """

    def __init__(self, script: IO[bytes], psql: IO[bytes], restore: subprocess.Popen[bytes],
                 settings: Iterable[str]) -> None:
        super().__init__(name="rv-pgrestore-script", daemon=True)
        self._script = script
        self._psql = psql
        self._restore = restore
        self._filter = _SettingsFilter(settings)
        #: why the script could not be carried (not psql's or pg_restore's own failure)
        self.failure: str | None = None

    def run(self) -> None:
        psql_reads = True
        try:
            while data := self._script.read(READ_SIZE):
                out = self._filter.feed(data)
                if out and psql_reads:
                    psql_reads = self._write(out)
            rest = self._filter.finish()
            if psql_reads and self._write(rest):
                self._write_flush()
        except Exception as exc:  # reported by the caller, after both processes are stopped
            self.failure = f"{type(exc).__name__}: {exc}"
            self._restore.kill()
        finally:
            self._script.close()

    def _write(self, data: bytes) -> bool:
        try:
            self._psql.write(data)
        except BrokenPipeError:
            self._restore.kill()
            return False
        return True

    def _write_flush(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._psql.flush()


def _restore_through_psql(stream: Iterator[bytes], plan: RestorePlan, conninfo: str,
                          env: Mapping[str, str], *, label: str, clean: bool) -> None:
    """pg_restore writes the dump as a script, without the settings the target does not know,
    and psql loads it in one transaction (``--single-transaction`` with ``ON_ERROR_STOP``: an
    error rolls everything back). psql is killed, never given the end of its input, when
    anything else fails, so a half-read backup is never committed.

    Used for dumps that only a pg_restore newer than the target can read (see
    ``pgtools.plan_restore``); the password goes to psql alone, in its environment.
    """
    tools = plan.tools
    restore_argv = [tools.program("pg_restore"), "--no-owner", "--no-privileges",
                    "--exit-on-error", "--file=-"]
    if clean:
        restore_argv[1:1] = ["--clean", "--if-exists"]
    psql_argv = [tools.program("psql"), "--no-psqlrc", "--quiet", "--no-password",
                 "--single-transaction", "--set=ON_ERROR_STOP=1", "--file=-",
                 f"--dbname={conninfo}"]
    log.info("the %s is restored through psql: pg_restore %s sets %s, which the target's "
             "server does not know", label, tools.number, ", ".join(plan.unknown_settings))
    with tempfile.TemporaryDirectory(prefix="rv-pgrestore-") as tmp:
        restore_stderr, psql_stderr = Path(tmp) / "pg_restore.stderr", Path(tmp) / "psql.stderr"
        with restore_stderr.open("wb") as restore_err, psql_stderr.open("wb") as psql_err:
            psql = subprocess.Popen(psql_argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=psql_err, env=child_environment(os.environ, env))
            assert psql.stdin is not None
            try:
                # writing a script connects nowhere: pg_restore gets no password
                restore = subprocess.Popen(restore_argv, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=restore_err,
                                           env=child_environment(os.environ))
            except BaseException:
                _stop(psql)
                raise
            assert restore.stdout is not None
            pump = _ScriptPump(restore.stdout, psql.stdin, restore, plan.unknown_settings)
            pump.start()
            try:
                _feed(restore, stream)
                restore_code = restore.wait()
                pump.join()
            except BaseException:
                _stop(psql)  # first: its transaction must never see the end of its input
                _stop(restore)
                pump.join()
                raise
            psql_code = psql.poll()
            if restore_code == 0 and pump.failure is None and psql_code is None:
                with contextlib.suppress(BrokenPipeError):
                    psql.stdin.close()  # the end of its input: psql commits
                psql_code = psql.wait()
                failed = None if psql_code == 0 else "psql"
            else:
                # psql failed first (and pg_restore was stopped for it), or pg_restore or the
                # pump failed: psql must not commit what it has
                failed = "psql" if psql_code is not None else "pg_restore"
                _stop(psql)
        if failed == "psql":
            raise _tool_failure("psql", f"the {label}", psql.returncode, psql_stderr)
        if failed == "pg_restore":
            if pump.failure is not None and restore_code in (0, -signal.SIGKILL):
                raise SourceError(f"the script of the {label} could not be passed from "
                                  f"pg_restore to psql: {pump.failure}")
            raise _tool_failure("pg_restore", f"the {label}", restore_code, restore_stderr)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc`` (if it still runs) and reap it, without giving it the end of its input."""
    proc.kill()
    proc.wait()
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
