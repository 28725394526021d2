"""What only the bigtable source must do, against a real ``cbtemulator``: every cell comes back
with its timestamp and every family with its GC rule; cells written after the dump's instant are
not in it; a target table that holds data is refused without ``clean`` and replaced with it;
failed MutateRows entries, and only those, are written again; a missing table and an
unreachable emulator each give one clear sentence. Plus the parts that need no server: the
DSN and the assembly of rows from ReadRows chunks."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud.bigtable import column_family
from google.cloud.bigtable_v2 import BigtableClient
from google.cloud.bigtable_v2 import types as data_types
from google.cloud.bigtable_v2.services.bigtable.transports import BigtableGrpcTransport
from google.rpc import code_pb2, status_pb2

from regionvault.devstack import bigtable as devstack_bigtable
from regionvault.devstack.services import ServiceStartError
from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.sources import bigtable as bigtable_module
from regionvault.sources import btformat
from regionvault.sources.base import DumpInfo
from regionvault.sources.bigtable import (
    BigtableDsn,
    BigtableSource,
    InvalidChunks,
    RowAssembler,
    parse_dsn,
    send_mutate_rows,
)
from regionvault.sources.btformat import (
    Cell,
    Family,
    Intersection,
    MaxAge,
    MaxVersions,
    Row,
    TableHeader,
    Union,
)
from tests.sources.kit_bigtable import (
    BIG_VALUE,
    SEEDED_ROWS,
    BigtableKit,
    bigtable_kit,
    instance_of,
    plain_client,
)

CANARY = "RV-BIGTABLE-CANARY-51d2"
SOURCE = "journeys"


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigtableKit]:
    with bigtable_kit(Path(tmp_path_factory.mktemp("bigtable"))) as started:
        yield started


def dump_of(source: BigtableSource) -> tuple[list[bytes], DumpInfo, list[btformat.Record]]:
    """The dump's pieces, what it reported, and its records."""
    chunks: list[bytes] = []
    info = source.dump(chunks.append)
    return chunks, info, list(btformat.decode(chunks))


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_keeps_every_cell_timestamp_and_gc_rule(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    before = kit.checksums(seeded)
    chunks: list[bytes] = []
    info = BigtableSource(SOURCE, seeded).dump(chunks.append)

    assert dict(info.row_counts) == SEEDED_ROWS
    assert info.server_version == "bigtable emulator"
    assert info.tool_version.startswith("google-cloud-bigtable 2.")
    assert all(len(chunk) <= btformat.PIECE_SIZE for chunk in chunks)
    assert len(chunks) >= 2  # the > 1 MiB value made the stream go out in pieces

    records = list(btformat.decode(chunks))
    headers = {r.table: r for r in records if isinstance(r, TableHeader)}
    assert headers["events"].families == (
        Family("hist", MaxVersions(3)), Family("recent", MaxAge(30 * 86400)))
    assert headers["profiles"].families == (
        Family("attrs", Union((MaxVersions(2), MaxAge(7 * 86400)))),
        Family("blob", Intersection((MaxVersions(1), MaxAge(36 * 3600)))),
        Family("plain", None))
    rows = {r.key: r for r in records if isinstance(r, Row)}
    state = [c for c in rows[b"evt#0001"].cells if c.qualifier == b"state"]
    assert len({c.timestamp_micros for c in state}) == 3  # every version, each its own stamp
    assert {c.value for c in state} == {b"state 1.0", b"state 1.1", b"state 1.2"}
    assert [c.value for c in rows[b"zz-big"].cells] == [BIG_VALUE]

    target = kit.empty_target()
    source = BigtableSource(SOURCE, seeded)
    source.check_target(target, dump=info)
    source.restore(chunks, target)
    assert kit.checksums(target) == before
    assert source.row_counts(target) == SEEDED_ROWS
    assert kit.checksums(seeded) == before, "the dump changed the source"


def test_configured_tables_limit_the_dump(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    _, info, records = dump_of(BigtableSource(SOURCE, seeded, ("profiles",)))
    assert dict(info.row_counts) == {"profiles": SEEDED_ROWS["profiles"]}
    assert [r.table for r in records if isinstance(r, TableHeader)] == ["profiles"]


# --- the dump's instant -----------------------------------------------------------------------


def test_cells_written_after_the_dump_started_are_not_in_it(kit: BigtableKit) -> None:
    dsn = kit.new_dsn("moving")
    instance_id = instance_of(dsn)
    stamp = datetime.now(UTC) - timedelta(minutes=1)
    with plain_client(kit.service) as client:
        first = client.instance(instance_id).table("a_first")
        first.create(column_families={"f": column_family.MaxVersionsGCRule(10)})
        second = client.instance(instance_id).table("b_second")
        second.create(column_families={"f": column_family.MaxVersionsGCRule(10)})
        rows = []
        # the first row is large, so the first piece is written while "a_first" is being read
        for key, value in [(b"a", BIG_VALUE), (b"m", b"old m"), (b"x", b"old x")]:
            row = first.direct_row(key)
            row.set_cell("f", b"q", value, timestamp=stamp)
            rows.append(row)
        row = second.direct_row(b"s")
        row.set_cell("f", b"q", b"old s", timestamp=stamp)
        rows.append(row)
        assert all(s.code == 0 for s in first.mutate_rows(rows[:3]) + second.mutate_rows(rows[3:]))

    def write_during_the_dump() -> None:
        time.sleep(0.005)  # surely a later millisecond than the dump's instant
        with plain_client(kit.service) as client:
            first = client.instance(instance_id).table("a_first")
            second = client.instance(instance_id).table("b_second")
            later_rows = []
            for table, key in [(first, b"m"), (first, b"n-new"), (second, b"s"),
                               (second, b"t-new")]:
                row = table.direct_row(key)
                row.set_cell("f", b"q", b"written after T")  # the server stamps it: now
                later_rows.append((table, row))
            # an explicit old timestamp, written after T: Bigtable cannot tell, so it is dumped
            backdated = second.direct_row(b"u-backdated")
            backdated.set_cell("f", b"q", b"backdated", timestamp=stamp)
            for table, row in [*later_rows, (second, backdated)]:
                assert table.mutate_rows([row])[0].code == 0

    chunks: list[bytes] = []

    def write(chunk: bytes) -> None:
        if not chunks:
            write_during_the_dump()
        chunks.append(chunk)

    info = BigtableSource(SOURCE, dsn).dump(write)
    records = list(btformat.decode(chunks))
    values = {(r.key, c.value) for r in records if isinstance(r, Row) for c in r.cells}
    assert not any(value == b"written after T" for _, value in values)
    assert {key for key, _ in values} == {b"a", b"m", b"x", b"s", b"u-backdated"}
    assert dict(info.row_counts) == {"a_first": 3, "b_second": 2}

    # positive control: the later cells did land, and a dump taken now has them
    later = list(btformat.decode(dump_of(BigtableSource(SOURCE, dsn))[0]))
    later_values = [c.value for r in later if isinstance(r, Row) for c in r.cells]
    assert later_values.count(b"written after T") == 4


# --- restore into a target that holds data ----------------------------------------------------


def test_restore_refuses_a_table_with_data_and_replaces_it_with_clean(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    chunks, info, _ = dump_of(BigtableSource(SOURCE, seeded))
    target = kit.seeded("another canary")
    with plain_client(kit.service) as client:
        # a family the backup does not have, holding data: clean must leave only the backup's
        events = client.instance(instance_of(target)).table("events")
        events.column_family("stale", column_family.MaxVersionsGCRule(1)).create()
        row = events.direct_row(b"evt#0001")
        row.set_cell("stale", b"q", b"stale value")
        assert events.mutate_rows([row])[0].code == 0
    held = kit.checksums(target)
    source = BigtableSource(SOURCE, None)  # the restore side has no source DSN
    sentence = (f"source '{SOURCE}': Bigtable table 'events' in instance "
                f"'rv-test/{instance_of(target)}' already holds data; restore into an empty "
                "instance or pass --clean to replace it")

    with pytest.raises(SourceError) as refused:
        source.check_target(target, dump=info)
    assert str(refused.value) == sentence
    assert not isinstance(refused.value, TransientSourceError)
    with pytest.raises(SourceError) as refused_again:
        source.restore(chunks, target)
    assert str(refused_again.value) == sentence
    assert kit.checksums(target) == held, "a refused restore changed the target"

    source.check_target(target, clean=True, dump=info)
    source.restore(chunks, target, clean=True)
    assert kit.checksums(target) == kit.checksums(seeded)
    # and it can be run again: clean replaces what the first run wrote
    source.restore(chunks, target, clean=True)
    assert kit.checksums(target) == kit.checksums(seeded)


def test_restore_into_an_existing_empty_table_sets_its_families(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    chunks, _, _ = dump_of(BigtableSource(SOURCE, seeded))
    target = kit.empty_target()
    with plain_client(kit.service) as client:
        client.instance(instance_of(target)).table("events").create(
            column_families={"hist": column_family.MaxVersionsGCRule(9), "other": None})
    BigtableSource(SOURCE, None).check_target(target)
    BigtableSource(SOURCE, None).restore(chunks, target)
    assert kit.checksums(target) == kit.checksums(seeded)


def test_a_truncated_stream_fails_the_restore_in_one_sentence(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    chunks, _, _ = dump_of(BigtableSource(SOURCE, seeded))
    whole = b"".join(chunks)
    with pytest.raises(SourceError, match=r"truncated.*--clean") as caught:
        BigtableSource(SOURCE, None).restore([whole[:-30]], kit.empty_target())
    assert "\n" not in str(caught.value)


# --- MutateRows: per-entry retry --------------------------------------------------------------


class FlakyMutateRows:
    """Wraps the real MutateRows call: each chosen row key fails ``times`` times with ``code``
    (it is taken out of the request actually sent, so it lands only if it is sent again)."""

    def __init__(self, keys: set[bytes], *, code: int = code_pb2.UNAVAILABLE,
                 times: int = 1) -> None:
        self.keys = keys
        self.code = code
        self.times = times
        self.failures: dict[bytes, int] = {}
        self.calls: list[list[bytes]] = []

    def __call__(self, data: BigtableClient, request: data_types.MutateRowsRequest
                 ) -> Iterable[data_types.MutateRowsResponse]:
        keys = [bytes(entry.row_key) for entry in request.entries]
        self.calls.append(keys)
        failing = [i for i, key in enumerate(keys)
                   if key in self.keys and self.failures.get(key, 0) < self.times]
        for i in failing:
            self.failures[keys[i]] = self.failures.get(keys[i], 0) + 1
        kept = [i for i in range(len(keys)) if i not in failing]
        entries = [data_types.MutateRowsResponse.Entry(
            index=i, status=status_pb2.Status(code=self.code, message="injected"))
            for i in failing]
        if kept:
            sent = data_types.MutateRowsRequest(
                table_name=request.table_name, entries=[request.entries[i] for i in kept])
            for response in send_mutate_rows(data, sent):
                entries += [data_types.MutateRowsResponse.Entry(index=kept[e.index],
                                                                status=e.status)
                            for e in response.entries]
        return [data_types.MutateRowsResponse(entries=entries)]


EVENT_KEYS = [f"evt#{n:04d}".encode() for n in range(SEEDED_ROWS["events"])]
PROFILE_KEYS = sorted([b"acct\x00\xff\x01", "üser-1".encode(), b"zz-big"])  # byte order


def test_only_the_failed_entries_are_written_again(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    chunks, _, _ = dump_of(BigtableSource(SOURCE, seeded))
    flaky = FlakyMutateRows({b"evt#0001", b"evt#0003", b"zz-big"})
    target = kit.empty_target()
    BigtableSource(SOURCE, None, mutate_rows=flaky).restore(chunks, target)
    assert flaky.calls == [EVENT_KEYS, [b"evt#0001", b"evt#0003"],
                           PROFILE_KEYS, [b"zz-big"]]
    assert kit.checksums(target) == kit.checksums(seeded)


def test_entries_not_reported_before_a_dropped_call_are_written_again(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    chunks, _, _ = dump_of(BigtableSource(SOURCE, seeded))
    calls: list[list[bytes]] = []

    def drops_after_two(data: BigtableClient, request: data_types.MutateRowsRequest
                        ) -> Iterator[data_types.MutateRowsResponse]:
        calls.append([bytes(e.row_key) for e in request.entries])
        if len(calls) > 1:
            yield from send_mutate_rows(data, request)
            return
        # the first call writes and reports two entries, then the connection drops
        first_two = data_types.MutateRowsRequest(table_name=request.table_name,
                                                 entries=list(request.entries[:2]))
        yield from send_mutate_rows(data, first_two)
        raise api_exceptions.ServiceUnavailable("connection reset")

    target = kit.empty_target()
    BigtableSource(SOURCE, None, mutate_rows=drops_after_two).restore(chunks, target)
    assert calls[:2] == [EVENT_KEYS, EVENT_KEYS[2:]]
    assert kit.checksums(target) == kit.checksums(seeded)


def test_a_permanent_entry_failure_is_not_retried(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    chunks, _, _ = dump_of(BigtableSource(SOURCE, seeded))
    flaky = FlakyMutateRows({b"evt#0002"}, code=code_pb2.INVALID_ARGUMENT)
    with pytest.raises(SourceError) as caught:
        BigtableSource(SOURCE, None, mutate_rows=flaky).restore(chunks, kit.empty_target())
    assert not isinstance(caught.value, TransientSourceError)
    assert flaky.calls == [EVENT_KEYS]
    message = str(caught.value)
    assert "INVALID_ARGUMENT" in message and "'events'" in message and "\n" not in message
    assert "evt#" not in message and "state" not in message  # no row key, no value


def test_retries_are_bounded(kit: BigtableKit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bigtable_module, "MUTATE_BACKOFF", 0.001)
    seeded = kit.seeded(CANARY)
    chunks, _, _ = dump_of(BigtableSource(SOURCE, seeded))
    flaky = FlakyMutateRows({b"evt#0004"}, times=1000)
    with pytest.raises(TransientSourceError, match=r"after 5 attempts.*--clean"):
        BigtableSource(SOURCE, None, mutate_rows=flaky).restore(chunks, kit.empty_target())
    assert flaky.calls == [EVENT_KEYS] + [[b"evt#0004"]] * 4


# --- errors -----------------------------------------------------------------------------------


def test_a_missing_table_is_one_sentence(kit: BigtableKit) -> None:
    seeded = kit.seeded(CANARY)
    source = BigtableSource(SOURCE, seeded, ("events", "nosuch"))
    written: list[bytes] = []
    with pytest.raises(SourceError) as caught:
        source.dump(written.append)
    assert str(caught.value) == (f"source '{SOURCE}': Bigtable table 'nosuch' does not exist in "
                                 f"instance 'rv-test/{instance_of(seeded)}'")
    assert not isinstance(caught.value, TransientSourceError)
    assert written == [], "the dump wrote before it knew every table exists"


@pytest.mark.parametrize("operation", ["dump", "check_target", "row_counts", "restore"])
def test_an_unreachable_emulator_is_one_transient_sentence(kit: BigtableKit,
                                                           operation: str) -> None:
    unreachable = kit.unreachable_dsn()
    source = BigtableSource(SOURCE, unreachable)
    started = time.monotonic()
    with pytest.raises(TransientSourceError) as caught:
        if operation == "dump":
            source.dump(lambda chunk: None)
        elif operation == "check_target":
            source.check_target(unreachable)
        elif operation == "row_counts":
            source.row_counts(unreachable)
        else:
            source.restore([btformat.HEADER_LINE], unreachable)
    assert time.monotonic() - started < 20
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"source '{SOURCE}': Bigtable instance "
                                                      "'rv-test/unreachable' could not be "
                                                      "reached")


def test_a_server_that_never_answers_is_cut_off_by_the_deadline(kit: BigtableKit) -> None:
    # something accepts the connection but never speaks gRPC: the deadline ends the wait
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        source = BigtableSource(SOURCE, f"bigtable://p/i?emulator=127.0.0.1:{port}")
        started = time.monotonic()
        with pytest.raises(TransientSourceError, match=r"DEADLINE_EXCEEDED|UNAVAILABLE"):
            source.dump(lambda chunk: None)
        assert time.monotonic() - started < 20


# --- no server: the DSN, the table ids, the chunk protocol ------------------------------------


def test_dsn_parts() -> None:
    assert parse_dsn("bigtable://proj/inst") == BigtableDsn("proj", "inst")
    assert parse_dsn("bigtable://example.com:proj/inst-1?emulator=127.0.0.1:8086") == \
        BigtableDsn("example.com:proj", "inst-1", "127.0.0.1:8086")
    assert parse_dsn("bigtable://p/i?emulator=[::1]:9000").emulator == "[::1]:9000"


@pytest.mark.parametrize("dsn", [
    "postgresql://proj/inst", "bigtable://proj", "bigtable://proj/", "bigtable://proj/a/b",
    "bigtable:///inst", "bigtable://user:s3cret@proj/inst", "bigtable://proj/inst?emulator=",
    "bigtable://proj/inst?emulator=host", "bigtable://proj/inst?emulator=h:99999",
    "bigtable://proj/inst?emulator=h:1&emulator=h:2", "bigtable://proj/inst?token=s3cret",
    "bigtable://proj/inst#s3cret", "bigtable://proj/inst?s3cret",
])
def test_a_malformed_dsn_is_a_config_error_that_does_not_echo_it(dsn: str) -> None:
    with pytest.raises(ConfigError) as caught:
        BigtableSource(SOURCE, dsn)
    assert "s3cret" not in str(caught.value) and "(its value is not shown)" in str(caught.value)


@pytest.mark.parametrize("table", ["", "a/b", "../x", "-lead", "x" * 51, "naïve"])
def test_a_bad_table_id_is_a_config_error(table: str) -> None:
    with pytest.raises(ConfigError, match="is not a Bigtable table id"):
        BigtableSource(SOURCE, "bigtable://p/i", ("ok", table))


def test_a_missing_emulator_names_the_package_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(devstack_bigtable.shutil, "which", lambda name: None)
    monkeypatch.setattr(devstack_bigtable, "DEBIAN_CBTEMULATOR", tmp_path / "cbtemulator")
    with pytest.raises(ServiceStartError, match="google-cloud-cli-bigtable-emulator"):
        devstack_bigtable.start_bigtable(tmp_path)


def test_the_cloud_channel_fits_the_transport() -> None:
    # Cloud Bigtable itself is not reachable from the tests; this checks, without connecting
    # (a gRPC channel connects lazily) or looking for credentials, that the transport accepts
    # the keepalive channel factory used in production.
    transport = BigtableGrpcTransport(credentials=AnonymousCredentials(),
                                      channel=bigtable_module.keepalive_channel)
    try:
        assert transport.grpc_channel is not None
    finally:
        transport.close()


def test_a_restore_side_source_cannot_dump() -> None:
    with pytest.raises(ConfigError, match="restore only"):
        BigtableSource(SOURCE, None).dump(lambda chunk: None)


CellChunk = data_types.ReadRowsResponse.CellChunk


def chunk(**fields: object) -> object:
    """A raw CellChunk, as ``Instance.read_rows`` hands them to the assembler."""
    return CellChunk.pb(CellChunk(**fields))


def assemble(chunks: list[object]) -> list[Row]:
    assembler = RowAssembler()
    rows = [row for c in chunks if (row := assembler.feed(c)) is not None]
    assembler.finish()
    return rows


def test_rows_assemble_from_sparse_chunks() -> None:
    # Cloud Bigtable names key, family and qualifier only when they change, and splits values
    rows = assemble([
        chunk(row_key=b"r1", family_name="f", qualifier=b"a", timestamp_micros=2000,
              value=b"he", value_size=5),
        chunk(value=b"ll", value_size=5),
        chunk(value=b"o"),
        chunk(timestamp_micros=1000, value=b"older"),
        chunk(qualifier=b"b", timestamp_micros=1000, value=b""),
        chunk(family_name="g", qualifier=b"a", timestamp_micros=3000, value=b"x",
              commit_row=True),
        chunk(row_key=b"r2", family_name="f", qualifier=b"a", timestamp_micros=1000,
              value=b"y", commit_row=True),
    ])
    assert rows == [
        Row(b"r1", (Cell("f", b"a", 2000, b"hello"), Cell("f", b"a", 1000, b"older"),
                    Cell("f", b"b", 1000, b""), Cell("g", b"a", 3000, b"x"))),
        Row(b"r2", (Cell("f", b"a", 1000, b"y"),)),
    ]


def test_a_reset_row_discards_the_row_so_far() -> None:
    rows = assemble([
        chunk(row_key=b"r1", family_name="f", qualifier=b"a", timestamp_micros=1000,
              value=b"stale"),
        chunk(reset_row=True),
        chunk(row_key=b"r1", family_name="f", qualifier=b"a", timestamp_micros=1000,
              value=b"fresh", commit_row=True),
    ])
    assert rows == [Row(b"r1", (Cell("f", b"a", 1000, b"fresh"),))]


@pytest.mark.parametrize(("chunks", "message"), [
    ([chunk(family_name="f", qualifier=b"a", value=b"v", commit_row=True)], "without a row key"),
    ([chunk(row_key=b"r", value=b"v", commit_row=True)], "without a family"),
    ([chunk(row_key=b"r", family_name="f", value=b"v")], "without a qualifier"),
    ([chunk(row_key=b"r", family_name="f", qualifier=b"a", value=b"v", value_size=3,
            commit_row=True)], "inside a split value"),
    ([chunk(row_key=b"b", family_name="f", qualifier=b"a", commit_row=True),
      chunk(row_key=b"a", family_name="f", qualifier=b"a", commit_row=True)], "out of order"),
    ([chunk(row_key=b"r", family_name="f", qualifier=b"a")], "ends inside a row"),
    ([chunk(reset_row=True)], "reset_row"),
])
def test_a_broken_chunk_stream_is_refused(chunks: list[object], message: str) -> None:
    with pytest.raises(InvalidChunks, match=message):
        assemble(chunks)
