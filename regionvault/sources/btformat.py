"""The record format of a Bigtable backup stream ("RVBT1"): pure encode and decode, no I/O.

A Bigtable dump is not a file some vendor tool writes, so regionvault defines its own. It is
what the compressor and encryptor receive, so it only has to be exact, streamable and
self-checking; it is never read by anything but ``decode``.

Layout, version 1::

    b"RVBT1\\n"                       header line: magic "RVBT" + format version, then newline
    frame*                            records, each one frame:
        tag      1 byte               which record (below)
        length   4 bytes, big-endian  length of the payload
        payload  length bytes

    record  tag  payload
    ------  ---  -------------------------------------------------------------------------
    stream   S   JSON {"snapshot_micros": T}: every cell stamped at or before T (micros since
                 the epoch, a whole millisecond) is in the stream, none stamped after it
    table    T   JSON {"table": id, "families": [{"name": f, "gc_rule": RULE}, ...]}
    row      R   binary, below: one row with all of its cells (in the snapshot)
    finish   F   JSON {"table": id, "rows": n}: the table's end and how many rows it had
    end      E   JSON {"tables": n}: the stream's end and how many tables it held

    RULE is null (keep every cell) or one of {"max_versions": n},
    {"max_age": {"seconds": s, "nanos": n}}, {"intersection": [RULE, ...]},
    {"union": [RULE, ...]}: Bigtable's garbage-collection rules, exactly.

    row payload: u32 key length, key, u32 cell count, then per cell:
                 u16 family length, family (UTF-8), u32 qualifier length, qualifier,
                 i64 timestamp_micros, u32 value length, value   (all integers big-endian)

The grammar is ``S (T R* F)* E`` and nothing after ``E``. The decoder checks it all: a stream
that stops before its ``E`` record is truncated, a count that does not match what was read is
an error, a row must name a family its table declared, rows come in strictly increasing key
order (as Bigtable returns them). JSON objects may gain keys in later releases of the same
version (readers ignore keys they do not know); anything else changes the version, and a
reader refuses a version it does not know rather than guess.

Memory: the decoder holds at most one incomplete frame plus the piece it was just fed, so it
is bounded by the largest row (Bigtable caps a row at 256 MiB), never by the table.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from regionvault.errors import SourceError

MAGIC = b"RVBT"
VERSION = 1
HEADER_LINE = MAGIC + str(VERSION).encode() + b"\n"
#: a header line longer than this is not one of ours (guards against reading a whole
#: unrelated stream while looking for a newline)
_MAX_HEADER_LINE = 16

#: the size of the pieces ``StreamWriter`` hands to ``write`` (the last one may be shorter)
PIECE_SIZE = 1024 * 1024

_FRAME = struct.Struct(">cI")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


class StreamFormatError(SourceError):
    """Bytes that are not a complete, well-formed Bigtable backup stream of a known version."""


# --- garbage-collection rules -----------------------------------------------------------------


@dataclass(frozen=True)
class MaxVersions:
    """Keep at most ``count`` cells per column."""

    count: int


@dataclass(frozen=True)
class MaxAge:
    """Keep cells younger than this (a protobuf Duration, kept exactly)."""

    seconds: int
    nanos: int = 0


@dataclass(frozen=True)
class Intersection:
    """Delete a cell only if every rule would."""

    rules: tuple[GcRule, ...]


@dataclass(frozen=True)
class Union:
    """Delete a cell if any rule would."""

    rules: tuple[GcRule, ...]


GcRule = MaxVersions | MaxAge | Intersection | Union


def gc_rule_to_json(rule: GcRule | None) -> Any:
    if rule is None:
        return None
    if isinstance(rule, MaxVersions):
        return {"max_versions": rule.count}
    if isinstance(rule, MaxAge):
        return {"max_age": {"seconds": rule.seconds, "nanos": rule.nanos}}
    if isinstance(rule, Intersection):
        return {"intersection": [gc_rule_to_json(r) for r in rule.rules]}
    return {"union": [gc_rule_to_json(r) for r in rule.rules]}


def gc_rule_from_json(value: Any) -> GcRule | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise StreamFormatError("a column family's GC rule in the Bigtable backup stream is "
                                "malformed (it must be null or an object with one key)")
    (kind, body), = value.items()
    if kind == "max_versions" and _is_int(body):
        return MaxVersions(body)
    if (kind == "max_age" and isinstance(body, dict) and _is_int(body.get("seconds"))
            and _is_int(body.get("nanos", 0))):
        return MaxAge(body["seconds"], body.get("nanos", 0))
    if kind in ("intersection", "union") and isinstance(body, list):
        rules = tuple(_required_rule(item) for item in body)
        return Intersection(rules) if kind == "intersection" else Union(rules)
    raise StreamFormatError(f"a column family's GC rule in the Bigtable backup stream has an "
                            f"unknown or malformed kind {kind!r}")


def _required_rule(value: Any) -> GcRule:
    rule = gc_rule_from_json(value)
    if rule is None:
        raise StreamFormatError("a GC rule in the Bigtable backup stream combines a null rule")
    return rule


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A column family and its garbage-collection rule (None: keep every cell)."""

    name: str
    gc_rule: GcRule | None


