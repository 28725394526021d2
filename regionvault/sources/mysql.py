"""MySQL and MariaDB sources: ``mariadb-dump`` to a stream, the ``mariadb`` client from one.

Credentials. The password reaches the dump and client programs only through an option file
(``[client]`` user, password, host, port) written with mode 0600 in a private directory (mode
0700) and removed when the program has exited; never on a command line, where ``ps`` would show
it, and not as ``MYSQL_PWD``, which the programs deprecate and ``/proc/<pid>/environ`` shows
to the same user. The file is passed as ``--defaults-file=`` (it must be the first option): the
programs then read no other option file, so ``/etc/mysql/*.cnf`` or a ``~/.my.cnf`` on the
worker cannot change the host, user or TLS settings behind the DSN's back, for the same reason
the child environment comes from an allowlist (``regionvault.childenv``). ``protocol=TCP`` (or
``SOCKET`` with ``?socket=``) is explicit, so ``localhost`` never silently means this machine's
own server socket.

The snapshot and its row counts. ``mariadb-dump --single-transaction`` reads every InnoDB
table in one ``START TRANSACTION WITH CONSISTENT SNAPSHOT``. That snapshot belongs to
mariadb-dump's own session: no other session can join it (MySQL and MariaDB have nothing like
PostgreSQL's exported snapshots), so counting rows in a second connection would count another
instant. The rows are therefore counted in the dump itself as it streams past
(``DumpRowCounter``): each row of each ``INSERT`` that mariadb-dump writes is one row of the
snapshot, so the counts are exactly those of the dumped snapshot, and the tables read once.
The counter follows the statement splitting of the ``mariadb`` client that will replay the
dump (quotes, comments, ``DELIMITER``, the ``sql_mode`` flags that change how backslashes are
read), so an ``INSERT`` inside a trigger or routine body is never taken for data. It keeps only
a bounded look-ahead, never a row. If the dump is not what it expects, it records why and the
dump's row counts are left empty (a drill then reports that the manifest has none) rather than
guessed. Tables are named by table name alone ("orders", not "shop.orders"): a dump holds one
database and is restored into a database of any name; ``row_counts`` names a target's tables
the same way. Counted are the base tables (and MariaDB's system-versioned ones, current rows),
as ``SELECT COUNT(*)`` counts them; not views, not sequences. Non-transactional tables (MyISAM,
Aria) and DDL while the dump runs are not covered by the snapshot, as with mariadb-dump itself.

Restores. The dump is fed to the ``mariadb`` client in binary mode, with ``autocommit=0`` set
on connect and a ``COMMIT`` sent only after the last byte has arrived and the dump's closing
``-- Dump completed`` line has been seen. What that makes atomic is limited by MySQL and MariaDB
themselves: every DDL statement (``CREATE TABLE``, ``DROP TABLE``, ``CREATE TRIGGER``, ...)
commits implicitly, and the dump interleaves them with the data, table by table. So the rows of
one table arrive in one transaction (an InnoDB table is either fully loaded or left empty), but
tables, views, routines, triggers and events already created stay when a restore fails half-way
(the client is killed: its open transaction, the current table's rows, is rolled back). A
failed restore therefore leaves a partial target, which ``check_target`` refuses afterwards;
restoring again with ``clean`` first drops everything in the target database (tables, views,
sequences, routines, events; triggers go with their tables) and replaces it. ``clean`` itself
is not undone if the restore then fails.

Failures are classified here, once, where they enter: by the MySQL error number wherever there
is one (``ERROR 2003``, ``Got error: 1045``, a pymysql exception), ``TransientSourceError`` only
when the server could not be reached, was not accepting connections or dropped the connection
(and when mariadb-dump fails without a word, which it does when its connection is dropped
between two queries). Server messages are shown only for error numbers whose text names users,
hosts, databases or tables; others (a duplicate key, a syntax error ``near '...'``) quote row
data or SQL and are replaced by a description of the error. A statement that the client echoes
with its error is never shown (and MariaDB's client is told not to echo it).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

import pymysql

from regionvault.childenv import child_environment
from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.sources.base import DumpInfo
from regionvault.sources.programs import pump_stdout

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30
DEFAULT_PORT = 3306
#: the dump programs, best first (mysqldump is MariaDB's old name and Oracle MySQL's)
DUMP_PROGRAMS = ("mariadb-dump", "mysqldump")
#: the clients that replay a dump, best first
CLIENT_PROGRAMS = ("mariadb", "mysql")
#: a directory holding the programs, to use instead of PATH
BIN_ENV = "REGIONVAULT_MYSQL_BIN"

#: What every dump is made with:
#: one consistent InnoDB snapshot and no table locks (``--single-transaction``,
#: ``--skip-lock-tables``); rows streamed, not buffered (``--quick``); everything a database
#: holds besides tables (``--routines --triggers --events``); binary values as hex literals, so
#: no byte depends on a character set (``--hex-blob``); text as utf8mb4; no ``LOCK TABLES``
#: in the output (``--skip-add-locks``: it would commit the restore's transaction and needs
#: the LOCK TABLES privilege); no tablespaces (they need the PROCESS privilege and belong to
#: the server, not the database); rows as large as the server allows (``--max-allowed-packet``
#: is the client's limit, the server's own is not changed). The output keeps its comments: the
#: closing ``-- Dump completed`` line tells a complete dump from a truncated one.
DUMP_OPTIONS = (
    "--single-transaction",
    "--skip-lock-tables",
    "--skip-add-locks",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--no-tablespaces",
    "--max-allowed-packet=1G",
)
#: Oracle MySQL's mysqldump only: no GTID_PURGED statement (it needs SUPER to restore) and no
#: column statistics (MariaDB servers have no such table; "loose": MySQL 5.7 lacks the option)
MYSQL_DUMP_OPTIONS = ("--set-gtid-purged=OFF", "--loose-column-statistics=0")

#: How the client replays a dump: binary mode (no client commands but DELIMITER, NUL bytes
#: and CR/LF kept as they are), comments sent to the server (without ``--comments`` the client
#: strips them from trigger and routine bodies too), stop at the first error (the default
#: without --force), never reconnect (a new session would continue half-way, outside the
#: transaction), and one transaction until the next DDL statement commits it
#: (``autocommit=0``).
RESTORE_OPTIONS = (
    "--batch",
    "--binary-mode",
    "--comments",
    "--skip-reconnect",
    "--default-character-set=utf8mb4",
    "--max-allowed-packet=1G",
    "--init-command=SET autocommit=0",
)
#: MariaDB's client only: do not print a failed statement (it can hold row data) to stderr
MARIADB_RESTORE_OPTIONS = ("--skip-print-query-on-error",)


# --- programs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """A client program of MySQL or MariaDB, and what it says it is."""

    path: str
    #: its ``--version`` line, e.g. "mariadb-dump  Ver 10.19 Distrib 10.11.19-MariaDB, ..."
    version: str

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def mariadb(self) -> bool:
        return "mariadb" in self.version.lower()


def find_program(names: tuple[str, ...]) -> Program:
    """The first of ``names`` in ``REGIONVAULT_MYSQL_BIN`` if it is set, else on PATH.

    A set ``REGIONVAULT_MYSQL_BIN`` is not a hint: an operator who points it at a directory
    wants those programs (matching a server's version), never a silent fallback to PATH.
    """
    bin_dir = os.environ.get(BIN_ENV)
    if bin_dir:
        found = next((str(Path(bin_dir) / n) for n in names if (Path(bin_dir) / n).is_file()),
                     None)
        if found is None:
            raise SourceError(f"{' or '.join(names)} is not in {BIN_ENV} ({bin_dir}): put it "
                              f"there or unset {BIN_ENV} to use PATH")
    else:
        found = next((p for p in map(shutil.which, names) if p is not None), None)
        if found is None:
            raise SourceError(f"{names[0]} is not installed: install the Debian package "
                              f"mariadb-client or set {BIN_ENV} to the directory that holds it")
    return Program(path=found, version=_version_of(found))


def _version_of(path: str) -> str:
    # --no-defaults: the machine's option files play no part, not even in --version
    try:
        done = subprocess.run([path, "--no-defaults", "--version"], capture_output=True,
                              text=True, timeout=30, check=False,
                              env=child_environment(os.environ))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{Path(path).name} cannot be run: {exc}") from None
    if done.returncode != 0:
        raise SourceError(f"{Path(path).name} --version failed (exit {done.returncode}): "
                          f"{cause_line(done.stderr)}")
    return " ".join(done.stdout.split())


# --- DSN --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MySQLTarget:
    """A database to connect to, from a DSN. ``repr`` never shows the password."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str
    #: a unix socket path (``?socket=``); host and port are then not used
    socket: str | None = None


def parse_dsn(dsn: str) -> MySQLTarget:
    """``mysql://USER:PASSWORD@HOST:PORT/DATABASE`` (or ``mariadb://``), user, password and
    database percent-decoded, an optional ``?socket=/path``. A malformed DSN is a
    ``ConfigError`` that says what is wrong and never shows the DSN."""

    def malformed(why: str) -> ConfigError:
        return ConfigError(f"a MySQL DSN is malformed (its value is not shown): {why}; write it "
                           "as mysql://USER:PASSWORD@HOST:PORT/DATABASE")

    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError:
        raise malformed("its host or port cannot be read") from None
    if parts.scheme not in ("mysql", "mariadb"):
        raise malformed("it does not start with mysql:// or mariadb://")
    if parts.fragment:
        raise malformed("it has a #fragment")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise malformed("its ?query cannot be read") from None
    unknown = sorted(set(query) - {"socket"})
    if unknown:
        raise malformed(f"it has the unknown parameter(s) {', '.join(unknown)} (known: socket)")
    sockets = query.get("socket", [])
    if len(sockets) > 1 or (sockets and not sockets[0].startswith("/")):
        raise malformed("socket= must be given once, as an absolute path")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or "/" in path:
        raise malformed("it must name exactly one database after the host")
    if parts.username is None or not parts.username:
        raise malformed("it names no user")
    if parts.hostname is None and not sockets:
        raise malformed("it names no host (or ?socket=)")
    try:
        user = unquote(parts.username, errors="strict")
        password = unquote(parts.password or "", errors="strict")
        database = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise malformed("a percent-encoded part is not UTF-8") from None
    if "\0" in user + password + database:
        raise malformed("it contains a NUL character")
    return MySQLTarget(user=user, password=password, host=parts.hostname or "localhost",
                       port=port or DEFAULT_PORT, database=database,
                       socket=sockets[0] if sockets else None)


# --- the option file --------------------------------------------------------------------------


def option_file_text(target: MySQLTarget) -> str:
    """The ``[client]`` group that connects as ``target``, values quoted and escaped the way
    MySQL's and MariaDB's option-file reader undoes it (``#`` is a comment only outside
    quotes; backslash escapes are read inside them)."""
    lines = ["[client]", f"user={_option_value(target.user)}"]
    if target.password:
        lines.append(f"password={_option_value(target.password)}")
    if target.socket is not None:
        lines += [f"socket={_option_value(target.socket)}", "protocol=SOCKET"]
    else:
        lines += [f"host={_option_value(target.host)}", f"port={target.port}", "protocol=TCP"]
    return "\n".join(lines) + "\n"


def _option_value(value: str) -> str:
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r").replace("\t", "\\t"))
    return f'"{escaped}"'


@contextlib.contextmanager
def private_directory() -> Iterator[Path]:
    """A directory only we can enter (mkdtemp makes it 0700), removed with what it holds."""
    with tempfile.TemporaryDirectory(prefix="rv-mysql-") as tmp:
        yield Path(tmp)


def write_option_file(directory: Path, target: MySQLTarget) -> Path:
    """``directory/client.cnf`` for ``target``, created with mode 0600 (never wider, not even
    for a moment: the mode is given to ``open``, not set afterwards)."""
    path = directory / "client.cnf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(option_file_text(target))
    return path


# --- failure classification -------------------------------------------------------------------

#: Error numbers for "could not reach the server, it was not accepting connections yet, or the
#: connection dropped": worth trying again with backoff. Every other number is permanent.
TRANSIENT_CODES = frozenset({
    1040,  # Too many connections
    1053,  # Server shutdown in progress
    1203,  # User already has more than 'max_user_connections' active connections
    1927,  # Connection was killed (MariaDB)
    2002,  # Can't connect to (local) server
    2003,  # Can't connect to MySQL server on '...'
    2006,  # MySQL server has gone away
    2013,  # Lost connection to server during query
    2055,  # Lost connection to server at '...', system error
    4031,  # The client was disconnected by the server because of inactivity (MySQL 8)
})
#: 2005 "Unknown server host 'x' (-3)": -3 is EAI_AGAIN, a name server that did not answer
_DNS_TRY_AGAIN = re.compile(r"\(-3\)")

#: Error numbers whose message names only users, hosts, databases, tables, routines, limits or
#: states, never row values or SQL text: their message is shown as the server wrote it.
SHOWN_CODES = TRANSIENT_CODES | frozenset({
    1021, 1030, 1044, 1045, 1049, 1050, 1051, 1114, 1118, 1129, 1130, 1142, 1143, 1146, 1153,
    1180, 1181, 1193, 1205, 1213, 1227, 1251, 1290, 1317, 1370, 1419, 1449, 1698, 1792, 1836,
    2005, 2020, 2026, 2059,
})
#: What the hidden messages of common errors are about (their text quotes values or SQL).
DESCRIBED_CODES = {
    1048: "a NULL for a column that is NOT NULL",
    1062: "a duplicate value for a unique key",
    1064: "an SQL syntax error",
    1264: "a value out of range for its column",
    1265: "data truncated for a column",
    1292: "an incorrect value for its column",
    1366: "an incorrect value for its column",
    1406: "a value too long for its column",
    1451: "a foreign key constraint fails",
    1452: "a foreign key constraint fails",
}
_HIDDEN = "the server's message is not shown: it can quote SQL or row data"

_PROGRAMS = r"(?:mariadb-dump|mysqldump|mariadb|mysql)"
#: the client: "ERROR 1045 (28000): Access denied ...", "ERROR 1064 (42000) at line 7: ..."
#: (pymysql errors are written the same way, see ``_pymysql_line``)
_CLIENT_ERROR = re.compile(
    r"^ERROR (?P<code>\d+)(?: \((?P<state>[0-9A-Z]{5})\))?(?P<where> at line \d+)?: (?P<text>.*)$")
#: mariadb-dump: 'mariadb-dump: Got error: 1045: "Access denied ..." when trying to connect'
_DUMP_GOT_ERROR = re.compile(
    rf"^(?P<prog>{_PROGRAMS}): Got error: (?P<code>\d+): \"(?P<text>.*)\"(?P<where> when .*)?$")
#: mariadb-dump: "mariadb-dump: Couldn't execute 'SHOW ...': Lost connection ... (2013)"; the
#: query is mariadb-dump's own, but is never shown all the same
_DUMP_COULDNT = re.compile(
    rf"^(?P<prog>{_PROGRAMS}): Couldn't execute '.*': (?P<text>.*) \((?P<code>\d+)\)$")
#: mariadb-dump: "mariadb-dump: Error 2013: Lost connection ... when dumping table `t` at row: 5"
_DUMP_ERROR = re.compile(rf"^(?P<prog>{_PROGRAMS}): Error (?P<code>\d+): (?P<text>.*)$")
#: the first line of a failed statement that the mysql client echoes between these rulers
_RULER = re.compile(r"^-{10,}$")
#: other lines worth showing: a program's own message, or a client error without a number
_PROGRAM_LINE = re.compile(rf"^(?:{_PROGRAMS}: |ERROR\b)")
_WARNING = re.compile(rf"^(?:{_PROGRAMS}: )?\[?Warning\]?[: ]", re.IGNORECASE)
#: for lines without an error number
_PERMANENT_TEXT = re.compile(r"access denied|unknown database|permission denied", re.IGNORECASE)
_TRANSIENT_TEXT = re.compile(
    r"can't connect|lost connection|gone away|connection refused|too many connections"
    r"|connection reset|timed out", re.IGNORECASE)

CAUSE_LIMIT = 400


@dataclass(frozen=True)
class ReportedLine:
    """A line of a program's error output: its MySQL error number (0 when it has none), and
    the form of it that may be shown."""

    code: int
    shown: str

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES or (self.code == 2005 and bool(
            _DNS_TRY_AGAIN.search(self.shown)))


def _reported_lines(output: str) -> list[ReportedLine]:
    """The error lines of ``output`` that can be classified, each in a form safe to show.

    Lines echoing a failed statement (between rulers of dashes) are skipped, as is every line
    that is neither a known error form nor a program's own message: those can quote anything.
    """
    found: list[ReportedLine] = []
    echoing = False
    for raw in output.splitlines():
        line = raw.strip()
        if _RULER.match(line):
            echoing = not echoing
            continue
        if echoing or not line or _WARNING.match(line):
            continue
        reported = _coded_line(line)
        if reported is None and _PROGRAM_LINE.match(line):
            # the client's "ASCII '\0' appeared in the statement ... Query: '...'" quotes it
            reported = ReportedLine(0, line.split(" Query: ", 1)[0])
        if reported is not None:
            found.append(reported)
    return found


def _coded_line(line: str) -> ReportedLine | None:
    if m := _CLIENT_ERROR.match(line):
        code, state, where = int(m["code"]), m["state"], m["where"] or ""
        head = f"ERROR {code}" + (f" ({state})" if state else "") + where
        return ReportedLine(code, _with_message(head, code, m["text"]))
    if m := _DUMP_GOT_ERROR.match(line):
        code = int(m["code"])
        if code in SHOWN_CODES:
            return ReportedLine(code, line)
        return ReportedLine(code, _with_message(f"{m['prog']}: Got error: {code}{m['where'] or ''}",
                                                code, m["text"]))
    if m := _DUMP_COULDNT.match(line):
        code = int(m["code"])
        return ReportedLine(code, _with_message(f"{m['prog']}: a query failed with error {code}",
                                                code, m["text"]))
    if m := _DUMP_ERROR.match(line):
        code = int(m["code"])
        return ReportedLine(code, _with_message(f"{m['prog']}: Error {code}", code, m["text"]))
    return None


def _with_message(head: str, code: int, text: str) -> str:
    if code in SHOWN_CODES:
        return f"{head}: {text}"
    if code in DESCRIBED_CODES:
        return f"{head}: {DESCRIBED_CODES[code]} ({_HIDDEN})"
    return f"{head} ({_HIDDEN})"


def classify_failure(output: str) -> type[SourceError]:
    """``TransientSourceError`` or ``SourceError`` for the error output of mariadb-dump or the
    mariadb client (or a pymysql error as ``_pymysql_line`` writes it). Permanent wins: any
    line with a permanent error number makes the whole failure permanent."""
    lines = _reported_lines(output)
    coded = [line for line in lines if line.code]
    if coded:
        return TransientSourceError if all(line.transient for line in coded) else SourceError
    if any(_PERMANENT_TEXT.search(line.shown) for line in lines):
        return SourceError
    if any(_TRANSIENT_TEXT.search(line.shown) for line in lines):
        return TransientSourceError
    return SourceError


def cause_line(output: str, limit: int = CAUSE_LIMIT) -> str:
    """The one line that says what went wrong, in a form that quotes no SQL and no row data:
    the first line with a permanent error number, else the first with a transient one, else
    the first program message that names a known cause, else the first program message."""
    lines = _reported_lines(output)
    candidates = (
        [line for line in lines if line.code and not line.transient],
        [line for line in lines if line.code],
        [line for line in lines if _PERMANENT_TEXT.search(line.shown)],
        [line for line in lines if _TRANSIENT_TEXT.search(line.shown)],
        lines,
    )
    chosen = next((group[0].shown for group in candidates if group), None)
    if chosen is None:
        return "no error line that can be shown" if output.strip() else "no error output"
    return chosen if len(chosen) <= limit else chosen[:limit] + "..."


def source_failure(what: str, output: str) -> SourceError:
    """The error to raise: classified by ``output``, saying "<what>: <cause line>"."""
    return classify_failure(output)(f"{what}: {cause_line(output)}")


def _pymysql_line(exc: pymysql.MySQLError) -> str:
    """A pymysql error written as the mysql client writes one: "ERROR 1045 (28000): ..."."""
    args = exc.args
    if len(args) >= 2 and isinstance(args[0], int) and args[0] > 0:
        state = getattr(exc, "sqlstate", None)
        return f"ERROR {args[0]}" + (f" ({state})" if state else "") + f": {args[1]}"
    # pymysql's InterfaceError(0, "") for a connection that is already closed
    return "ERROR 2013: Lost connection to server during query"


def pymysql_failure(what: str, exc: pymysql.MySQLError) -> SourceError:
    return source_failure(what, _pymysql_line(exc))


def _program_failure(program: Program, what: str, code: int, stderr: Path) -> SourceError:
    output = stderr.read_text(errors="replace")
    return source_failure(f"{program.name} {what} failed (exit {code})", output)


# --- counting rows in the dump as it streams past ---------------------------------------------


class _NeedMore(Exception):
    """The bytes at hand end before a decision can be made: wait for the next piece."""


class _Declined(Exception):
    """The dump is not what the counter understands: the message says why."""


#: look-ahead at the start of a statement: enough for every statement head the counter reads
#: (SET sql_mode, CREATE TABLE `name`, INSERT INTO `name`)
_HEAD = 512
#: the longest INSERT head (with its column list) or DELIMITER line accepted
_MAX_HEAD = 1024 * 1024
_SPACE = b" \t\r\n\x0b\x0c"
#: "delimiter" as the client recognises it: the first word of a line, 9 letters or more
_DELIMITER_LINE = re.compile(rb"delimiter\S*[ \t\r\x0b\x0c]+(\S+)[ \t\r\x0b\x0c]*$", re.I)
#: the delimiters mariadb-dump writes; another one means the dump is not its work
_KNOWN_DELIMITERS = (b";", b";;")
_INSERT_HEAD = re.compile(
    rb"INSERT INTO `((?:[^`]|``)++)`"
    rb"(?:[ \t\r\n]*+\((?:[ \t\r\n]*+`(?:[^`]|``)*+`[ \t\r\n]*+,?)*+[ \t\r\n]*+\))?+"
    rb"[ \t\r\n]*+VALUES(?=[ \t\r\n(])")
_CREATE_TABLE_HEAD = re.compile(rb"CREATE TABLE `((?:[^`]|``)++)`[ \t\r\n(]")
_DATA_VERB = re.compile(rb"(?:INSERT|REPLACE)\b", re.I)
_CREATE_TABLE_VERB = re.compile(rb"CREATE[ \t\r\n]+TABLE\b", re.I)
#: the next byte of a statement that matters to the client's splitting
_STATEMENT_SPECIAL = re.compile(rb"[\n'\"`\\#\-/;]")
#: a whole row of an INSERT (with backslash escapes, or without: NO_BACKSLASH_ESCAPES)
_ROW = re.compile(rb"[ \t\r\n,]*+\((?:[0-9A-Za-z_.+ \t\r\n,]++|-(?!-)|'(?:[^'\\]++|\\.)*+')*+\)",
                  re.DOTALL)
_ROW_NO_ESCAPES = re.compile(rb"[ \t\r\n,]*+\((?:[0-9A-Za-z_.+ \t\r\n,]++|-(?!-)|'[^']*+')*+\)")
_ROW_GAP = re.compile(rb"[ \t\r\n,]*+")
#: inside a row, the next byte that is not part of a number, NULL or 0x... literal
_ROW_SPECIAL = re.compile(rb"[^0-9A-Za-z_.+ \t\r\n,]")
#: the sql_mode statements of a dump (the client reads backslashes by the session's sql_mode)
_SAVE_SQL_MODE = re.compile(rb"(?:/\*!\d* *)?SET\s+@(\w+)\s*=\s*@@sql_mode\s*(?:\*/\s*)?;", re.I)
_SET_SQL_MODE = re.compile(
    rb"(?:/\*!\d* *)?SET\s+(?:@(\w+)\s*=\s*@@sql_mode\s*,\s*)?sql_mode\s*=\s*"
    rb"(?:'([^'\\]*)'|@(\w+))\s*(?:\*/\s*)?;", re.I)
#: sql_mode names that include ANSI_QUOTES
_ANSI_QUOTES_MODES = frozenset({b"ANSI_QUOTES", b"ANSI", b"ORACLE", b"POSTGRESQL", b"MSSQL",
                                b"DB2", b"MAXDB"})


@dataclass(frozen=True)
class _SqlMode:
    """What of a session's sql_mode changes how the client splits statements."""

    no_backslash_escapes: bool = False
    ansi_quotes: bool = False

    @classmethod
    def parse(cls, value: bytes) -> _SqlMode:
        names = {name.strip().upper() for name in value.split(b",")}
        return cls(no_backslash_escapes=b"NO_BACKSLASH_ESCAPES" in names,
                   ansi_quotes=bool(names & _ANSI_QUOTES_MODES))


def _identifier(quoted: bytes) -> str:
    """A backquoted identifier's name (inner ``````` undoubled), as UTF-8 text."""
    try:
        return quoted.replace(b"``", b"`").decode("utf-8")
    except UnicodeDecodeError:
        raise _Declined("a table name is not UTF-8") from None


class DumpRowCounter:
    """Rows per table in a mariadb-dump SQL stream, counted as it passes.

    ``feed`` every piece in order, then ``finish``; ``rows_by_table`` is then the count of
    every table the dump creates (0 for one without rows), or None when the counter declined,
    with the reason in ``failure``. A statement is split as the ``mariadb`` client in binary
    mode splits it (``client/mysql.cc``, ``add_line``): quotes ``'`` ``"`` and ````` ```
    (backslash escapes in the first two, unless the session's sql_mode turns them off),
    ``#``/``-- `` line comments, ``/* */`` comments (but ``/*!`` and ``/*M!`` hold SQL), and
    ``DELIMITER`` lines between statements. A statement that starts with ``INSERT INTO
    `table``` is data: each top-level parenthesised row is counted. ``CREATE TABLE `table```
    names a table. The dump must end with mariadb-dump's ``-- Dump completed`` line.
    """

    def __init__(self) -> None:
        self.failure: str | None = None
        self._pending = b""
        self._rows: dict[str, int] = {}
        self._state = "start"  # "start" of a statement, inside a "statement", or in "data"
        self._line_start = True
        self._line_comment = False  # until the end of the line
        self._block_comment = False  # until */
        self._quote: int | None = None  # the quote byte of the string we are in
        self._delimiter = b";"
        self._statement_head = b""  # the first bytes of the current (non-data) statement
        self._sql_mode = _SqlMode()
        self._saved_sql_modes: dict[bytes, _SqlMode] = {}
        self._table = ""  # the table of the INSERT being read
        self._in_row = False
        self._completed = False
        self._finished = False

    def feed(self, chunk: bytes) -> None:
        if self.failure is not None:
            return
        data = self._pending + chunk if self._pending else chunk
        self._pending = self._scan(data, final=False)
        if len(self._pending) > _MAX_HEAD:
            self._decline("a statement head or DELIMITER line is longer than 1 MiB")

    def finish(self) -> None:
        """The stream has ended: it must end between statements, after its closing line."""
        if self.failure is not None or self._finished:
            return
        self._finished = True
        rest = self._scan(self._pending, final=True)
        if self.failure is not None:
            return
        if rest.strip(_SPACE) or self._state != "start" or self._block_comment:
            self._decline("the dump ends inside a statement")
        elif not self._completed:
            self._decline("the dump lacks mariadb-dump's closing '-- Dump completed' line")

    def rows_by_table(self) -> dict[str, int] | None:
        if self.failure is not None or not self._finished:
            return None
        return dict(self._rows)

    def _decline(self, why: str) -> None:
        self.failure = why
        self._pending = b""

    def _scan(self, data: bytes, *, final: bool) -> bytes:
        """Consume ``data`` as far as it can be decided; return the undecided rest."""
        pos = 0
        try:
            while pos < len(data):
                if self._state == "data":
                    pos = self._scan_data(data, pos, final)
                elif self._state == "statement":
                    pos = self._scan_statement(data, pos, final)
                else:
                    pos = self._scan_start(data, pos, final)
        except _NeedMore:
            pass
        except _Declined as exc:
            self._decline(str(exc))
            return b""
        return data[pos:]

    # -- between statements ---------------------------------------------------------------

    def _scan_start(self, data: bytes, pos: int, final: bool) -> int:
        """Whitespace, comments and DELIMITER lines before a statement; then its head."""
        if self._block_comment or self._line_comment:
            return self._skip_comment(data, pos, final)
        byte = data[pos]
        if byte == 0x0A:
            self._line_start = True
            return pos + 1
        if byte in _SPACE:
            return pos + 1
        if self._line_start:
            # The client looks for a command at the start of each line between statements;
            # in binary mode the only one is DELIMITER (any first word starting with it).
            if self._peek(data, pos, 9, final).lower() == b"delimiter":
                line_end = self._line_end(data, pos, final)
                self._set_delimiter(data[pos:line_end])
                return line_end
            if self._peek(data, pos, 17, final) == b"-- Dump completed":
                self._completed = True
            self._line_start = False
        if byte == 0x23:  # "#"
            self._line_comment = True
            return pos + 1
        # "--" at the start of a statement is a comment, whether a space follows or not
        if byte == 0x2D and self._peek(data, pos, 2, final) == b"--":
            self._line_comment = True
            return pos + 2
        if byte == 0x2F and self._opens_block_comment(data, pos, final):
            self._block_comment = True
            return pos + 2
        return self._statement_head_at(data, pos, final)

    def _statement_head_at(self, data: bytes, pos: int, final: bool) -> int:
        head = self._peek(data, pos, _HEAD, final)
        self._completed = False
        if head.startswith(b"INSERT INTO `"):
            found = _INSERT_HEAD.match(data, pos)
            if found is None:
                if not final and len(data) - pos < _MAX_HEAD:
                    raise _NeedMore
                raise _Declined("an INSERT statement does not have mariadb-dump's form")
            if self._delimiter != b";":
                raise _Declined("an INSERT statement follows a DELIMITER other than ';'")
            self._table = _identifier(found.group(1))
            if self._table not in self._rows:
                raise _Declined("an INSERT statement fills a table the dump did not create")
            self._state = "data"
            self._in_row = False
            self._quote = None
            return found.end()
        if _DATA_VERB.match(head):
            raise _Declined("a data statement does not have mariadb-dump's form")
        self._state = "statement"
        self._statement_head = head
        self._quote = None
        if _CREATE_TABLE_VERB.match(head):
            created = _CREATE_TABLE_HEAD.match(head)
            if created is None:
                raise _Declined("a CREATE TABLE statement does not have mariadb-dump's form")
            table = _identifier(created.group(1))
            if table in self._rows:
                raise _Declined(f"the dump creates table {table!r} twice")
            self._rows[table] = 0
            return pos + created.end() - 1  # the name is read; the rest is a statement
        return pos

    def _set_delimiter(self, line: bytes) -> None:
        found = _DELIMITER_LINE.match(line)
        if found is None or found.group(1) not in _KNOWN_DELIMITERS:
            raise _Declined("the dump sets a DELIMITER other than ';' or ';;'")
        self._delimiter = found.group(1)

    # -- inside a statement that is not data ----------------------------------------------

    def _scan_statement(self, data: bytes, pos: int, final: bool) -> int:
        if self._block_comment or self._line_comment:
            return self._skip_comment(data, pos, final)
        if self._quote is not None:
            return self._skip_string(data, pos, final)
        found = _STATEMENT_SPECIAL.search(data, pos)
        if found is None:
            return len(data)
        at = found.start()
        if at > pos:
            return at  # plain bytes; the special one is read next, with what follows it
        byte = data[at]
        if byte in b"'\"`":
            self._quote = byte
            return at + 1
        if byte == 0x5C:  # "\" outside a string: a client command and its letter
            return at + len(self._peek(data, at, 2, final))
        if byte == 0x23:  # "#"
            self._line_comment = True
            return at + 1
        if byte == 0x2D:  # "-"
            following = self._peek(data, at, 3, final)
            if following[:2] == b"--" and (len(following) == 2 or following[2] in _SPACE):
                self._line_comment = True
                return at + 2
            return at + 1
        if byte == 0x2F:  # "/"
            if self._opens_block_comment(data, at, final):
                self._block_comment = True
                return at + 2
            return at + 1
        if byte == 0x3B:  # ";"
            if self._peek(data, at, len(self._delimiter), final) == self._delimiter:
                self._end_statement()
                return at + len(self._delimiter)
            return at + 1
        return at + 1  # a newline

    def _end_statement(self) -> None:
        # Applied once the statement is over: it changes how the next ones are read.
        head = self._statement_head
        if saved := _SAVE_SQL_MODE.match(head):
            self._saved_sql_modes[saved.group(1).lower()] = self._sql_mode
        elif changed := _SET_SQL_MODE.match(head):
            if changed.group(1) is not None:
                self._saved_sql_modes[changed.group(1).lower()] = self._sql_mode
            if changed.group(2) is not None:
                self._sql_mode = _SqlMode.parse(changed.group(2))
            else:
                self._sql_mode = self._saved_sql_modes.get(changed.group(3).lower(), _SqlMode())
        self._state = "start"
        self._statement_head = b""

    def _skip_string(self, data: bytes, pos: int, final: bool) -> int:
        quote = self._quote
        assert quote is not None
        # the client reads a backslash as an escape except in `identifiers`, and not at all
        # under NO_BACKSLASH_ESCAPES (nor in "strings" under ANSI_QUOTES)
        escapes = quote != 0x60 and not self._sql_mode.no_backslash_escapes and not (
            quote == 0x22 and self._sql_mode.ansi_quotes)
        end = _string_body(quote, escapes).match(data, pos).end()  # type: ignore[union-attr]
        if end == len(data):
            return end
        if data[end] == quote:
            self._quote = None
            return end + 1
        # a backslash as the last byte: its escaped byte is in the next piece
        if final:
            raise _Declined("the dump ends inside a string")
        if end == pos:
            raise _NeedMore
        return end

    def _skip_comment(self, data: bytes, pos: int, final: bool) -> int:
        if self._line_comment:
            end = data.find(b"\n", pos)
            if end < 0:
                return len(data)
            self._line_comment = False
            return end  # the newline itself is read by the caller (a new line starts)
        end = data.find(b"*/", pos)
        if end < 0:
            if final or not data.endswith(b"*"):
                return len(data)
            # a "*" at the very end may be the first half of "*/"
            if len(data) - 1 == pos:
                raise _NeedMore
            return len(data) - 1
        self._block_comment = False
        return end + 2

    # -- the rows of an INSERT ------------------------------------------------------------

    def _scan_data(self, data: bytes, pos: int, final: bool) -> int:
        rows = self._rows
        table = self._table
        if self._in_row:
            return self._scan_row(data, pos, final)
        row = _ROW_NO_ESCAPES if self._sql_mode.no_backslash_escapes else _ROW
        # the fast path: whole rows, one regular-expression match each
        while found := row.match(data, pos):
            rows[table] += 1
            pos = found.end()
        pos = _ROW_GAP.match(data, pos).end()  # type: ignore[union-attr]  # matches ""
        if pos >= len(data):
            return pos
        byte = data[pos]
        if byte == 0x28:  # "(": a row that does not end in these bytes
            rows[table] += 1
            self._in_row = True
            return pos + 1
        if byte == 0x3B:  # ";"
            self._state = "start"
            return pos + 1
        raise _Declined("an INSERT statement has something other than rows after VALUES")

    def _scan_row(self, data: bytes, pos: int, final: bool) -> int:
        if self._quote is not None:
            return self._skip_string(data, pos, final)
        found = _ROW_SPECIAL.search(data, pos)
        if found is None:
            return len(data)
        at = found.start()
        if at > pos:
            return at
        byte = data[at]
        if byte == 0x27:  # "'"
            self._quote = byte
            return at + 1
        if byte == 0x29:  # ")"
            self._in_row = False
            return at + 1
        if byte == 0x2D:  # "-": a negative number, never "--"
            if self._peek(data, at, 2, final) == b"--":
                raise _Declined("a row holds a '--' comment")
            return at + 1
        raise _Declined("a row holds a character that mariadb-dump does not write there")

    # -- look-ahead -----------------------------------------------------------------------

    @staticmethod
    def _peek(data: bytes, pos: int, size: int, final: bool) -> bytes:
        """``size`` bytes from ``pos``, or fewer at the very end of the stream."""
        if len(data) - pos < size and not final:
            raise _NeedMore
        return data[pos:pos + size]

    def _opens_block_comment(self, data: bytes, pos: int, final: bool) -> bool:
        # "/*" opens a comment, but "/*!" and "/*M!" hold SQL for the server
        ahead = self._peek(data, pos, 4, final)
        return ahead[:2] == b"/*" and ahead[2:3] != b"!" and ahead[2:4] != b"M!"

    @staticmethod
    def _line_end(data: bytes, pos: int, final: bool) -> int:
        end = data.find(b"\n", pos)
        if end >= 0:
            return end
        if not final and len(data) - pos < _MAX_HEAD:
            raise _NeedMore
        return len(data)


@functools.cache
def _string_body(quote: int, escapes: bool) -> re.Pattern[bytes]:
    """The inside of a string opened by ``quote``, up to (not including) its closing quote."""
    q = re.escape(bytes([quote]))
    if escapes:
        return re.compile(rb"(?:[^" + q + rb"\\]++|\\.)*+", re.DOTALL)
    return re.compile(rb"[^" + q + rb"]*+")


#: what the last line of a complete dump says
_COMPLETED_LINE = re.compile(rb"\n-- Dump completed(?: on [^\n]*)?\n?\Z")


class _DumpTail:
    """The last bytes of a stream, to tell whether it ends as a complete dump does."""

    KEEP = 256

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk[-self.KEEP:])[-self.KEEP:]

    @property
    def complete(self) -> bool:
        return bool(_COMPLETED_LINE.search(self._tail))


