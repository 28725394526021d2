"""The ``mysql`` SourceKit: a private ``mariadbd`` on a free port, and databases seeded in it.

``mysql_kit(workdir)`` starts the server and yields a ``MySQLKit``; the server stops when the
``with`` block ends. Every DSN the kit hands out logs in as one user, ``rv_kit``, whose
password holds the characters that DSNs and option files must escape (``# " ' \\ ; = @ : / %``,
a space, non-ASCII), so that a leak or a quoting mistake shows. Checksums are read as root,
with SQL of the kit's own, never with the code under test.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pymysql

from regionvault.devstack.mariadb import MariaDBService, quote_identifier, start_mariadb
from regionvault.devstack.services import free_port
from regionvault.sources.base import Source
from regionvault.sources.mysql import CLIENT_PROGRAMS, DUMP_PROGRAMS, MySQLSource, find_program

KIT_USER = "rv_kit"
#: rows in ``accounts`` (and, by its trigger, in ``audit``): enough for several INSERTs
ACCOUNTS = 2000
ODD_TABLE = "odd`name ü"
EMPTY_TABLE = "empty table"

#: the seeded schema: what a dump must carry besides rows
SCHEMA = (
    """CREATE TABLE accounts (
        id INT AUTO_INCREMENT PRIMARY KEY,
        email VARCHAR(255) NOT NULL UNIQUE,
        name VARCHAR(255) NULL COMMENT 'it''s a name; (maybe)',
        note TEXT NULL,
        balance DECIMAL(12,2) NULL,
        score DOUBLE NULL,
        flags BIT(8) NULL,
        created DATETIME(6) NOT NULL
    ) ENGINE=InnoDB""",
    """CREATE TABLE audit (
        id INT AUTO_INCREMENT PRIMARY KEY,
        account_id INT NOT NULL,
        action VARCHAR(64) NOT NULL
    ) ENGINE=InnoDB""",
    """CREATE TABLE blobs (
        id INT PRIMARY KEY,
        data LONGBLOB NULL,
        small VARBINARY(32) NULL,
        big_text LONGTEXT NULL
    ) ENGINE=InnoDB""",
    f"CREATE TABLE {quote_identifier(EMPTY_TABLE)} (id INT PRIMARY KEY) ENGINE=InnoDB",
    f"CREATE TABLE {quote_identifier(ODD_TABLE)} (k VARCHAR(20) PRIMARY KEY, v INT NULL)",
    # a body with a comment holding a quote, a string holding ";;" and an INSERT at the start
    # of a line: none of it may be taken for the dump's own statements or rows
    """CREATE TRIGGER accounts_ai AFTER INSERT ON accounts FOR EACH ROW
BEGIN
  -- it's the audit trail
INSERT INTO audit (account_id, action) VALUES (NEW.id, 'insert;; (x)');
END""",
    """CREATE PROCEDURE add_account(IN p_email VARCHAR(255))
BEGIN
  INSERT INTO accounts (email, created) VALUES (p_email, NOW(6));
END""",
    """CREATE FUNCTION account_count() RETURNS INT READS SQL DATA
RETURN (SELECT COUNT(*) FROM accounts)""",
    "CREATE VIEW noted_accounts AS SELECT id, email FROM accounts WHERE note IS NOT NULL",
    # the kit's server runs no event scheduler: dumped and restored, never fired
    """CREATE EVENT nightly_cleanup ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00'