@dataclass(frozen=True)
class Cell:
    family: str
    qualifier: bytes
    timestamp_micros: int
    #: row data: never shown in a repr (and so never in a log line or an assertion message)
    value: bytes = field(repr=False)


@dataclass(frozen=True)
class StreamHeader:
    #: the snapshot instant: cells stamped at or before it are in the stream
    snapshot_micros: int


@dataclass(frozen=True)
class TableHeader:
    table: str
    families: tuple[Family, ...]


@dataclass(frozen=True)
class Row:
    key: bytes
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class TableEnd:
    table: str
    rows: int


@dataclass(frozen=True)
class StreamEnd:
    tables: int


Record = StreamHeader | TableHeader | Row | TableEnd | StreamEnd


# --- encoding ---------------------------------------------------------------------------------


def encode(record: Record) -> bytes:
    """One record as a frame (tag, length, payload)."""
    if isinstance(record, Row):
        return _frame(b"R", _row_payload(record))
    if isinstance(record, StreamHeader):
        return _frame(b"S", _json({"snapshot_micros": record.snapshot_micros}))
    if isinstance(record, TableHeader):
        families = [{"name": f.name, "gc_rule": gc_rule_to_json(f.gc_rule)}
                    for f in record.families]
        return _frame(b"T", _json({"table": record.table, "families": families}))
    if isinstance(record, TableEnd):
        return _frame(b"F", _json({"table": record.table, "rows": record.rows}))
    return _frame(b"E", _json({"tables": record.tables}))


def _frame(tag: bytes, payload: bytes) -> bytes:
    return _FRAME.pack(tag, len(payload)) + payload


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _row_payload(row: Row) -> bytes:
    parts = [_U32.pack(len(row.key)), row.key, _U32.pack(len(row.cells))]
    for cell in row.cells:
        family = cell.family.encode()
        parts += [_U16.pack(len(family)), family,
                  _U32.pack(len(cell.qualifier)), cell.qualifier,
                  _I64.pack(cell.timestamp_micros),
                  _U32.pack(len(cell.value)), cell.value]
    return b"".join(parts)


class StreamWriter:
    """Writes one stream to ``write`` in pieces of ``piece_size`` bytes (the last may be
    shorter), keeping the grammar: ``begin_table``, ``row``..., ``end_table``, then ``finish``.

    The rows of each table are counted here, so the ``F`` record always says what was written.
    """

    def __init__(self, write: Callable[[bytes], object], *, snapshot_micros: int,
                 piece_size: int = PIECE_SIZE) -> None:
        self._write = write
        self._piece_size = piece_size
        self._buffer = bytearray(HEADER_LINE)
        self._table: str | None = None
        self._rows = 0
        self._tables = 0
        self._finished = False
        self._append(StreamHeader(snapshot_micros))

    def begin_table(self, header: TableHeader) -> None:
        if self._table is not None or self._finished:
            raise RuntimeError("begin_table while a table is open or after finish")
        self._table = header.table
        self._rows = 0
        self._append(header)

    def row(self, row: Row) -> None:
        if self._table is None:
            raise RuntimeError("row outside a table")
        self._rows += 1
        self._append(row)

    def end_table(self) -> int:
        """Close the open table; return how many rows it had."""
        if self._table is None:
            raise RuntimeError("end_table without begin_table")
        rows = self._rows
        self._append(TableEnd(self._table, rows))
        self._table = None
        self._tables += 1
        return rows

    def finish(self) -> None:
        """Write the end record and everything still buffered."""
        if self._table is not None:
            raise RuntimeError("finish while a table is open")
        self._append(StreamEnd(self._tables))
        self._finished = True
        if self._buffer:
            self._write(bytes(self._buffer))
            self._buffer.clear()

    def _append(self, record: Record) -> None:
        self._buffer += encode(record)
        while len(self._buffer) >= self._piece_size:
            self._write(bytes(self._buffer[: self._piece_size]))
            del self._buffer[: self._piece_size]


