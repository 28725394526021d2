"""The Bigtable backup stream format (``regionvault.sources.btformat``), with no server: every
record survives a round trip exactly, the writer's pieces are bounded, a truncated, reordered or
miscounted stream is refused, an unknown version is refused by name, and the decoder's memory
stays bounded by one record when it is fed small pieces."""

from __future__ import annotations

import json
import random

import pytest

from regionvault.errors import SourceError
from regionvault.sources.btformat import (
    HEADER_LINE,
    Cell,
    Family,
    Intersection,
    MaxAge,
    MaxVersions,
    Record,
    Row,
    StreamDecoder,
    StreamEnd,
    StreamFormatError,
    StreamHeader,
    StreamWriter,
    TableEnd,
    TableHeader,
    Union,
    decode,
    encode,
    gc_rule_from_json,
    gc_rule_to_json,
)

BIG = random.Random(1).randbytes(2 * 1024 * 1024 + 17)

FAMILIES = (
    Family("hist", MaxVersions(3)),
    Family("recent", MaxAge(2_592_000, 500_000_000)),
    Family("nested", Union((MaxVersions(2), Intersection((MaxAge(60), MaxVersions(1)))))),
    Family("plain", None),
)
EVENTS = (
    Row(b"evt#0001", (
        Cell("hist", b"state", 1_700_000_000_002_000, b"v3"),
        Cell("hist", b"state", 1_700_000_000_001_000, b"v2"),
        Cell("hist", b"state", 1_700_000_000_000_000, b"v1"),
        Cell("recent", "ключ".encode(), 1_700_000_000_000_000, "значение ✓".encode()),
    )),
    Row(b"evt#0002\x00\xff", (Cell("plain", b"\x00\xfe", 0, bytes(range(256))),
                              Cell("plain", b"", 1000, b""))),
    Row(b"zz", (Cell("nested", b"big", 1_700_000_000_000_000, BIG),)),
)
EMPTY_TABLE = TableHeader("empty", (Family("f", None),))


def records() -> list[Record]:
    """A whole stream's records: two tables (one of them empty)."""
    return [
        StreamHeader(1_700_000_000_005_000),
        TableHeader("events", FAMILIES), *EVENTS, TableEnd("events", len(EVENTS)),
        EMPTY_TABLE, TableEnd("empty", 0),
        StreamEnd(2),
    ]


def written(piece_size: int = 64 * 1024) -> list[bytes]:
    """The stream of ``records()`` as ``StreamWriter`` writes it."""
    pieces: list[bytes] = []
    writer = StreamWriter(pieces.append, snapshot_micros=1_700_000_000_005_000,
                          piece_size=piece_size)
    writer.begin_table(TableHeader("events", FAMILIES))
    for row in EVENTS:
        writer.row(row)
    assert writer.end_table() == len(EVENTS)
    writer.begin_table(EMPTY_TABLE)
    assert writer.end_table() == 0
    writer.finish()
    return pieces


def test_round_trip_keeps_every_record_exactly() -> None:
    pieces = written()
    assert pieces[0].startswith(b"RVBT1\n")
    assert list(decode(pieces)) == records()


def test_writer_pieces_are_bounded() -> None:
    pieces = written(piece_size=4096)
    assert len(pieces) > 500  # the 2 MiB value was cut up, not written whole
    assert all(len(piece) == 4096 for piece in pieces[:-1])
    assert 0 < len(pieces[-1]) <= 4096


def test_decoder_memory_is_bounded_by_one_record() -> None:
    data = b"".join(written())
    largest_frame = len(encode(EVENTS[2]))
    piece = 1000
    decoder = StreamDecoder()
    seen: list[Record] = []
    first_record_at = None
    high_water = 0
    for start in range(0, len(data), piece):
        seen += decoder.feed(data[start:start + piece])
        high_water = max(high_water, decoder.buffered)
        if seen and first_record_at is None:
            first_record_at = start
    decoder.finish()
    assert seen == records()
    # records come out as their bytes arrive, not once the whole stream is in
    assert first_record_at == 0
    assert high_water < largest_frame + piece
    # the check measures something: the big row was held until its last piece arrived
    assert high_water > largest_frame - piece


@pytest.mark.parametrize("cut", [1, 5, 6, 7, 40, 200, 1024 * 1024, -400, -25, -1])
def test_a_truncated_stream_is_refused(cut: int) -> None:
    data = b"".join(written())
    with pytest.raises(StreamFormatError, match="truncated"):
        list(decode([data[:cut]]))


