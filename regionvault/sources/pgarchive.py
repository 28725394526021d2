"""Rows per table, counted from a pg_dump custom-format archive while it streams past.

``pg_dump --format=custom --compress=0`` writes, in this order (PostgreSQL's
``src/bin/pg_dump/pg_backup_archiver.c`` ReadHead/ReadToc and ``pg_backup_custom.c``):

- a header: ``PGDMP``, major, minor and revision of the archive version, intSize, offSize, the
  format (1: custom), the compression (from 1.15 one byte naming the algorithm, before that an
  integer level), seven integers of creation time, and three strings (database name, server
  version, pg_dump version);
- the table of contents: an entry count, then per entry its dumpId, hadDumper, catalog ids,
  tag, desc, section, definition, drop and COPY statements, namespace, tablespace, table access
  method (from 1.14), relkind (from 1.16), owner, a "with oids" flag, a list of dependency ids
  ended by a NULL string, and the data offset (a flag byte and offSize bytes);
- one data block per entry with data: a type byte and the entry's dumpId, then for
  ``BLK_DATA`` chunks of ``<int length><bytes>`` ended by a zero length, and for ``BLK_BLOBS``
  large objects as ``<int oid>`` plus chunks, ended by a zero oid.

An integer is a sign byte and intSize bytes, least significant first; a string is an integer
length (negative: NULL) and that many bytes.

The data of a ``TABLE DATA`` entry is the output of ``COPY ... TO stdout`` in text format, where
every row ends with exactly one raw newline (newlines inside values are escaped), followed by
the ``\\.`` end marker pg_dump appends. So its rows are its newline bytes minus the three of
``\\.\\n\\n\\n``, counted with ``bytes.count`` on whole chunks, never byte by byte in Python.

Only the header and the table of contents are held in memory, never table data. Anything this
module does not know for certain (another archive version, compressed data, a malformed or
truncated stream) makes it stop and say why, in ``failure``: it never guesses a count.
"""

from __future__ import annotations

import codecs
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = b"PGDMP"
#: archive versions (major, minor) whose layout is known here: 1.14 is written by pg_dump 12
#: to 15, 1.15 by pg_dump 16, 1.16 by pg_dump 17 and 18. A newer one may add TOC fields.
SUPPORTED_VERSIONS = ((1, 14), (1, 15), (1, 16))
ARCHIVE_CUSTOM = 1
BLK_DATA = 1
BLK_BLOBS = 3
K_OFFSET_NO_DATA = 3
OFFSET_FLAGS = (1, 2, 3)  # position not set, position set, no data
#: what pg_dump writes after the last row of a table's COPY data
COPY_END = b"\\.\n\n\n"
COPY_END_NEWLINES = COPY_END.count(b"\n")
#: the longest string accepted in the header or TOC (a function body, say); beyond it the
#: stream is taken for garbage rather than buffered (a real one costs only the SQL count)
MAX_STRING = 64 * 1024 * 1024
MAX_TOC_ENTRIES = 100_000_000
#: an archive integer: a sign byte, then intSize bytes (C's int: 4, or 8 on an ILP64 machine)
_INT_FORMATS = {4: struct.Struct("<BI"), 8: struct.Struct("<BQ")}

_CLIENT_ENCODING = re.compile(r"client_encoding\s*=\s*'([^']+)'")
#: PostgreSQL encoding names Python's codec registry does not know under the same name
_PG_CODECS = {"SQL_ASCII": "ascii", "KOI8R": "koi8_r", "KOI8U": "koi8_u"}