DO DELETE FROM audit WHERE id < 0""",
)

#: text that tests quoting: quotes, backslashes, newlines, parentheses, row separators
AWKWARD = "it's \"quoted\" \\ back\\slash\nnew line\r\ttab (a),(b); -- not a comment /* */ `x`"
NON_ASCII = "Zoë Ærø — 日本語 — emoji 🎉🔐"


class MySQLKit:
    """The SourceKit of the ``mysql`` kind over one private server (see ``kits.SourceKit``)."""

    kind = "mysql"

    def __init__(self, server: MariaDBService) -> None:
        self.server = server
        self.password: str | None = f"Kit#{secrets.token_hex(6)}\"q' \\;=@:/%é x"
        server.create_user(KIT_USER, self.password)
        # the programs MySQLSource runs on this machine, by the names ps shows
        self.child_programs = (Path(find_program(DUMP_PROGRAMS).path).name,
                               Path(find_program(CLIENT_PROGRAMS).path).name)
        self._numbers = itertools.count(1)
        self._expected: dict[str, dict[str, int]] = {}

    # -- databases ------------------------------------------------------------------------

    def new_database(self, prefix: str) -> str:
        """A new, empty database the kit's user owns; its name."""
        name = f"rv_{prefix}_{next(self._numbers)}_{secrets.token_hex(3)}"
        self.server.create_database(name)
        self.server.grant_database(KIT_USER, name)
        return name

    def dsn(self, database: str) -> str:
        assert self.password is not None
        return self.server.dsn(KIT_USER, self.password, database)

    def connect(self, dsn: str, *, as_root: bool = False) -> Any:
        """A pymysql connection (autocommit) to the database of ``dsn``: as the kit's user,
        or as root."""
        database = database_of(dsn)
        if as_root:
            user, password = "root", self.server.root_password
        else:
            assert self.password is not None
            user, password = KIT_USER, self.password
        return pymysql.connect(host=self.server.host, port=self.server.port, user=user,
                               password=password.encode(), database=database,
                               charset="utf8mb4", autocommit=True, connect_timeout=10)

    # -- SourceKit ------------------------------------------------------------------------

    def seeded(self, canary: str) -> str:
        dsn = self.dsn(self.new_database("src"))
        rng = random.Random(canary)
        conn = self.connect(dsn)
        try:
            with conn.cursor() as cur:
                for statement in SCHEMA:
                    cur.execute(statement)
                cur.executemany(
                    "INSERT INTO accounts (id, email, name, note, balance, score, flags, created)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [_account(i, canary, rng) for i in range(1, ACCOUNTS + 1)])
                big = bytes(range(256)) * 4096 + rng.randbytes(512 * 1024)  # 1.5 MiB
                cur.executemany(
                    "INSERT INTO blobs (id, data, small, big_text) VALUES (%s, %s, %s, %s)",
                    [(1, big, b"\x00'\\\n\"\x1a\xff", (NON_ASCII + "\n") * 40_000),  # ~1.3 MiB
                     (2, None, None, None),
                     (3, b"", b"", "")])
                cur.executemany(f"INSERT INTO {quote_identifier(ODD_TABLE)} VALUES (%s, %s)",
                                [("a", 1), ("b;c", None), (NON_ASCII[:20], -3)])
        finally:
            conn.close()
        self._expected[dsn] = {"accounts": ACCOUNTS, "audit": ACCOUNTS, "blobs": 3,
                               EMPTY_TABLE: 0, ODD_TABLE: 3}
        return dsn

    def expected_rows(self, dsn: str) -> dict[str, int]:
        return dict(self._expected[dsn])

    def empty_target(self) -> str:
        return self.dsn(self.new_database("target"))

    def open(self, name: str, dsn: str) -> Source:
        return MySQLSource(name=name, dsn=dsn)

    def checksums(self, dsn: str) -> dict[str, str]:
        """Per base table: SHA-256 of its SHOW CREATE TABLE, its triggers and every row in
        primary-key order (or in the order of all its columns)."""
        conn = self.connect(dsn, as_root=True)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE "
                            "TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'")
                tables = sorted(str(row[0]) for row in cur.fetchall())
                return {table: _table_digest(cur, table) for table in tables}
        finally:
            conn.close()

    def schema_objects(self, dsn: str) -> dict[str, str]:
        """The views, routines, triggers and events of a database, each with its definition
        as the server shows it (``SHOW CREATE ...``)."""
        conn = self.connect(dsn, as_root=True)
        found: dict[str, str] = {}
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT TABLE_NAME FROM information_schema.VIEWS "
                            "WHERE TABLE_SCHEMA = DATABASE()")
                for (name,) in cur.fetchall():
                    cur.execute(f"SHOW CREATE VIEW {quote_identifier(name)}")
                    found[f"view {name}"] = str(cur.fetchone()[1])
                cur.execute("SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
                            "WHERE ROUTINE_SCHEMA = DATABASE()")
                for kind, name in cur.fetchall():
                    cur.execute(f"SHOW CREATE {kind} {quote_identifier(name)}")
                    found[f"{kind.lower()} {name}"] = str(cur.fetchone()[2])
                cur.execute("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                            "WHERE TRIGGER_SCHEMA = DATABASE()")
                for (name,) in cur.fetchall():
                    cur.execute(f"SHOW CREATE TRIGGER {quote_identifier(name)}")
                    found[f"trigger {name}"] = str(cur.fetchone()[2])
                cur.execute("SELECT EVENT_NAME FROM information_schema.EVENTS "
                            "WHERE EVENT_SCHEMA = DATABASE()")
                for (name,) in cur.fetchall():
                    cur.execute(f"SHOW CREATE EVENT {quote_identifier(name)}")
                    found[f"event {name}"] = str(cur.fetchone()[3])
        finally:
            conn.close()
        return found

    def unreachable_dsn(self) -> str:
        assert self.password is not None
        return (f"mysql://{KIT_USER}:{quote(self.password, safe='')}@{self.server.host}:"
                f"{free_port()}/nothing")

    def wrong_password_dsn(self, dsn: str) -> str | None:
        parts = urlsplit(dsn)
        netloc = f"{parts.username}:wrong-{secrets.token_hex(4)}@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))


def database_of(dsn: str) -> str:
    return unquote(urlsplit(dsn).path.lstrip("/"))


def _account(i: int, canary: str, rng: random.Random) -> tuple[Any, ...]:
    note: str | None
    if i == 1:
        note = f"the canary: {canary}"
    elif i % 7 == 0:
        note = None
    else:
        note = f"{AWKWARD} #{i} {rng.random()}"
    return (i, f"user{i}@example.com",
            NON_ASCII if i % 3 == 0 else (None if i % 5 == 0 else f"User {i}"),
            note,
            None if i % 11 == 0 else f"{rng.randint(-10**9, 10**9) / 100:.2f}",
            None if i % 13 == 0 else rng.uniform(-1e300, 1e300),
            None if i % 2 else bytes([i % 256]),
            f"2026-01-{1 + i % 28:02d} 12:34:56.{i:06d}")


def _table_digest(cur: Any, table: str) -> str:
    digest = hashlib.sha256()
    cur.execute(f"SHOW CREATE TABLE {quote_identifier(table)}")
    digest.update(repr(cur.fetchone()[1]).encode())
    cur.execute("SELECT TRIGGER_NAME, ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT, "
                "SQL_MODE, DEFINER FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = "
                "DATABASE() AND EVENT_OBJECT_TABLE = %s ORDER BY TRIGGER_NAME", (table,))
    digest.update(repr(cur.fetchall()).encode())
    cur.execute("SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = "
                "DATABASE() AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
                (table,))
    order = [str(row[0]) for row in cur.fetchall()]
    if not order:
        cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                    "DATABASE() AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (table,))
        order = [str(row[0]) for row in cur.fetchall()]
    cur.execute(f"SELECT * FROM {quote_identifier(table)} ORDER BY "
                + ", ".join(quote_identifier(column) for column in order))
    for row in cur.fetchall():
        digest.update(repr(row).encode())
    return digest.hexdigest()


@contextmanager
def mysql_kit(workdir: Path) -> Iterator[MySQLKit]:
    """Start a private MariaDB in ``workdir`` and yield the kit over it; stop it afterwards."""
    server = start_mariadb(workdir)
    try:
        yield MySQLKit(server)
    finally:
        server.stop()