# --- decoding ---------------------------------------------------------------------------------


class StreamDecoder:
    """Decodes a stream fed in pieces of any size; checks its grammar and counts as it goes.

    ``feed`` returns the records that the piece completed; ``finish`` raises
    ``StreamFormatError`` unless the stream ended exactly after its end record.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header_seen = False
        self._stream_started = False
        self._ended = False
        self._tables: set[str] = set()
        self._table: TableHeader | None = None
        self._families: frozenset[str] = frozenset()
        self._rows = 0
        self._last_key: bytes | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole record (for memory checks)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Record]:
        if self._ended and data:
            raise StreamFormatError("the Bigtable backup stream has data after its end record")
        self._buffer += data
        records: list[Record] = []
        if not self._header_seen and not self._read_header_line():
            return records
        while len(self._buffer) >= _FRAME.size:
            tag, length = _FRAME.unpack_from(self._buffer)
            end = _FRAME.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_FRAME.size:end])
            del self._buffer[:end]
            records.append(self._check(self._parse(tag, payload)))
            if self._ended and self._buffer:
                raise StreamFormatError(
                    "the Bigtable backup stream has data after its end record")
        return records

    def finish(self) -> None:
        if not self._ended:
            raise StreamFormatError("the Bigtable backup stream is truncated: it stops before "
                                    "its end record")

    def _read_header_line(self) -> bool:
        newline = self._buffer.find(b"\n", 0, _MAX_HEADER_LINE)
        if newline < 0:
            if len(self._buffer) >= _MAX_HEADER_LINE or not HEADER_LINE.startswith(
                    bytes(self._buffer[: len(MAGIC)])):
                raise StreamFormatError("this is not a regionvault Bigtable backup stream (it "
                                        "does not start with RVBT)")
            return False
        line = bytes(self._buffer[: newline + 1])
        if not line.startswith(MAGIC):
            raise StreamFormatError("this is not a regionvault Bigtable backup stream (it does "
                                    "not start with RVBT)")
        if line != HEADER_LINE:
            found = line[:-1].decode("ascii", errors="replace")
            raise StreamFormatError(
                f"the Bigtable backup stream has format version {found!r}, which this "
                f"regionvault cannot read (it reads {HEADER_LINE[:-1].decode()!r}); restore "
                "it with the regionvault release that made it or a newer one")
        del self._buffer[: newline + 1]
        self._header_seen = True
        return True

    def _parse(self, tag: bytes, payload: bytes) -> Record:
        if tag == b"R":
            return _parse_row(payload)
        body = _parse_json(payload, tag)
        try:
            if tag == b"S":
                return StreamHeader(_int(body["snapshot_micros"]))
            if tag == b"T":
                families = tuple(Family(_str(f["name"]), gc_rule_from_json(f["gc_rule"]))
                                 for f in body["families"])
                return TableHeader(_str(body["table"]), families)
            if tag == b"F":
                return TableEnd(_str(body["table"]), _int(body["rows"]))
            if tag == b"E":
                return StreamEnd(_int(body["tables"]))
        except (KeyError, TypeError) as exc:
            raise StreamFormatError(f"a {tag.decode(errors='replace')!r} record of the Bigtable "
                                    f"backup stream lacks a field or has a wrong type ({exc!r})"
                                    ) from None
        raise StreamFormatError(f"the Bigtable backup stream holds an unknown record type "
                                f"{tag!r}")

    def _check(self, record: Record) -> Record:
        """Enforce ``S (T R* F)* E`` and the counts; track only names, counts and a key."""
        if not self._stream_started:
            if not isinstance(record, StreamHeader):
                raise StreamFormatError("the Bigtable backup stream does not begin with its "
                                        "stream record")
            self._stream_started = True
            return record
        if isinstance(record, StreamHeader):
            raise StreamFormatError("the Bigtable backup stream has a second stream record")
        if isinstance(record, TableHeader):
            if self._table is not None:
                raise StreamFormatError(f"table {record.table!r} begins before table "
                                        f"{self._table.table!r} of the Bigtable backup stream "
                                        "ended")
            if record.table in self._tables:
                raise StreamFormatError(f"table {record.table!r} appears twice in the Bigtable "
                                        "backup stream")
            self._table, self._rows, self._last_key = record, 0, None
            self._families = frozenset(f.name for f in record.families)
            self._tables.add(record.table)
        elif isinstance(record, Row):
            if self._table is None:
                raise StreamFormatError("the Bigtable backup stream has a row outside a table")
            if self._last_key is not None and record.key <= self._last_key:
                raise StreamFormatError(f"rows of table {self._table.table!r} in the Bigtable "
                                        "backup stream are out of order")
            unknown = {c.family for c in record.cells} - self._families
            if unknown:
                raise StreamFormatError(
                    f"a row of table {self._table.table!r} in the Bigtable backup stream names "
                    f"column families its table does not declare ({', '.join(sorted(unknown))})")
            self._rows += 1
            self._last_key = record.key
        elif isinstance(record, TableEnd):
            if self._table is None or record.table != self._table.table:
                raise StreamFormatError(f"the Bigtable backup stream ends table "
                                        f"{record.table!r}, which is not the open table")
            if record.rows != self._rows:
                raise StreamFormatError(f"table {record.table!r} of the Bigtable backup stream "
                                        f"should hold {record.rows} rows but holds {self._rows}")
            self._table = None
        else:
            if self._table is not None:
                raise StreamFormatError(f"the Bigtable backup stream ends inside table "
                                        f"{self._table.table!r}")
            if record.tables != len(self._tables):
                raise StreamFormatError(f"the Bigtable backup stream should hold "
                                        f"{record.tables} tables but holds {len(self._tables)}")
            self._ended = True
        return record


def decode(chunks: Iterable[bytes]) -> Iterator[Record]:
    """The records of a whole stream, checked; raises ``StreamFormatError`` on a bad or
    truncated stream (after yielding the records before the fault)."""
    decoder = StreamDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.finish()


def _parse_json(payload: bytes, tag: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise StreamFormatError(f"a {tag.decode(errors='replace')!r} record of the Bigtable "
                                "backup stream is not a JSON object")
    return body


def _int(value: Any) -> int:
    if not _is_int(value):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return int(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


class _Reader:
    """Reads the fields of a row payload, refusing to read past its end."""

    def __init__(self, payload: bytes) -> None:
        self._view = memoryview(payload)
        self._at = 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._view):
            raise StreamFormatError("a row record of the Bigtable backup stream is shorter than "
                                    "its fields say")
        data = bytes(self._view[self._at:self._at + n])
        self._at += n
        return data

    def unpack(self, fmt: struct.Struct) -> int:
        value: int = fmt.unpack(self.take(fmt.size))[0]
        return value

    def done(self) -> bool:
        return self._at == len(self._view)


def _parse_row(payload: bytes) -> Row:
    reader = _Reader(payload)
    key = reader.take(reader.unpack(_U32))
    count = reader.unpack(_U32)
    cells: list[Cell] = []
    for _ in range(count):
        family_bytes = reader.take(reader.unpack(_U16))
        qualifier = reader.take(reader.unpack(_U32))
        timestamp = reader.unpack(_I64)
        value = reader.take(reader.unpack(_U32))
        try:
            family = family_bytes.decode()
        except UnicodeDecodeError:
            raise StreamFormatError("a row record of the Bigtable backup stream has a family "
                                    "name that is not UTF-8") from None
        cells.append(Cell(family, qualifier, timestamp, value))
    if not reader.done():
        raise StreamFormatError("a row record of the Bigtable backup stream is longer than its "
                                "fields say")
    return Row(key, tuple(cells))