@dataclass(frozen=True, order=True)
class TableName:
    """A table as PostgreSQL names it: schema and table, unquoted."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


class _NeedMore(Exception):
    """The buffered bytes end inside the field being read: wait for the next piece."""


class _Declined(Exception):
    """The stream is not an archive this module can count: the message says why."""


@dataclass(frozen=True)
class _Header:
    version: tuple[int, int]
    int_size: int
    off_size: int


@dataclass(frozen=True)
class _TocEntry:
    dump_id: int
    desc: str
    namespace: bytes | None
    tag: bytes | None
    has_data: bool
    #: held only while the entry is read: the TOC kept in memory stays small
    defn: bytes | None = None
    copy_stmt: bytes | None = None


class _Cursor:
    """Reads archive fields from the buffered header and TOC; raises ``_NeedMore`` at its end."""

    def __init__(self, data: bytearray, pos: int, int_size: int = 4, off_size: int = 8) -> None:
        self.data = data
        self.pos = pos
        self.int_size = int_size
        self.off_size = off_size

    def bytes_(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise _NeedMore
        value = bytes(self.data[self.pos:end])
        self.pos = end
        return value

    def byte(self) -> int:
        return self.bytes_(1)[0]

    def int_(self) -> int:
        field = self.bytes_(1 + self.int_size)
        magnitude = int.from_bytes(field[1:], "little")
        return -magnitude if field[0] else magnitude

    def str_(self) -> bytes | None:
        length = self.int_()
        if length < 0:
            return None
        if length > MAX_STRING:
            raise _Declined(f"a string of {length} bytes in the table of contents")
        return self.bytes_(length)

    def offset_flag(self) -> int:
        flag = self.byte()
        if flag not in OFFSET_FLAGS:
            raise _Declined(f"unknown data offset flag {flag} in the table of contents")
        self.bytes_(self.off_size)
        return flag


def _read_header(cur: _Cursor) -> _Header:
    if cur.bytes_(len(MAGIC)) != MAGIC:
        raise _Declined("the stream does not start with PGDMP: not a custom-format archive")
    major, minor, _revision = cur.byte(), cur.byte(), cur.byte()
    if (major, minor) not in SUPPORTED_VERSIONS:
        known = ", ".join(f"{a}.{b}" for a, b in SUPPORTED_VERSIONS)
        raise _Declined(f"archive version {major}.{minor} is not one this parser knows ({known})")
    cur.int_size, cur.off_size = cur.byte(), cur.byte()
    if cur.int_size not in _INT_FORMATS or cur.off_size not in (4, 8):
        raise _Declined(f"unexpected integer sizes {cur.int_size}/{cur.off_size} in the header")
    if (fmt := cur.byte()) != ARCHIVE_CUSTOM:
        raise _Declined(f"archive format {fmt} is not the custom format")
    # 1.15 replaced the compression level (an integer) by the algorithm (a byte); 0 is none
    compression = cur.byte() if minor >= 15 else cur.int_()
    if compression != 0:
        raise _Declined("the archive's data is compressed (pg_dump without --compress=0)")
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        cur.int_()
    for _ in range(3):  # database name, server version, pg_dump version
        cur.str_()
    return _Header(version=(major, minor), int_size=cur.int_size, off_size=cur.off_size)


def _read_toc_entry(cur: _Cursor, version: tuple[int, int]) -> _TocEntry:
    dump_id = cur.int_()
    if dump_id <= 0:
        raise _Declined(f"TOC entry id {dump_id} is out of range")
    cur.int_()  # hadDumper
    cur.str_()  # catalog id: table oid
    cur.str_()  # catalog id: oid
    tag = cur.str_()
    desc = cur.str_()
    cur.int_()  # section
    defn = cur.str_()
    cur.str_()  # drop statement
    copy_stmt = cur.str_()
    namespace = cur.str_()
    cur.str_()  # tablespace
    cur.str_()  # table access method (1.14 and later: all supported versions)
    if version >= (1, 16):
        cur.int_()  # relkind
    cur.str_()  # owner
    cur.str_()  # "with oids", always "false" since PostgreSQL 12
    while cur.str_() is not None:  # dependencies, ended by a NULL string
        pass
    has_data = cur.offset_flag() != K_OFFSET_NO_DATA
    return _TocEntry(dump_id=dump_id, desc=(desc or b"").decode("ascii", "replace"),
                     namespace=namespace, tag=tag, defn=defn, copy_stmt=copy_stmt,
                     has_data=has_data)


def _archive_int(int_format: struct.Struct, field: bytes, offset: int) -> int:
    sign, magnitude = int_format.unpack_from(field, offset)
    return -magnitude if sign else int(magnitude)


def _client_encoding(defn: bytes) -> str:
    """The Python codec of the names in the TOC, from the ENCODING entry's
    ``SET client_encoding = 'UTF8';``: pg_dump writes names in the database's encoding."""
    found = _CLIENT_ENCODING.search(defn.decode("ascii", "replace"))
    pg_encoding = found.group(1) if found else ""
    name = _PG_CODECS.get(pg_encoding)
    if name is None and pg_encoding.startswith("WIN"):
        name = "cp" + pg_encoding[3:]
    try:
        return codecs.lookup(name or pg_encoding).name
    except LookupError:
        raise _Declined(f"the archive's encoding entry is not understood: {defn[:80]!r}") from None