def test_every_cut_of_a_small_stream_is_refused() -> None:
    pieces: list[bytes] = []
    writer = StreamWriter(pieces.append, snapshot_micros=0)
    writer.begin_table(TableHeader("t", (Family("f", MaxVersions(1)),)))
    writer.row(Row(b"k", (Cell("f", b"q", 1000, b"value"),)))
    writer.end_table()
    writer.finish()
    data = b"".join(pieces)
    assert len(list(decode([data]))) == 5
    for cut in range(len(data)):
        with pytest.raises(StreamFormatError):
            list(decode([data[:cut]]))


def test_an_unknown_version_is_refused_by_name() -> None:
    data = b"".join(written()).replace(HEADER_LINE, b"RVBT2\n", 1)
    with pytest.raises(StreamFormatError, match=r"'RVBT2'.*'RVBT1'") as caught:
        list(decode([data]))
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, SourceError)


@pytest.mark.parametrize("start", [b"PGDMP\x01\x0e", b"\x1f\x8b\x08\x00", b"RVBT" + b"1" * 20])
def test_other_bytes_are_not_a_stream(start: bytes) -> None:
    with pytest.raises(StreamFormatError, match="not a regionvault Bigtable backup stream"):
        list(decode([start + b"\n" + b"x" * 100]))


def frames(*items: Record | bytes) -> list[bytes]:
    return [HEADER_LINE, *(item if isinstance(item, bytes) else encode(item) for item in items)]


TABLE = TableHeader("t", (Family("f", None),))
ROW_A = Row(b"a", (Cell("f", b"q", 1000, b"1"),))
ROW_B = Row(b"b", (Cell("f", b"q", 1000, b"2"),))


@pytest.mark.parametrize(("stream", "message"), [
    (frames(TABLE, TableEnd("t", 0), StreamEnd(1)), "does not begin with its stream record"),
    (frames(StreamHeader(0), ROW_A), "row outside a table"),
    (frames(StreamHeader(0), TABLE, ROW_A, TableEnd("t", 2)), "should hold 2 rows but holds 1"),
    (frames(StreamHeader(0), TABLE, ROW_B, ROW_A), "out of order"),
    (frames(StreamHeader(0), TABLE, ROW_A, ROW_A), "out of order"),
    (frames(StreamHeader(0), TABLE, Row(b"a", (Cell("g", b"q", 0, b""),))), "families .* \\(g\\)"),
    (frames(StreamHeader(0), TABLE, TableEnd("u", 0)), "not the open table"),
    (frames(StreamHeader(0), TABLE, StreamEnd(1)), "ends inside table 't'"),
    (frames(StreamHeader(0), TABLE, TableEnd("t", 0), TABLE), "appears twice"),
    (frames(StreamHeader(0), StreamEnd(3)), "should hold 3 tables but holds 0"),
    (frames(StreamHeader(0), StreamEnd(0), StreamEnd(0)), "data after its end record"),
    (frames(StreamHeader(0), StreamHeader(0)), "second stream record"),
    (frames(StreamHeader(0), b"Z\x00\x00\x00\x02{}"), "unknown record type"),
    (frames(StreamHeader(0), b"T\x00\x00\x00\x02[]"), "not a JSON object"),
    (frames(StreamHeader(0), b"T\x00\x00\x00\x0d{\"table\":\"t\"}"), "lacks a field"),
    (frames(StreamHeader(0), TABLE, b"R\x00\x00\x00\x04\x00\x00\x00\x09"), "shorter than"),
])
def test_a_malformed_stream_is_refused(stream: list[bytes], message: str) -> None:
    with pytest.raises(StreamFormatError, match=message):
        list(decode(stream))


def test_a_row_payload_longer_than_its_fields_is_refused() -> None:
    frame = encode(ROW_A)
    padded = b"R" + (len(frame) - 5 + 1).to_bytes(4, "big") + frame[5:] + b"\x00"
    with pytest.raises(StreamFormatError, match="longer than its fields"):
        list(decode(frames(StreamHeader(0), TABLE, padded)))


def test_gc_rules_round_trip_through_json() -> None:
    for family in FAMILIES:
        encoded = json.loads(json.dumps(gc_rule_to_json(family.gc_rule)))
        assert gc_rule_from_json(encoded) == family.gc_rule
    assert gc_rule_to_json(MaxAge(60, 5)) == {"max_age": {"seconds": 60, "nanos": 5}}


@pytest.mark.parametrize("value", [
    {"max_versions": "3"}, {"max_versions": True}, {"max_age": 60}, {"union": [None]},
    {"max_versions": 1, "max_age": {"seconds": 1}}, {"lifetime": 3}, [1],
])
def test_a_malformed_gc_rule_is_refused(value: object) -> None:
    with pytest.raises(StreamFormatError, match="GC rule"):
        gc_rule_from_json(value)


def test_values_never_appear_in_a_repr() -> None:
    cell = Cell("f", b"q", 0, b"secret-row-data")
    assert "secret-row-data" not in repr(cell)
    assert "secret-row-data" not in repr(Row(b"k", (cell,)))
