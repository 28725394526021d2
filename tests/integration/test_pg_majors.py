"""PostgreSQL fleets of mixed majors: each server is dumped and restored by fitting tools.

Acceptance, on real servers: a PostgreSQL 15 cluster of our own (Debian's binaries in
/usr/lib/postgresql/15/bin, on a free port) and the embedded PostgreSQL 18, both with password
authentication. A 15 source restores into a 15 target with no configuration at all; a dump of
the 18 server is refused by a 15 target before anything is written; a 15 backup restores into
18; a backup made the old way (pg_dump 18 of the 15 server) still restores into 15. Then the
choice of tools itself, as pure functions over fake bin directories.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from regionvault.devstack.services import pg_bin_dir
from regionvault.errors import ConfigError, SourceError
from regionvault.sources.base import DumpInfo
from regionvault.sources.pgtools import (
    DumpVersions,
    InstalledTools,
    PgTools,
    PgVersion,
    archive_versions,
    installed_majors,
    installed_tools,
    plan_restore,
    tools_for_server,
)
from regionvault.sources.postgres import PostgresSource, _SettingsFilter, user_relations
from tests.sources.kit_postgres import EXPECTED_ROWS, PostgresKit, postgres_kit

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
CANARY = "RV-MAJORS-CANARY-41c7"


def _kit(prefix: str, bin_dir: Path | None) -> Iterator[PostgresKit]:
    # Not under pytest's basetemp (see tests/integration/conftest.py).
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with postgres_kit(root, bin_dir) as kit:
            yield kit
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg15() -> Iterator[PostgresKit]:
    if not (PG15_BIN / "postgres").is_file() or not (PG15_BIN / "pg_dump").is_file():
        pytest.fail(f"{PG15_BIN} has no postgres or pg_dump: this machine kind ships PostgreSQL "
                    "15 there (Debian's postgresql-15), the older major of the fleet tests")
    yield from _kit("rv-test-majors-pg15-", PG15_BIN)


@pytest.fixture(scope="module")
def pg18() -> Iterator[PostgresKit]:
    yield from _kit("rv-test-majors-pg18-", None)


@pytest.fixture(autouse=True)
def no_tool_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # "out of the box": whatever the developer's shell says, no pin and no per-major choice
    for name in [n for n in os.environ if n.startswith("REGIONVAULT_PG_BIN")]:
        monkeypatch.delenv(name)


def _dump(kit: PostgresKit, dsn: str, name: str) -> tuple[bytes, DumpInfo]:
    chunks: list[bytes] = []
    info = kit.open(name, dsn).dump(chunks.append)
    return b"".join(chunks), info


def _number(reported: str) -> str:
    """The version number a server or program reports, e.g. "15.20" of
    "15.20 (Debian 15.20-0+deb12u1)", found here independently of pgtools."""
    found = re.search(r"\d+\.\d+", reported)
    assert found, reported
    return found.group(0)


# --- real servers -----------------------------------------------------------------------------


def test_pg15_source_restores_into_pg15_out_of_the_box(pg15: PostgresKit) -> None:
    source_dsn = pg15.seeded(CANARY)
    dump, info = _dump(pg15, source_dsn, "fleet15")

    # dumped by PostgreSQL 15's own pg_dump, and the manifest says so
    server = _number(pg15.server_version())
    assert server.startswith("15.")
    assert info.server_version == server
    assert info.tool_version.startswith(f"pg_dump (PostgreSQL) {server}")
    assert archive_versions(dump) == DumpVersions(PgVersion(15, server), PgVersion(15, server))
    assert dict(info.row_counts) == EXPECTED_ROWS

    # restored by PostgreSQL 15's own pg_restore, straight into the server
    plan = plan_restore(DumpVersions.of(info.server_version, info.tool_version),
                        PgVersion(15, server), label="backup of source 'fleet15'")
    assert (plan.tools.bin_dir, plan.unknown_settings) == (PG15_BIN, ())

    target = pg15.empty_target()
    restorer = PostgresSource("fleet15")  # as restorer_for opens it: no source DSN
    restorer.check_target(target, dump=info)
    restorer.restore([dump], target)
    assert pg15.checksums(target) == pg15.checksums(source_dsn)
    assert restorer.row_counts(target) == EXPECTED_ROWS


def test_the_checksums_see_a_changed_row(pg15: PostgresKit) -> None:
    # positive control for the comparisons above: one changed value changes the digest
    dsn = pg15.seeded(CANARY)
    before = pg15.checksums(dsn)
    pg15.service.execute(dsn.rsplit("/", 1)[1],
                         "UPDATE public.blobs SET note = 'changed' WHERE id = 1")
    after = pg15.checksums(dsn)
    assert [t for t in before if before[t] != after[t]] == ["public.blobs"]


def test_pg18_backup_is_refused_by_a_pg15_target_before_anything_is_written(
        pg15: PostgresKit, pg18: PostgresKit) -> None:
    dump, info = _dump(pg18, pg18.seeded(CANARY), "fleet18")
    tool = _number(info.tool_version)
    expected = (f"backup of source 'fleet18' was dumped by pg_dump {tool} from a PostgreSQL "
                f"{_number(pg18.server_version())} server; the target runs PostgreSQL "
                f"{_number(pg15.server_version())}, which cannot load it: restore into a "
                "PostgreSQL 18 or newer server")
    target = pg15.empty_target()
    restorer = PostgresSource("fleet18")

    with pytest.raises(SourceError) as refused:
        restorer.check_target(target, dump=info)
    assert str(refused.value) == expected
    # restore() reads the same versions from the archive's header: refused just the same
    # (for a manifest that predates the versions), before pg_restore starts
    with pytest.raises(SourceError) as refused_again:
        restorer.restore([dump], target)
    assert str(refused_again.value) == expected
    assert user_relations(target) == 0
    assert pg15.checksums(target) == {}


def test_pg15_backup_restores_into_pg18(pg15: PostgresKit, pg18: PostgresKit) -> None:
    source_dsn = pg15.seeded(CANARY)
    dump, info = _dump(pg15, source_dsn, "upgrade")
    target = pg18.empty_target()
    restorer = PostgresSource("upgrade")
    restorer.check_target(target, dump=info)
    restorer.restore([dump], target)
    # PostgreSQL 18 names NOT NULL constraints of its own: the data must be equal
    assert pg18.data_checksums(target) == pg15.data_checksums(source_dsn)
    assert restorer.row_counts(target) == EXPECTED_ROWS


@pytest.fixture(scope="module")
def legacy(pg15: PostgresKit) -> tuple[str, bytes, DumpInfo]:
    """A backup made the way every source was dumped before the tools were chosen by major:
    the PostgreSQL 15 server dumped by pg_dump 18 (the source DSN, the dump, its info)."""
    source_dsn = pg15.seeded(CANARY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REGIONVAULT_PG_BIN", str(pg_bin_dir()))
        dump, info = _dump(pg15, source_dsn, "legacy")
    assert info.tool_version.startswith("pg_dump (PostgreSQL) 18.")
    return source_dsn, dump, info


def test_a_pg15_source_dumped_by_pg_dump_18_still_restores_into_pg15(
        pg15: PostgresKit, legacy: tuple[str, bytes, DumpInfo]) -> None:
    source_dsn, dump, info = legacy
    # only pg_restore 18 reads the archive; it sets transaction_timeout, which 15 rejects
    plan = plan_restore(DumpVersions.of(info.server_version, info.tool_version),
                        PgVersion(15, info.server_version), label="backup")
    assert (plan.tools.major, plan.unknown_settings) == (18, ("transaction_timeout",))

    target = pg15.empty_target()
    restorer = PostgresSource("legacy")
    restorer.check_target(target, dump=info)
    restorer.restore([dump], target)
    assert pg15.checksums(target) == pg15.checksums(source_dsn)

    # and over a database that holds tables, with clean
    occupied = pg15.seeded("another-canary")
    restorer.check_target(occupied, clean=True, dump=info)
    restorer.restore([dump], occupied, clean=True)
    assert pg15.checksums(occupied) == pg15.checksums(source_dsn)


class StreamBroke(Exception):
    pass


def _breaking(dump: bytes, after: int) -> Iterator[bytes]:
    """The dump in pieces, failing once ``after`` bytes were given (at the very end, too: as
    a restore's stream does when its checksum differs after the last byte)."""
    piece = 64 * 1024
    for start in range(0, len(dump), piece):
        if start >= after:
            break
        yield dump[start:start + piece]
    raise StreamBroke("the backup stream failed its checks")


@pytest.mark.parametrize("fraction", [0.75, 1.0])
def test_a_restore_through_psql_that_breaks_leaves_the_target_as_it_was(
        pg15: PostgresKit, legacy: tuple[str, bytes, DumpInfo], fraction: float) -> None:
    _, dump, _ = legacy
    target = pg15.empty_target()
    # psql has run every statement it got; it must never see the end of its input
    with pytest.raises(StreamBroke):
        PostgresSource("legacy").restore(_breaking(dump, int(len(dump) * fraction)), target)
    assert user_relations(target) == 0


# --- the choice of tools, over fake bin directories -------------------------------------------


def _fake_tools(root: Path, name: str, version: str) -> Path:
    """A bin directory whose pg_dump reports ``version``; its programs do nothing else."""
    bin_dir = root / name / "bin"
    bin_dir.mkdir(parents=True)
    for program in ("pg_dump", "pg_restore", "psql"):
        script = bin_dir / program
        script.write_text(f"#!/bin/sh\necho '{program} (PostgreSQL) {version}'\n")
        script.chmod(0o755)
    return bin_dir


@pytest.fixture
def debian(tmp_path: Path) -> Path:
    """A fake /usr/lib/postgresql with the majors 15 and 18."""
    root = tmp_path / "postgresql"
    _fake_tools(root, "15", "15.20 (Debian 15.20-0+deb12u1)")
    _fake_tools(root, "18", "18.6")
    return root


def _found(debian: Path, **environ: str) -> InstalledTools:
    return installed_tools(environ, debian_root=debian, embedded=False)


def test_installed_majors_are_read_from_pg_dump(debian: Path) -> None:
    # a directory named 16 whose pg_dump is 17 counts as 17: the program says, not the name
    _fake_tools(debian, "16", "17.2")
    found = _found(debian)
    assert {m: t.bin_dir for m, t in found.by_major.items()} == {
        15: debian / "15" / "bin", 17: debian / "16" / "bin", 18: debian / "18" / "bin"}
    assert found.by_major[15].version == "pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    assert found.by_major[15].number == "15.20"
    assert found.pinned is None


def test_this_machine_has_15_and_18() -> None:
    majors = installed_majors({})
    assert majors[15] == PG15_BIN
    assert majors[18] == pg_bin_dir()


def test_a_server_gets_its_own_major_else_the_nearest_newer(debian: Path) -> None:
    found = _found(debian)
    assert tools_for_server(15, found).major == 15
    assert tools_for_server(16, found).major == 18
    assert tools_for_server(18, found).major == 18
    assert tools_for_server(10, found).major == 15


def test_no_pg_dump_new_enough_is_one_clear_sentence(debian: Path) -> None:
    with pytest.raises(SourceError) as caught:
        tools_for_server(19, _found(debian))
    assert str(caught.value) == (
        "PostgreSQL 19 server needs pg_dump 19 or newer; installed: 15, 18; install "
        "postgresql-client-19 or set REGIONVAULT_PG_BIN_19")


def test_a_major_variable_adds_or_replaces_that_major(debian: Path, tmp_path: Path) -> None:
    extra = _fake_tools(tmp_path / "opt", "pg16", "16.4")
    other15 = _fake_tools(tmp_path / "opt", "pg15", "15.3")
    found = _found(debian, REGIONVAULT_PG_BIN_16=str(extra), REGIONVAULT_PG_BIN_15=str(other15))
    assert tools_for_server(16, found).bin_dir == extra
    assert tools_for_server(15, found).bin_dir == other15
    assert tools_for_server(15, found).origin == "REGIONVAULT_PG_BIN_15"


def test_a_major_variable_must_hold_that_major(debian: Path, tmp_path: Path) -> None:
    wrong = _fake_tools(tmp_path / "opt", "pg17", "17.1")
    with pytest.raises(ConfigError) as caught:
        _found(debian, REGIONVAULT_PG_BIN_16=str(wrong))
    assert str(caught.value) == (
        f"REGIONVAULT_PG_BIN_16={wrong} holds pg_dump (PostgreSQL) 17.1, not PostgreSQL 16: "
        "point it at PostgreSQL 16's tools")
    with pytest.raises(ConfigError, match="REGIONVAULT_PG_BIN_<major>"):
        _found(debian, REGIONVAULT_PG_BIN_LATEST=str(wrong))
    with pytest.raises(ConfigError, match="holds no pg_dump and pg_restore"):
        _found(debian, REGIONVAULT_PG_BIN_16=str(tmp_path))


def test_the_pin_serves_every_server(debian: Path, tmp_path: Path) -> None:
    pin = _fake_tools(tmp_path / "opt", "pinned", "16.4")
    found = _found(debian, REGIONVAULT_PG_BIN=str(pin))
    assert tools_for_server(15, found).bin_dir == pin
    assert tools_for_server(18, found).bin_dir == pin  # its pg_dump says the mismatch itself
    assert found.newest().bin_dir == pin


def _tools(major: int) -> PgTools:
    return PgTools(major=major, bin_dir=Path(f"/pg/{major}/bin"),
                   version=f"pg_dump (PostgreSQL) {major}.1")


def _installed(*majors: int) -> InstalledTools:
    return InstalledTools(by_major={m: _tools(m) for m in majors})


def _versions(server: int, pg_dump: int) -> DumpVersions:
    return DumpVersions(server=PgVersion(server, f"{server}.2"),
                        pg_dump=PgVersion(pg_dump, f"{pg_dump}.6"))


@pytest.mark.parametrize(("server", "pg_dump", "target", "installed", "tools", "dropped"), [
    # the target's own major reads any archive of its major or older
    (15, 15, 15, (15, 18), 15, ()),
    (15, 15, 18, (15, 18), 18, ()),
    (15, 15, 17, (15, 18), 15, ()),  # no 17: an older reader suits the target's SQL
    (14, 15, 16, (15, 17, 18), 15, ()),
    # only a newer pg_restore reads it: its settings the target lacks are left out
    (15, 18, 15, (15, 18), 18, ("transaction_timeout",)),
    (15, 16, 15, (15, 18), 18, ("transaction_timeout",)),
    (15, 16, 15, (15, 16, 18), 16, ()),  # pg_restore 16 sends nothing 15 lacks
    (17, 18, 17, (15, 17, 18), 18, ()),  # 17 knows transaction_timeout
    (16, 16, 18, (18,), 18, ()),
])
def test_which_pg_restore(server: int, pg_dump: int, target: int, installed: tuple[int, ...],
                          tools: int, dropped: tuple[str, ...]) -> None:
    plan = plan_restore(_versions(server, pg_dump), PgVersion(target, f"{target}.9"),
                        _installed(*installed), label="backup of source 'x'")
    assert (plan.tools.major, plan.unknown_settings) == (tools, dropped)


def test_a_target_older_than_the_source_server_is_refused() -> None:
    with pytest.raises(SourceError) as caught:
        plan_restore(_versions(16, 18), PgVersion(15, "15.19"), _installed(15, 16, 18),
                     label="backup of source 'x'")
    assert str(caught.value) == (
        "backup of source 'x' was dumped by pg_dump 18.6 from a PostgreSQL 16.2 server; the "
        "target runs PostgreSQL 15.19, which cannot load it: restore into a PostgreSQL 16 or "
        "newer server")


def test_an_archive_no_installed_pg_restore_reads_is_refused() -> None:
    with pytest.raises(SourceError) as caught:
        plan_restore(_versions(15, 19), PgVersion(18, "18.1"), _installed(15, 18),
                     label="backup of source 'x'")
    assert str(caught.value) == (
        "backup of source 'x' was dumped by pg_dump 19.6, which only pg_restore 19 or newer "
        "can read; installed: 15, 18; install postgresql-client-19 or set "
        "REGIONVAULT_PG_BIN_19")


def test_a_pin_too_old_for_the_archive_is_refused() -> None:
    pinned = InstalledTools(by_major={18: _tools(18)}, pinned=_tools(15))
    with pytest.raises(SourceError) as caught:
        plan_restore(_versions(15, 18), PgVersion(15, "15.19"), pinned, label="backup")
    assert str(caught.value) == (
        "backup was dumped by pg_dump 18.6, which pg_restore 15.1 "
        "(REGIONVAULT_PG_BIN=/pg/15/bin) cannot read: point REGIONVAULT_PG_BIN at PostgreSQL "
        "18 or newer tools, or unset it")
    # a pin new enough is used, with what the target lacks left out
    plan = plan_restore(_versions(15, 15), PgVersion(15, "15.19"),
                        InstalledTools(by_major={}, pinned=_tools(18)), label="backup")
    assert (plan.tools.major, plan.unknown_settings) == (18, ("transaction_timeout",))


def test_unknown_archive_versions_use_the_targets_major() -> None:
    plan = plan_restore(None, PgVersion(15, "15.19"), _installed(15, 18), label="backup")
    assert plan.tools.major == 15


def _header(minor: int, server: str, pg_dump: str, int_size: int = 4) -> bytes:
    def integer(value: int) -> bytes:
        return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(int_size, "little")

    def string(value: str) -> bytes:
        return integer(len(value.encode())) + value.encode()

    compression = b"\0" if minor >= 15 else integer(0)
    return (b"PGDMP" + bytes([1, minor, 0, int_size, 8, 1]) + compression
            + b"".join(integer(v) for v in (5, 4, 3, 2, 1, 125, 0))
            + string("app") + string(server) + string(pg_dump) + integer(42))


def test_the_archive_header_names_its_server_and_pg_dump() -> None:
    assert archive_versions(_header(14, "15.20 (Debian 15.20-0+deb12u1)", "15.20")) == (
        DumpVersions(PgVersion(15, "15.20"), PgVersion(15, "15.20")))
    assert archive_versions(_header(16, "15.20", "18.6", int_size=8)) == (
        DumpVersions(PgVersion(15, "15.20"), PgVersion(18, "18.6")))
    full = _header(16, "18.1", "18.6")
    assert archive_versions(full[:-10]) is None  # cut inside the header
    assert archive_versions(b"-- a plain SQL script\n") is None


def test_the_settings_filter_leaves_out_only_pg_restores_own_line() -> None:
    script = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n"
              b"SET statement_timeout = 0;\nSET transaction_timeout = 0;\n"
              b"SELECT pg_catalog.set_config('search_path', '', false);\n\n"
              b"CREATE TABLE public.t (v text);\n"
              b"COPY public.t (v) FROM stdin;\nSET transaction_timeout = 0;\n\\.\n")
    expected = script.replace(b"SET transaction_timeout = 0;\nSELECT", b"SELECT", 1)
    assert expected.count(b"transaction_timeout") == 1  # the row of table t stays
    for size in (1, 7, 64, len(script)):  # however the pieces fall
        script_filter = _SettingsFilter(["transaction_timeout"])
        pieces = [script[i:i + size] for i in range(0, len(script), size)]
        out = b"".join(script_filter.feed(p) for p in pieces) + script_filter.finish()
        assert out == expected, size
