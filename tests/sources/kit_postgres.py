"""The PostgreSQL ``SourceKit``: a private cluster on a free port, with password authentication.

``postgres_kit(workdir)`` starts the embedded PostgreSQL (18), ``postgres_kit(workdir,
bin_dir=Path("/usr/lib/postgresql/15/bin"))`` another major's server. Every TCP connection must
give the kit's password (scram-sha-256), so the suite can check that it never shows on a
process's argv. The kit's own SQL goes through the same DSNs it hands out.

The checksums are the kit's own, not the code under test's: per table, a SHA-256 over its
column definitions (name, type, NOT NULL, default, identity, generation, collation), its
constraints, indexes and partitioning, and every row's text in a fixed order, in a session
whose settings fix every output format. Column options (``attoptions``) are left out: a
server may stamp its own there (this machine's PostgreSQL 15 adds ``pg_attver``), and they
are not data. Each sequence gets an entry of its own (definition and position).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from regionvault.devstack.services import HOST, PostgresService, free_port, start_postgres
from regionvault.sources.base import Source
from regionvault.sources.postgres import PostgresSource

#: the seeded tables and their rows (partitions are counted on their own and in their parent,
#: as ``DumpInfo.row_counts`` counts them)
EXPECTED_ROWS = {
    "public.accounts": 6,
    "public.blobs": 4,
    "public.events": 6,
    "public.events_2024": 4,
    "public.events_2025": 2,
    "ledger.entries": 3,
}

#: the seed, run as one script (no parameters: several statements); the canary row follows
SEED = """
CREATE SCHEMA ledger;
CREATE SEQUENCE public.invoice_no START 1000 INCREMENT 7;
SELECT setval('public.invoice_no', 1042, true);