# --- SQL over pymysql -------------------------------------------------------------------------


@contextlib.contextmanager
def _connected(target: MySQLTarget, what: str) -> Iterator[pymysql.cursors.Cursor]:
    """A cursor on ``target`` (autocommit), any pymysql error translated into ours."""
    try:
        conn = pymysql.connect(
            host=target.host, port=target.port, unix_socket=target.socket, user=target.user,
            # bytes: pymysql would encode a str password as latin-1, the clients send UTF-8
            password=target.password.encode(), database=target.database, charset="utf8mb4",
            autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except pymysql.MySQLError as exc:
        raise pymysql_failure(what, exc) from None
    try:
        with conn.cursor() as cursor:
            yield cursor
    except pymysql.MySQLError as exc:
        raise pymysql_failure(what, exc) from None
    finally:
        with contextlib.suppress(pymysql.MySQLError, OSError):
            conn.close()


class MySQLServer:
    """A MySQL or MariaDB server as a ``ScratchServer`` (drills and disaster recovery):
    ``server_dsn`` names any database the user may connect to; the user needs CREATE and
    DROP on the databases it makes."""

    @staticmethod
    def database_dsn(server_dsn: str, name: str) -> str:
        parts = urlsplit(server_dsn)
        parse_dsn(server_dsn)  # a malformed server DSN is refused here, never echoed
        return urlunsplit(parts._replace(path="/" + quote(name, safe="")))

    @staticmethod
    def create_database(server_dsn: str, name: str) -> None:
        with _connected(parse_dsn(server_dsn), "database administration failed") as cursor:
            cursor.execute(f"CREATE DATABASE {_quote_identifier(name)} CHARACTER SET utf8mb4")

    @staticmethod
    def drop_database(server_dsn: str, name: str) -> None:
        with _connected(parse_dsn(server_dsn), "database administration failed") as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {_quote_identifier(name)}")

    @staticmethod
    def scalar(dsn: str, query: str) -> str:
        with _connected(parse_dsn(dsn), "the check query failed") as cursor:
            cursor.execute("START TRANSACTION READ ONLY")
            cursor.execute(query)
            row = cursor.fetchone()
            cursor.execute("ROLLBACK")
        return "" if row is None or row[0] is None else str(row[0])

    @staticmethod
    def database_exists(server_dsn: str, name: str) -> bool:
        with _connected(parse_dsn(server_dsn), "cannot list databases") as cursor:
            cursor.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                           (name,))
            return cursor.fetchone() is not None


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


