"""A dump reads each table of the source once, and its row counts are exact.

``PostgresSource.dump`` counts rows in the archive as pg_dump streams it, instead of running
``count(*)`` beside the dump. The proof is PostgreSQL's own statistics: per table, the sequential
and index scans before and after a dump, read from a fresh connection once every backend of
the dump has gone and the counters have settled. The table with a primary key and a second
index is vacuumed first, so an index-only ``count(*)`` would have been cheap, and would show as
an index scan.

When the archive cannot be counted, the counts come from ``count(*)`` in the dump's own
snapshot, still exact: rows another connection inserts during the dump are not counted.
The counts mean what a restore drill counts in the restored database (``row_counts``), table
for table, partitioned tables and inheritance parents included.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from regionvault.devstack.services import PostgresService, start_postgres
from regionvault.drill import _compare_counts
from regionvault.sources import postgres
from regionvault.sources.pgarchive import ArchiveRowCounter
from regionvault.sources.postgres import PostgresSource, database_dsn, restore_dump, row_counts

# stack: it needs the embedded PostgreSQL, which it starts itself (never the machine's server)
pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

DATABASE = "rv_single_scan"
EVENTS = 60_000  # over 1 MiB of archive: the first piece reaches ``write`` mid-dump

SEED = f"""
CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL)
    WITH (autovacuum_enabled = off);