# states of the data part
_BLOCK, _CHUNK, _CHUNK_DATA, _BLOB_OID = range(4)


class ArchiveRowCounter:
    """Counts the rows of every ``TABLE DATA`` entry of a custom-format archive fed to it.

    Call ``feed`` with every piece of the stream, in order and of any size, then ``finish``
    at its end. ``rows_by_table()`` then gives the rows per table, or None if the archive could
    not be counted; ``failure`` says why. ``feed`` and ``finish`` never raise: a stream this
    parser does not understand must not fail the dump it watches.
    """

    def __init__(self) -> None:
        self.failure: str | None = None
        self._finished = False
        # header and TOC, until the first data block
        self._head: bytearray | None = bytearray()
        self._head_pos = 0
        self._header: _Header | None = None
        self._toc_left = -1
        self._entries: dict[int, _TocEntry] = {}
        self._encoding: str | None = None  # the ENCODING entry's, as a Python codec
        # data blocks
        self._state = _BLOCK
        self._carry = b""  # the start of a small field cut by the end of a piece
        self._pending: set[int] = set()  # dumpIds whose data block has not come yet
        self._block: _TocEntry | None = None
        self._in_blobs = False
        self._counting = False
        self._chunk_left = 0
        self._newlines = 0
        self._tail = b""  # the last bytes of the current block's last chunk
        self._rows: dict[int, int] = {}

    def feed(self, data: bytes) -> None:
        if self.failure is not None or not data:
            return
        if not isinstance(data, bytes):  # a memoryview or bytearray: bytes.count is needed
            data = bytes(data)
        if self._finished:
            self._fail("data was fed after the end of the stream")
            return
        try:
            if self._head is not None:
                data = self._feed_head(data)
            if data:
                self._feed_data(data)
        except _Declined as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug here must cost a second scan, never the backup
            self._fail(f"the parser failed: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        """The stream has ended: check that it ended where an archive may end."""
        if self.failure is not None or self._finished:
            return
        self._finished = True
        if self._head is not None:
            self._fail("the stream ended inside the archive's header or table of contents")
        elif self._state != _BLOCK or self._carry:
            self._fail("the stream ended inside a data block")
        elif self._pending:
            self._fail(f"the stream ended before the data of {len(self._pending)} TOC "
                       "entries")

    def rows_by_table(self) -> Mapping[TableName, int] | None:
        """Rows per table for every ``TABLE DATA`` entry; None unless the whole archive was
        read and understood (see ``failure``)."""
        if self.failure is not None:
            return None
        if not self._finished:
            self._fail("the end of the stream was not signalled (finish was not called)")
            return None
        try:
            return self._named_rows()
        except _Declined as exc:
            self._fail(str(exc))
        except UnicodeDecodeError as exc:
            self._fail(f"a table name in the archive is not valid {exc.encoding}")
        except Exception as exc:  # as in feed: fall back, never fail the dump
            self._fail(f"the parser failed: {type(exc).__name__}: {exc}")
        return None

    def counts(self) -> dict[str, int] | None:
        """``rows_by_table`` keyed by "schema.table"."""
        rows = self.rows_by_table()
        return None if rows is None else {str(name): n for name, n in sorted(rows.items())}

    # --- header and table of contents -------------------------------------------------------

    def _feed_head(self, data: bytes) -> bytes:
        """Buffer ``data`` and read as many whole TOC entries as it completes; return the
        bytes after the table of contents (the first data), if it ended in this piece."""
        assert self._head is not None
        self._head += data
        cur = _Cursor(self._head, self._head_pos)
        if self._header is not None:
            cur.int_size, cur.off_size = self._header.int_size, self._header.off_size
        try:
            if self._header is None:
                self._header = _read_header(cur)
                self._head_pos = cur.pos
            if self._toc_left < 0:
                self._toc_left = cur.int_()
                if not 0 <= self._toc_left <= MAX_TOC_ENTRIES:
                    raise _Declined(f"implausible TOC entry count {self._toc_left}")
                self._head_pos = cur.pos
            while self._toc_left > 0:
                self._add_entry(_read_toc_entry(cur, self._header.version))
                self._toc_left -= 1
                self._head_pos = cur.pos
        except _NeedMore:
            # keep only what is not read yet: the entry cut by the end of this piece
            del self._head[:self._head_pos]
            self._head_pos = 0
            return b""
        rest = bytes(self._head[self._head_pos:])
        self._head = None
        return rest

    def _add_entry(self, entry: _TocEntry) -> None:
        if entry.dump_id in self._entries:
            raise _Declined(f"TOC entry id {entry.dump_id} appears twice")
        if entry.desc == "TABLE DATA" and entry.has_data:
            statement = entry.copy_stmt or b""
            # pg_dump --inserts would write SQL statements, whose lines are not rows
            if not (statement.startswith(b"COPY ") and statement.endswith(b" FROM stdin;\n")):
                raise _Declined("table data is not in COPY text format")
        if entry.desc == "ENCODING":
            self._encoding = _client_encoding(entry.defn or b"")
        self._entries[entry.dump_id] = _TocEntry(entry.dump_id, entry.desc, entry.namespace,
                                                 entry.tag, entry.has_data)
        if entry.has_data:
            self._pending.add(entry.dump_id)

    # --- data blocks ------------------------------------------------------------------------

    def _feed_data(self, buf: bytes) -> None:
        assert self._header is not None
        int_format = _INT_FORMATS[self._header.int_size]
        pos, end = 0, len(buf)
        while pos < end:
            if self._state == _CHUNK:
                pos = self._chunks(buf, pos, int_format)
            elif self._state == _CHUNK_DATA:
                pos = self._chunk_data(buf, pos)
            elif self._state == _BLOCK:
                field, pos = self._take(buf, pos, 1 + int_format.size)
                if field is not None:
                    self._start_block(field[0], _archive_int(int_format, field, 1))
            else:  # _BLOB_OID
                field, pos = self._take(buf, pos, int_format.size)
                if field is not None:
                    oid = _archive_int(int_format, field, 0)
                    self._state = _CHUNK if oid != 0 else _BLOCK

    def _take(self, buf: bytes, pos: int, size: int) -> tuple[bytes | None, int]:
        """A small field of ``size`` bytes at ``pos``, completing one cut by the last piece;
        (None, end) when this piece ends inside it, which is then carried to the next."""
        need = size - len(self._carry)
        if len(buf) - pos < need:
            self._carry += buf[pos:]
            return None, len(buf)
        field = self._carry + buf[pos:pos + need]
        self._carry = b""
        return field, pos + need

    def _start_block(self, kind: int, dump_id: int) -> None:
        entry = self._entries.get(dump_id)
        if entry is None or dump_id not in self._pending:
            raise _Declined(f"a data block for TOC entry {dump_id}, which expects none (more)")
        if kind not in (BLK_DATA, BLK_BLOBS) or (kind == BLK_BLOBS) != (entry.desc == "BLOBS"):
            raise _Declined(f"data block type {kind} does not fit TOC entry {entry.desc!r}")
        self._pending.discard(dump_id)
        self._block = entry
        self._in_blobs = kind == BLK_BLOBS
        self._counting = entry.desc == "TABLE DATA"
        self._newlines = 0
        self._tail = b""
        self._state = _BLOB_OID if self._in_blobs else _CHUNK

    def _chunks(self, buf: bytes, pos: int, int_format: struct.Struct) -> int:
        """Whole chunks from ``pos`` on, as fast as Python allows: pg_dump writes one chunk per
        row, so this loop runs once per row and does nothing per byte."""
        size, unpack, count = int_format.size, int_format.unpack_from, buf.count
        end = len(buf)
        counting = self._counting
        newlines = 0
        last = (0, 0)  # where the last whole chunk lies in buf; copied only when needed
        while True:
            if self._carry or pos + size > end:  # a length cut by the end of a piece
                self._keep_tail(buf, last)
                last = (0, 0)
                field, pos = self._take(buf, pos, size)
                if field is None:
                    break
                sign, length = int_format.unpack(field)
            else:
                sign, length = unpack(buf, pos)
                pos += size
            if sign or length == 0:
                if sign:
                    raise _Declined("a negative chunk length in a data block")
                self._keep_tail(buf, last)
                self._newlines += newlines
                self._end_chunks()
                return pos
            stop = pos + length
            if stop > end:  # the chunk goes on in the next piece
                self._newlines += newlines
                self._chunk_left = stop - end
                self._state = _CHUNK_DATA
                self._tail = b""
                self._count(buf, pos, end)
                return end
            if counting:
                newlines += count(b"\n", pos, stop)
                last = (pos, stop)
            pos = stop
        self._newlines += newlines
        return end

    def _keep_tail(self, buf: bytes, chunk: tuple[int, int]) -> None:
        """Remember the end of the last whole chunk read from ``buf`` (if any)."""
        start, stop = chunk
        if stop:
            self._tail = buf[max(start, stop - len(COPY_END)):stop]

    def _chunk_data(self, buf: bytes, pos: int) -> int:
        """The rest of a chunk that began in an earlier piece."""
        stop = min(len(buf), pos + self._chunk_left)
        self._count(buf, pos, stop)
        self._chunk_left -= stop - pos
        if self._chunk_left == 0:
            self._state = _CHUNK
        return stop

    def _count(self, buf: bytes, start: int, stop: int) -> None:
        """Count a part of a chunk cut by the end of a piece, and keep the chunk's end."""
        if self._counting and stop > start:
            self._newlines += buf.count(b"\n", start, stop)
            self._tail = (self._tail + buf[max(start, stop - len(COPY_END)):stop])[
                -len(COPY_END):]

    def _end_chunks(self) -> None:
        """A zero length: the end of a large object's data, or of the block."""
        if self._in_blobs:
            self._state = _BLOB_OID
            return
        block = self._block
        assert block is not None
        if self._counting:
            # pg_dump writes the marker with one call, so as (the end of) one chunk
            if self._tail != COPY_END:
                raise _Declined(f"the COPY data of TOC entry {block.dump_id} does not end "
                                "with pg_dump's end marker")
            self._rows[block.dump_id] = self._newlines - COPY_END_NEWLINES
        self._block = None
        self._state = _BLOCK

    # --- result -----------------------------------------------------------------------------

    def _named_rows(self) -> dict[TableName, int]:
        if self._encoding is None:
            raise _Declined("the archive has no ENCODING entry")
        rows: dict[TableName, int] = {}
        for dump_id, count in self._rows.items():
            entry = self._entries[dump_id]
            if entry.namespace is None or entry.tag is None:
                raise _Declined(f"TABLE DATA entry {dump_id} names no schema or table")
            name = TableName(entry.namespace.decode(self._encoding),
                             entry.tag.decode(self._encoding))
            if name in rows:
                raise _Declined(f"two TABLE DATA entries for {name}")
            rows[name] = count
        return rows

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        # what was buffered is no longer needed
        self._head = None
        self._entries = {}
        self._rows = {}