#: the tables whose rows are counted, as ``DumpRowCounter`` finds them in a dump
_COUNTED_TABLES = ("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                   "DATABASE() AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') "
                   "ORDER BY TABLE_NAME")


def _count_rows(cursor: pymysql.cursors.Cursor) -> dict[str, int]:
    # one snapshot for all tables, so the counts describe one instant
    cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
    cursor.execute(_COUNTED_TABLES)
    tables = [str(row[0]) for row in cursor.fetchall()]
    counts: dict[str, int] = {}
    for table in tables:
        cursor.execute(f"SELECT COUNT(*) FROM {_quote_identifier(table)}")
        row = cursor.fetchone()
        counts[table] = int(row[0]) if row else 0
    cursor.execute("ROLLBACK")
    return counts


@dataclass(frozen=True)
class _HeldObject:
    """Something a database holds, and the statement that drops it."""

    kind: str  # "table", "view", "sequence", "routine", "event"
    drop: str


def _held_objects(cursor: pymysql.cursors.Cursor) -> list[_HeldObject]:
    held: list[_HeldObject] = []
    cursor.execute("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                   "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME")
    for name, table_type in cursor.fetchall():
        kind = {"VIEW": "view", "SEQUENCE": "sequence"}.get(str(table_type), "table")
        held.append(_HeldObject(kind, f"DROP {kind.upper()} IF EXISTS "
                                      f"{_quote_identifier(str(name))}"))
    cursor.execute("SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES "
                   "WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_TYPE <> 'PACKAGE BODY'")
    for name, routine_type in cursor.fetchall():
        held.append(_HeldObject("routine", f"DROP {routine_type} IF EXISTS "
                                           f"{_quote_identifier(str(name))}"))
    cursor.execute("SELECT EVENT_NAME FROM information_schema.EVENTS "
                   "WHERE EVENT_SCHEMA = DATABASE()")
    for (name,) in cursor.fetchall():
        held.append(_HeldObject("event", f"DROP EVENT IF EXISTS {_quote_identifier(str(name))}"))
    return held


def _refuse_held(where: str, held: list[_HeldObject]) -> None:
    """Refuse a target that holds anything: a restore would mix with it (mariadb-dump's
    ``DROP TABLE IF EXISTS`` would even replace same-named tables without a word)."""
    if not held:
        return
    counts: dict[str, int] = {}
    for item in held:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    holds = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items())
    raise SourceError(f"{where} is not empty (it holds {holds}): restore into an empty "
                      "database, or pass --clean to replace what it holds")