CREATE INDEX accounts_email ON accounts (email);
INSERT INTO accounts SELECT i, 'user' || i || '@example.com' FROM generate_series(1, 2000) i;
CREATE TABLE events (id int, payload text) WITH (autovacuum_enabled = off);
INSERT INTO events SELECT i, md5(i::text) FROM generate_series(1, {EVENTS}) i;
CREATE SCHEMA "Ops";
CREATE TABLE "Ops"."Audit Log" (line text) WITH (autovacuum_enabled = off);
INSERT INTO "Ops"."Audit Log" VALUES (E'multi\\nline'), (E'tab\\tbed'), (E'back\\\\slash');
CREATE TABLE empty (x int) WITH (autovacuum_enabled = off);
CREATE UNLOGGED TABLE cache (x int) WITH (autovacuum_enabled = off);
INSERT INTO cache SELECT generate_series(1, 7);
CREATE TABLE metrics (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE metrics_a PARTITION OF metrics FOR VALUES FROM (0) TO (50)
    WITH (autovacuum_enabled = off);
CREATE TABLE metrics_b PARTITION OF metrics FOR VALUES FROM (50) TO (100)
    WITH (autovacuum_enabled = off);
INSERT INTO metrics SELECT i, i % 100 FROM generate_series(1, 300) i;
CREATE TABLE parent (x int) WITH (autovacuum_enabled = off);
CREATE TABLE child () INHERITS (parent) WITH (autovacuum_enabled = off);
INSERT INTO parent VALUES (1);
INSERT INTO child VALUES (2), (3);
"""

#: what ``SELECT count(*)`` returns for each table: a partitioned table or an inheritance
#: parent includes its partitions or children
EXPECTED = {
    "public.accounts": 2000, "public.events": EVENTS, "Ops.Audit Log": 3, "public.empty": 0,
    "public.cache": 7, "public.metrics": 300, "public.metrics_a": 150, "public.metrics_b": 150,
    "public.parent": 3, "public.child": 2,
}
#: the tables that store rows (pg_dump reads each of them with one COPY)
STORED = ["public.accounts", "public.events", "Ops.Audit Log", "public.empty", "public.cache",
          "public.metrics_a", "public.metrics_b", "public.parent", "public.child"]

Scans = dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresService]:
    # Not under pytest's basetemp (see tests/integration/conftest.py).
    root = Path(tempfile.mkdtemp(prefix="rv-test-single-scan-"))
    service = start_postgres(root)
    try:
        yield service
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def source_dsn(server: PostgresService) -> Iterator[str]:
    """A freshly seeded database: each test starts from the same rows and no stray scans."""
    server.drop_database(DATABASE)
    server.create_database(DATABASE)
    dsn = server.dsn(DATABASE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED.encode())
        # all-visible pages: count(*) could be answered by an index-only scan of accounts
        conn.execute("VACUUM (ANALYZE) accounts")
    yield dsn
    server.drop_database(DATABASE)


def read_scans(dsn: str) -> Scans:
    """(seq_scan, idx_scan) per table, as the cumulative statistics say right now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")  # no cached reading
        rows = conn.execute(
            "SELECT schemaname, relname, seq_scan, coalesce(idx_scan, 0) "
            "FROM pg_stat_user_tables").fetchall()
    return {f"{schema}.{table}": (seq, idx) for schema, table, seq, idx in rows}


def settled_scans(dsn: str, *, changed_from: Scans | None = None, timeout: float = 30) -> Scans:
    """The counters once they stop moving: each backend flushes its counts when it exits,
    which may be a little after its client has gone. With ``changed_from``, wait for them to
    move first."""
    deadline = time.monotonic() + timeout
    previous, steady = read_scans(dsn), 0
    while steady < 4:
        if time.monotonic() > deadline:
            raise AssertionError(f"table statistics did not settle in {timeout}s: {previous}")
        time.sleep(0.25)
        current = read_scans(dsn)
        moved = changed_from is None or current != changed_from
        steady = steady + 1 if current == previous and moved else 0
        previous = current
    return previous


def delta(before: Scans, after: Scans, table: str) -> tuple[int, int]:
    return (after[table][0] - before[table][0], after[table][1] - before[table][1])


def dump(dsn: str, *, during: Callable[[], object] | None = None) -> tuple[bytes, dict[str, int]]:
    """Dump like the chain does; ``during`` runs when the first piece arrives (mid-dump)."""
    pieces: list[bytes] = []

    def write(piece: bytes) -> None:
        if not pieces and during is not None:
            during()
        pieces.append(piece)

    info = PostgresSource(name="billing", dsn=dsn).dump(write)
    return b"".join(pieces), dict(info.row_counts)


def test_a_dump_scans_each_table_once(source_dsn: str) -> None:
    before = settled_scans(source_dsn)
    archive, counts = dump(source_dsn)
    after = settled_scans(source_dsn, changed_from=before)

    scans = {table: delta(before, after, table) for table in STORED}
    assert scans == {table: (1, 0) for table in STORED}, scans
    assert len(archive) > 1 << 20
    assert counts == EXPECTED
    assert row_counts(source_dsn) == EXPECTED  # the source, counted in SQL after the fact


def test_the_counts_are_what_a_drill_finds_in_the_restored_database(
        server: PostgresService, source_dsn: str) -> None:
    archive, counts = dump(source_dsn)
    server.drop_database("rv_single_scan_restored")
    server.create_database("rv_single_scan_restored")
    target = database_dsn(source_dsn, "rv_single_scan_restored")
    restore_dump([archive], target, label="test backup")

    found = row_counts(target)
    assert found == counts == EXPECTED
    assert _compare_counts(counts, found) is None  # the drill's own comparison passes
    server.drop_database("rv_single_scan_restored")


class DecliningCounter(ArchiveRowCounter):
    """An archive parser that reads everything and then, as for an unknown version, declines."""

    def finish(self) -> None:
        super().finish()
        self.failure = "declined by the test"


@pytest.mark.parametrize("declines", [False, True], ids=["archive-counts", "sql-fallback"])
def test_rows_inserted_during_the_dump_are_not_counted(
        source_dsn: str, declines: bool, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    if declines:
        monkeypatch.setattr(postgres, "ArchiveRowCounter", DecliningCounter)

    def insert_meanwhile() -> None:
        # another session commits while pg_dump is still writing (the first 1 MiB is out)
        with psycopg.connect(source_dsn, autocommit=True) as other:
            other.execute("INSERT INTO events SELECT i, 'late' FROM generate_series(1, 25) i")
            other.execute("INSERT INTO accounts VALUES (-1, 'late@example.com')")
            other.execute("INSERT INTO metrics VALUES (-1, 1)")

    with caplog.at_level(logging.INFO, logger="regionvault.sources.postgres"):
        _, counts = dump(source_dsn, during=insert_meanwhile)

    assert counts == EXPECTED  # the snapshot's rows, not the late ones
    now = row_counts(source_dsn)
    assert (now["public.events"], now["public.accounts"], now["public.metrics"]) == (
        EVENTS + 25, 2001, 301)
    fallback = [r.getMessage() for r in caplog.records if "could not be counted" in r.getMessage()]
    if declines:
        assert fallback and "declined by the test" in fallback[0], caplog.text
    else:
        assert not fallback, caplog.text


def test_a_table_the_archive_does_not_hold_is_counted_once_in_sql(source_dsn: str) -> None:
    # A table that belongs to an extension is not dumped (CREATE EXTENSION recreates it), so
    # the archive has no rows for it: it is counted in the dump's snapshot, its only scan.
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE extension_owned (x int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO extension_owned SELECT generate_series(1, 5)")
        conn.execute("ALTER EXTENSION plpgsql ADD TABLE extension_owned")
    before = settled_scans(source_dsn)
    archive, counts = dump(source_dsn)
    after = settled_scans(source_dsn, changed_from=before)

    assert b"extension_owned" not in archive
    assert counts == {**EXPECTED, "public.extension_owned": 5}
    tables = [*STORED, "public.extension_owned"]
    scans = {table: delta(before, after, table) for table in tables}
    assert scans == {table: (1, 0) for table in tables}, scans