CREATE TABLE public.accounts (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text,
    balance numeric(12, 2) DEFAULT 0,
    tags text[],
    profile jsonb,
    created timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
INSERT INTO public.accounts (email, name, balance, tags, profile, created) VALUES
    ('zoe@example.com', 'Zoë Ångström', 12.50, ARRAY['a', 'b'], '{"k": [1, 2, null]}',
     '2024-02-29 12:00:00+01'),
    ('grace@example.com', '日本語のテキスト', NULL, NULL, NULL, '2023-12-31 23:59:59+00'),
    ('ada@example.com', NULL, -3.75, ARRAY[NULL, 'x'], '{"emoji": "🎉"}', '1999-01-01 00:00:00+00'),
    ('tab@example.com', E'a\\tb\\nc\\\\d', 0, '{}', '[]', '2024-06-01 08:30:00-07'),
    ('long@example.com', repeat('ü', 600000), 1e9, NULL, NULL, '2025-01-01 00:00:00+00');

CREATE TABLE public.blobs (
    id bigint PRIMARY KEY,
    data bytea,
    note varchar(20)
);
INSERT INTO public.blobs VALUES
    (1, NULL, NULL),
    (2, '', 'empty'),
    (3, '\\x00ff00fe0a0d5c', 'bytes'),
    (4, (SELECT decode(string_agg(md5(i::text), '' ORDER BY i), 'hex')
         FROM generate_series(1, 80000) AS i), 'over 1 MiB');

CREATE TABLE public.events (
    at date NOT NULL,
    kind text NOT NULL CHECK (kind <> ''),
    amount double precision,
    invoice bigint DEFAULT nextval('public.invoice_no')
) PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.events_2025 PARTITION OF public.events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX events_kind ON public.events (kind);
INSERT INTO public.events (at, kind, amount) VALUES
    ('2024-01-05', 'signup', 0.1), ('2024-03-01', 'payment', 1e-300),
    ('2024-12-31', 'payment', NULL), ('2024-07-04', 'refund', -0.0),
    ('2025-02-01', 'signup', 3.141592653589793), ('2025-05-05', 'churn', 'NaN');

CREATE TABLE ledger.entries (
    id serial PRIMARY KEY,
    account integer REFERENCES public.accounts (id),
    memo text COLLATE "C",
    doubled integer GENERATED ALWAYS AS (account * 2) STORED
);
INSERT INTO ledger.entries (account, memo) VALUES (1, 'first'), (2, NULL), (NULL, 'orphan');
"""
#: the canary, as a parameter: never formatted into SQL
CANARY_ROW = "INSERT INTO public.accounts (email, name) VALUES (%s, 'the canary row')"

#: every output format the row text depends on, fixed
_SESSION = ("SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
            "SET extra_float_digits = 1; SET bytea_output = 'hex'")

_TABLES = """
SELECT c.oid, n.nspname, c.relname,
       coalesce(pg_get_partkeydef(c.oid), ''), coalesce(pg_get_expr(c.relpartbound, c.oid), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 2, 3
"""

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity, a.attgenerated,
       coalesce(co.collname, '')
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_CONSTRAINTS = """
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s
UNION ALL
SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = %s
ORDER BY 1, 2
"""

_SEQUENCES = """
SELECT schemaname, sequencename, data_type::text, start_value, min_value, max_value,
       increment_by, cycle, last_value
FROM pg_sequences ORDER BY 1, 2
"""


def _digest(conn: psycopg.Connection[Any], oid: int, schema: str, table: str,
            partitioning: tuple[str, str] | None) -> str:
    """The table's digest; with ``partitioning`` None, of its columns' names and types and its
    rows only (what must be equal across majors, whose catalogs name constraints differently:
    PostgreSQL 18 records NOT NULL constraints, with names that depend on how a partition was
    created)."""
    digest = hashlib.sha256()

    def add(*values: object) -> None:
        digest.update(repr(values).encode())
        digest.update(b"\n")

    if partitioning is not None:
        add("partitioning", *partitioning)
    for column in conn.execute(_COLUMNS, (oid,)):
        add("column", *(column if partitioning is not None else column[:2]))
    if partitioning is not None:
        for constraint in conn.execute(_CONSTRAINTS, (oid, oid)):
            add("constraint", *constraint)
    # the row's text as the server writes it, in an order fixed by bytes (COLLATE "C")
    rows = sql.SQL('SELECT t::text FROM {}.{} AS t ORDER BY t::text COLLATE "C"').format(
        sql.Identifier(schema), sql.Identifier(table))
    with conn.cursor(name=f"rv_kit_rows_{oid}") as cursor:
        cursor.itersize = 100
        cursor.execute(rows)
        for (text,) in cursor:
            add("row", text)
    return digest.hexdigest()


@dataclass
class PostgresKit:
    """A ``SourceKit`` over one running PostgreSQL server (see the module docstring)."""

    service: PostgresService
    password: str | None
    kind: str = "postgres"
    child_programs: tuple[str, ...] = ("pg_dump", "pg_restore")
    _names: Iterator[int] = field(default_factory=itertools.count)

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        """A TCP DSN of this server (the kit's password unless another is given)."""
        secret = urllib.parse.quote(password or self.password or "", safe="")
        user = f"postgres:{secret}" if secret else "postgres"
        return f"postgresql://{user}@{HOST}:{self.service.port}/{urllib.parse.quote(dbname)}"

    def _new_database(self, prefix: str) -> str:
        name = f"{prefix}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def seeded(self, canary: str) -> str:
        name = self._new_database("rv_kit_seeded")
        # one transaction, committed when the block ends
        with psycopg.connect(self.dsn(name), connect_timeout=10) as conn:
            conn.execute(SEED)
            conn.execute(CANARY_ROW, (canary,))
        return self.dsn(name)

    def expected_rows(self, dsn: str) -> dict[str, int]:
        return dict(EXPECTED_ROWS)

    def empty_target(self) -> str:
        return self.dsn(self._new_database("rv_kit_target"))

    def open(self, name: str, dsn: str) -> Source:
        return PostgresSource(name=name, dsn=dsn)

    def checksums(self, dsn: str) -> dict[str, str]:
        return self._checksums(dsn, structure=True)

    def data_checksums(self, dsn: str) -> dict[str, str]:
        """Like ``checksums`` but over column names, types and rows only, and the sequences'
        positions: equal for the same data on servers of different majors."""
        return self._checksums(dsn, structure=False)

    def _checksums(self, dsn: str, *, structure: bool) -> dict[str, str]:
        sums: dict[str, str] = {}
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.execute(_SESSION)
            for oid, schema, table, partkey, bound in conn.execute(_TABLES).fetchall():
                sums[f"{schema}.{table}"] = _digest(conn, oid, schema, table,
                                                    (partkey, bound) if structure else None)
            for schema, name, *definition in conn.execute(_SEQUENCES).fetchall():
                sums[f"{schema}.{name}"] = hashlib.sha256(
                    repr(("sequence", *definition)).encode()).hexdigest()
            conn.rollback()
        return sums

    def unreachable_dsn(self) -> str:
        return f"postgresql://postgres:{self.password}@{HOST}:{free_port()}/postgres"

    def wrong_password_dsn(self, dsn: str) -> str | None:
        parts = urllib.parse.urlsplit(dsn)
        wrong = f"wrong-{secrets.token_hex(6)}"
        netloc = f"{parts.username}:{wrong}@{parts.hostname}:{parts.port}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def server_version(self) -> str:
        """The server's version as it reports it ("15.20 (Debian 15.20-0+deb12u1)")."""
        with psycopg.connect(self.dsn(), connect_timeout=10) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        return str(row[0])


@contextlib.contextmanager
def postgres_kit(workdir: Path, bin_dir: Path | None = None) -> Iterator[PostgresKit]:
    """Start a server in ``workdir`` (the embedded PostgreSQL, or the server in ``bin_dir``)
    with a fresh password, yield its kit, and stop the server.

    ``workdir`` should not be under pytest's basetemp: another pytest session resets that to
    0700, which locks the unprivileged user that runs PostgreSQL (as root) out of its cluster.
    """
    password = f"rv-kit-pw-{secrets.token_hex(8)}"
    service = start_postgres(workdir, bin_dir=bin_dir, password=password)
    try:
        yield PostgresKit(service=service, password=password)
    finally:
        service.stop()