def _drop_contents(cursor: pymysql.cursors.Cursor) -> None:
    """Drop everything the connected database holds (its triggers go with its tables)."""
    cursor.execute("SET SESSION FOREIGN_KEY_CHECKS = 0")
    held = _held_objects(cursor)
    # views first: a view can be dropped whatever it reads, a table can go in any order
    # without foreign key checks
    for item in sorted(held, key=lambda h: h.kind != "view"):
        cursor.execute(item.drop)
    cursor.execute("SET SESSION FOREIGN_KEY_CHECKS = 1")


_RELEASE = re.compile(r"(?:5\.5\.5-)?(\d+)\.(\d+)")


def _release(version: str) -> tuple[str, int, int] | None:
    """("MariaDB" or "MySQL", major, minor) of a server version string."""
    found = _RELEASE.match(version)
    if found is None:
        return None
    flavour = "MariaDB" if "mariadb" in version.lower() else "MySQL"
    return flavour, int(found.group(1)), int(found.group(2))


# --- the source -------------------------------------------------------------------------------


class MySQLSource:
    """A MySQL or MariaDB database, dumped with mariadb-dump and restored with its client
    (see the module's docstring for what is consistent, counted and atomic, and how)."""

    kind = "mysql"

    def __init__(self, name: str, dsn: str | None) -> None:
        self.name = name
        self._dsn = dsn

    def __repr__(self) -> str:  # the DSN holds a password
        return f"MySQLSource(name={self.name!r})"

    def _source(self) -> MySQLTarget:
        if self._dsn is None:
            raise ConfigError(f"source {self.name!r} was opened for restoring only: it has no "
                              "DSN to dump from")
        return parse_dsn(self._dsn)

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        source = self._source()
        what = f"source {self.name!r}"
        program = find_program(DUMP_PROGRAMS)
        # first, and cheaply: can we log in at all (a wrong password fails here, classified
        # by its error number), and what server is it
        with _connected(source, f"{what} cannot be read") as cursor:
            cursor.execute("SELECT VERSION()")
            row = cursor.fetchone()
        server_version = str(row[0]) if row else ""
        counter = DumpRowCounter()

        def write_counted(chunk: bytes) -> None:
            counter.feed(chunk)
            write(chunk)

        options = DUMP_OPTIONS if program.mariadb else DUMP_OPTIONS + MYSQL_DUMP_OPTIONS
        with private_directory() as private:
            option_file = write_option_file(private, source)
            # --defaults-file must come first; "--" so that no database name is an option
            argv = [program.path, f"--defaults-file={option_file}", *options, "--",
                    source.database]
            _run_dump(program, argv, write_counted, what=f"of {what}",
                      stderr_path=private / "stderr")
        counter.finish()
        counts = counter.rows_by_table()
        if counts is None:
            log.warning("source %r: the rows of the dump could not be counted (%s); the "
                        "backup records no row counts", self.name, counter.failure)
        return DumpInfo(row_counts=counts or {}, server_version=server_version,
                        tool_version=program.version)

    def check_target(self, target_dsn: str, *, clean: bool = False,
                     dump: DumpInfo | None = None) -> None:
        target = parse_dsn(target_dsn)
        where = f"the target database {target.database!r} for source {self.name!r}"
        with _connected(target, f"{where} cannot be checked") as cursor:
            cursor.execute("SELECT VERSION()")
            row = cursor.fetchone()
            held = [] if clean else _held_objects(cursor)
        if dump is not None and dump.server_version and row:
            self._refuse_older_server(dump.server_version, str(row[0]))
        _refuse_held(where, held)

    def _refuse_older_server(self, dumped_from: str, target: str) -> None:
        source, into = _release(dumped_from), _release(target)
        # across MySQL and MariaDB the numbers do not compare; the restore itself will tell
        if source is None or into is None or source[0] != into[0] or into[1:] >= source[1:]:
            return
        raise SourceError(
            f"the backup of source {self.name!r} was dumped from {source[0]} {dumped_from} and "
            f"the target server runs the older {target}: restore into {source[0]} "
            f"{source[1]}.{source[2]} or newer")

    def row_counts(self, target_dsn: str) -> dict[str, int]:
        """Rows per table ("table", no database name) of a database, counted as ``dump``
        counts a snapshot: its base tables, in one consistent snapshot."""
        target = parse_dsn(target_dsn)
        with _connected(target, f"the rows of database {target.database!r} for source "
                                f"{self.name!r} cannot be counted") as cursor:
            return _count_rows(cursor)

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        """Replay a dump into the target database: each table's rows in one transaction, DDL
        committed as it comes (see the module's docstring). A target that holds anything is
        refused unless ``clean``, which empties it first."""
        target = parse_dsn(target_dsn)
        label = f"the backup of source {self.name!r}"
        where = f"the target database {target.database!r} for source {self.name!r}"
        program = find_program(CLIENT_PROGRAMS)  # before anything is dropped
        with _connected(target, f"{where} cannot be prepared") as cursor:
            if clean:
                _drop_contents(cursor)
            else:  # checked again here: restore() may be called without check_target()
                _refuse_held(where, _held_objects(cursor))
        options = RESTORE_OPTIONS + (MARIADB_RESTORE_OPTIONS if program.mariadb else ())
        with private_directory() as private:
            option_file = write_option_file(private, target)
            argv = [program.path, f"--defaults-file={option_file}", *options,
                    f"--database={target.database}"]
            _run_restore(program, argv, chunks, label=label, stderr_path=private / "stderr")


def _run_dump(program: Program, argv: list[str], write: Callable[[bytes], object], *,
              what: str, stderr_path: Path) -> None:
    with stderr_path.open("wb") as stderr:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=stderr, env=child_environment(os.environ))
        except OSError as exc:
            raise SourceError(f"{program.name} cannot be started: {exc.strerror}") from None
        code = pump_stdout(proc, write)
    if code != 0 and not stderr_path.read_bytes().strip():
        # mariadb-dump exits 2 without a word when its connection is dropped between two of
        # its queries (a KILL, a failover, a proxy's idle timeout). Every permanent cause
        # seen (login, privileges, a missing database) prints its line, so a silent exit is
        # retried: if the cause is permanent after all, the retry says which.
        raise TransientSourceError(f"{program.name} {what} failed (exit {code}) without an "
                                   "error message, as it does when its connection is dropped")
    if code != 0:
        raise _program_failure(program, what, code, stderr_path)


def _run_restore(program: Program, argv: list[str], chunks: Iterable[bytes], *, label: str,
                 stderr_path: Path) -> None:
    tail = _DumpTail()
    with stderr_path.open("wb") as stderr:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=stderr, env=child_environment(os.environ))
        except OSError as exc:
            raise SourceError(f"{program.name} cannot be started: {exc.strerror}") from None
        assert proc.stdin is not None
        stopped_reading = False
        try:
            for chunk in chunks:
                tail.feed(chunk)
                proc.stdin.write(chunk)
        except BrokenPipeError:
            stopped_reading = True  # the client stopped early; its exit status says why
        except BaseException:
            # The stream failed its checks, or we are interrupted: killed before the end of
            # its input, the client never runs the statement in progress, and the server
            # rolls back its open transaction (the current table's rows).
            proc.kill()
            proc.wait()
            raise
        if not stopped_reading and not tail.complete and proc.poll() in (None, 0):
            proc.kill()  # as above
            proc.wait()
            raise SourceError(
                f"{label} is truncated (it lacks mariadb-dump's closing '-- Dump completed' "
                "line) and was restored only in part: restore a complete backup with --clean")
        try:
            if not stopped_reading:
                # the dump is all there: commit what the last DDL statement left open
                proc.stdin.write(b"\nCOMMIT;\n")
            proc.stdin.close()
        except BrokenPipeError:
            stopped_reading = True
        code = proc.wait()
    if code != 0:
        raise _program_failure(program, f"restore of {label}", code, stderr_path)
    if stopped_reading:
        raise SourceError(f"{program.name} stopped reading {label} before its end without an "
                          "error: restore it again with --clean")


__all__ = [
    "CLIENT_PROGRAMS",
    "DUMP_OPTIONS",
    "DUMP_PROGRAMS",
    "DumpRowCounter",
    "MySQLSource",
    "MySQLTarget",
    "Program",
    "cause_line",
    "classify_failure",
    "find_program",
    "option_file_text",
    "parse_dsn",
    "pymysql_failure",
    "source_failure",
]
