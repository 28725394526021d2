"""Bigtable sources (the Autopilot Journeys data): a dump is every cell of the configured tables,
with their column families and GC rules, in regionvault's own record format (``btformat``).

DSN: ``bigtable://PROJECT/INSTANCE``, and for development and tests
``bigtable://PROJECT/INSTANCE?emulator=HOST:PORT`` (``cbtemulator``). In production the worker
authenticates with Google application default credentials; a Bigtable DSN holds no secret.

The clients are the library's generated (gapic) Bigtable and table-admin clients, each given
its gRPC channel explicitly: a plaintext channel to the emulator, the default TLS channel with
application default credentials otherwise. The library's higher-level clients find an emulator
only through the process-wide ``BIGTABLE_EMULATOR_HOST`` variable (read lazily, at the first
data call), which two sources of one worker could not use at once; an explicit channel needs
no global state.

What a dump is, and what Bigtable cannot give
---------------------------------------------
Bigtable has no snapshots and no transactions across rows. A dump takes the instant T at which
it starts (the worker's clock, in whole milliseconds, as Bigtable stamps cells) and reads every
table with a timestamp-range filter that keeps only cells stamped at or before T. So a cell
written after T with a server-assigned or current timestamp is never in the dump, even if the
scan reaches its row later. That is as far as consistency goes:

- a cell deleted (or garbage-collected) after T, before the scan reaches it, is missing from
  the dump, although it existed at T: deletions leave no trace to filter on;
- a cell written after T with an explicit timestamp at or before T is in the dump: the filter
  sees a cell's timestamp, not when it was written;
- each row is read atomically, but there is no transaction across rows or tables;
- server-assigned timestamps come from Bigtable's clocks, T from the worker's: clock skew
  moves the cut by that much;
- only column families and their GC rules are backed up, not other table settings
  (deletion protection, change streams, replication, authorized views); aggregate (typed)
  column families are refused, since their cells cannot be written back as they were read.

A dump holds one row in memory at a time (Bigtable returns a row whole) and writes the stream
in pieces of ``btformat.PIECE_SIZE``; a table is never held in memory.

Failures are classified once, here: ``TransientSourceError`` when Bigtable could not be reached,
timed out or dropped the connection (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED); ``SourceError``
for everything else (a missing table or instance, a permission, a bad argument). Messages name
the source, the instance and the cause; they never quote row keys or values, and for the data
calls not even the server's message, only its status code.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import google.auth.exceptions
import grpc
from google.api_core import exceptions as api_exceptions
from google.cloud.bigtable_admin_v2 import BaseBigtableTableAdminClient
from google.cloud.bigtable_admin_v2 import types as admin_types
from google.cloud.bigtable_admin_v2.services.bigtable_table_admin.transports import (
    BigtableTableAdminGrpcTransport,
)
from google.cloud.bigtable_v2 import BigtableClient
from google.cloud.bigtable_v2 import types as data_types
from google.cloud.bigtable_v2.services.bigtable.transports import BigtableGrpcTransport
from google.protobuf import duration_pb2
from google.rpc import code_pb2

from regionvault.errors import ConfigError, SourceError, TransientSourceError
from regionvault.sources import btformat
from regionvault.sources.base import DumpInfo
from regionvault.sources.btformat import (
    Cell,
    Family,
    GcRule,
    Intersection,
    MaxAge,
    MaxVersions,
    Row,
    StreamWriter,
    TableEnd,
    TableHeader,
    Union,
)

log = logging.getLogger(__name__)

#: the first call of every operation: an address where nothing answers fails within this
CONNECT_TIMEOUT = 10.0
#: admin calls that change a table (create, drop rows, modify families)
ADMIN_TIMEOUT = 120.0
#: one MutateRows request of at most ``MAX_REQUEST_BYTES``
MUTATE_TIMEOUT = 60.0
#: the bounded retry of row writes whose entries failed with a retryable status
MUTATE_ATTEMPTS = 5
MUTATE_BACKOFF = 0.2  # seconds before the 2nd attempt, doubled after each, at most 5 s
#: one MutateRows request: Bigtable allows 100,000 mutations and 256 MB; stay well below
MAX_REQUEST_MUTATIONS = 50_000
MAX_REQUEST_BYTES = 16 * 1024 * 1024

#: A scan of a large table has no overall deadline (it may take hours); a dead connection is
#: noticed by gRPC keepalive pings instead, within about 40 s (the library's own settings).
_KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)
#: a row may be far larger than gRPC's default 4 MiB message limit
_EMULATOR_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    *_KEEPALIVE_OPTIONS,
)

#: Bigtable's own list of per-entry statuses worth writing again
_RETRYABLE_CODES = frozenset({code_pb2.UNAVAILABLE, code_pb2.DEADLINE_EXCEEDED, code_pb2.ABORTED})
_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.Aborted,
    google.auth.exceptions.TransportError,  # could not reach the token endpoint
)
_VENDOR_ERRORS: tuple[type[Exception], ...] = (
    api_exceptions.GoogleAPIError,
    google.auth.exceptions.GoogleAuthError,
    grpc.RpcError,
)
CAUSE_LIMIT = 300

#: Bigtable's table ids: letters, digits, '_', '-', '.', at most 50, not starting with - or .
_TABLE_ID = re.compile(r"[_a-zA-Z0-9][-_.a-zA-Z0-9]{0,49}")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,99}")
_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")
_DSN_SHAPE = ("a Bigtable DSN must look like bigtable://PROJECT/INSTANCE, optionally with "
              "?emulator=HOST:PORT")


# --- the DSN ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BigtableDsn:
    project: str
    instance: str
    #: "HOST:PORT" of an emulator, or None for Cloud Bigtable
    emulator: str | None = None

    @property
    def label(self) -> str:
        """How messages name the instance: "project/instance"."""
        return f"{self.project}/{self.instance}"

    @property
    def instance_path(self) -> str:
        return f"projects/{self.project}/instances/{self.instance}"

    def table_path(self, table: str) -> str:
        return f"{self.instance_path}/tables/{table}"


def parse_dsn(dsn: str) -> BigtableDsn:
    """The parts of a Bigtable DSN; ``ConfigError`` (never quoting it) if it is malformed."""
    try:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True,
                                       strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"{_DSN_SHAPE} (its value is not shown)") from None
    instance = parts.path[1:] if parts.path.startswith("/") else ""
    if (parts.scheme != "bigtable" or parts.fragment or not _PROJECT.fullmatch(parts.netloc)
            or not _INSTANCE.fullmatch(instance)):
        raise ConfigError(f"{_DSN_SHAPE} (its value is not shown)")
    emulator: str | None = None
    for key, value in query:
        if key != "emulator" or emulator is not None:
            raise ConfigError("a Bigtable DSN takes one query parameter, emulator=HOST:PORT, and "
                              "nothing else (its value is not shown)")
        port = _HOST_PORT.fullmatch(value)
        if port is None or not 0 < int(port.group(1)) < 65536:
            raise ConfigError("the emulator of a Bigtable DSN must be HOST:PORT (its value is "
                              "not shown)")
        emulator = value
    return BigtableDsn(parts.netloc, instance, emulator)


# --- GC rules: Bigtable's protobuf <-> the stream's records ------------------------------------


def gc_rule_from_pb(rule: Any) -> GcRule | None:
    """A raw ``google.bigtable.admin.v2.GcRule`` as a record (None: no rule, keep all)."""
    kind = rule.WhichOneof("rule")
    if kind is None:
        return None
    if kind == "max_num_versions":
        return MaxVersions(int(rule.max_num_versions))
    if kind == "max_age":
        return MaxAge(int(rule.max_age.seconds), int(rule.max_age.nanos))
    if kind in ("intersection", "union"):
        members = getattr(rule, kind).rules
        rules = tuple(r for r in (gc_rule_from_pb(m) for m in members) if r is not None)
        if len(rules) != len(members):
            raise ValueError(f"a GC {kind} holds an empty rule")
        return Intersection(rules) if kind == "intersection" else Union(rules)
    raise ValueError(f"unknown GC rule kind {kind!r}")


def gc_rule_to_pb(rule: GcRule | None) -> admin_types.GcRule:
    if rule is None:
        return admin_types.GcRule()
    if isinstance(rule, MaxVersions):
        return admin_types.GcRule(max_num_versions=rule.count)
    if isinstance(rule, MaxAge):
        return admin_types.GcRule(
            max_age=duration_pb2.Duration(seconds=rule.seconds, nanos=rule.nanos))
    members = [gc_rule_to_pb(r) for r in rule.rules]
    if isinstance(rule, Intersection):
        return admin_types.GcRule(intersection=admin_types.GcRule.Intersection(rules=members))
    return admin_types.GcRule(union=admin_types.GcRule.Union(rules=members))


# --- ReadRows: cell chunks -> rows --------------------------------------------------------------


class InvalidChunks(Exception):
    """The ReadRows stream broke Bigtable's chunk protocol (a server or library bug)."""


class RowAssembler:
    """Builds whole rows from ReadRows cell chunks (raw ``ReadRowsResponse.CellChunk``s).

    The protocol: a row's first chunk carries its key, and a cell's first chunk its family
    (when it changes) and qualifier; later chunks may repeat them (the emulator does) or omit
    them (Cloud Bigtable does). A value may be split over chunks (``value_size`` > 0 on all but
    its last); ``reset_row`` discards the row so far; ``commit_row`` ends the row.
    """

    def __init__(self) -> None:
        self._last_key: bytes | None = None
        self._start_row()

    def _start_row(self) -> None:
        self._key: bytes | None = None
        self._cells: list[Cell] = []
        self._family: str | None = None
        self._qualifier: bytes | None = None
        self._timestamp = 0
        self._value: list[bytes] = []
        self._split = False  # inside a cell whose value continues in the next chunk

    def feed(self, chunk: Any) -> Row | None:
        """The row this chunk completed, if it did."""
        if chunk.reset_row:
            if self._key is None or chunk.row_key or chunk.HasField("family_name") or \
                    chunk.HasField("qualifier") or chunk.value or chunk.commit_row:
                raise InvalidChunks("a reset_row chunk outside a row or carrying data")
            self._start_row()
            return None
        if self._key is None:
            if not chunk.row_key:
                raise InvalidChunks("a row begins without a row key")
            if self._last_key is not None and chunk.row_key <= self._last_key:
                raise InvalidChunks("rows arrive out of order")
            self._key = bytes(chunk.row_key)
        elif chunk.row_key and chunk.row_key != self._key:
            raise InvalidChunks("a row's chunk names another row key")
        if self._split:
            if chunk.HasField("family_name") or chunk.HasField("qualifier"):
                raise InvalidChunks("a split value's continuation starts a new cell")
        else:
            if chunk.HasField("family_name"):
                self._family = chunk.family_name.value
                if not chunk.HasField("qualifier"):
                    raise InvalidChunks("a new column family without a qualifier")
            if chunk.HasField("qualifier"):
                self._qualifier = bytes(chunk.qualifier.value)
            if self._family is None or self._qualifier is None:
                raise InvalidChunks("a cell without a family or qualifier")
            self._timestamp = int(chunk.timestamp_micros)
        self._value.append(bytes(chunk.value))
        self._split = chunk.value_size > 0
        if not self._split:
            self._cells.append(Cell(self._family or "", self._qualifier or b"", self._timestamp,
                                    b"".join(self._value)))
            self._value = []
        if not chunk.commit_row:
            return None
        if self._split:
            raise InvalidChunks("a row commits inside a split value")
        row = Row(self._key, tuple(self._cells))
        self._last_key = self._key
        self._start_row()
        return row

    def finish(self) -> None:
        if self._key is not None:
            raise InvalidChunks("the stream ends inside a row")


# --- the instance: clients and vendor errors ----------------------------------------------------


def keepalive_channel(host: str, **kwargs: Any) -> grpc.Channel:
    """Cloud Bigtable's default TLS channel (credentials, scopes, the transport's options:
    no message size limit) with keepalive pings; the transport calls it to make its channel."""
    options = [*kwargs.pop("options", ()), *_KEEPALIVE_OPTIONS]
    channel: grpc.Channel = BigtableGrpcTransport.create_channel(host, options=options, **kwargs)
    return channel


#: One MutateRows call: the seam where tests inject per-entry failures (see ``BigtableSource``).
MutateRows = Callable[[BigtableClient, data_types.MutateRowsRequest],
                      Iterable[data_types.MutateRowsResponse]]


def send_mutate_rows(data: BigtableClient, request: data_types.MutateRowsRequest
                     ) -> Iterable[data_types.MutateRowsResponse]:
    """The real MutateRows call, once: retries are the caller's, per failed entry."""
    return data.mutate_rows(request=request, timeout=MUTATE_TIMEOUT, retry=None)


class Instance:
    """The admin and data clients for one Bigtable instance, as one source sees it.

    Every call has a deadline (but row scans, see ``_KEEPALIVE_OPTIONS``) and no retry of its
    own, and every vendor error is translated here into a one-sentence ``SourceError``.
    """

    def __init__(self, source: str, dsn: BigtableDsn) -> None:
        self.source = source
        self.dsn = dsn
        self._channel: grpc.Channel | None = None
        try:
            if dsn.emulator is not None:
                self._channel = grpc.insecure_channel(dsn.emulator,
                                                      options=_EMULATOR_CHANNEL_OPTIONS)
                self.admin = BaseBigtableTableAdminClient(
                    transport=BigtableTableAdminGrpcTransport(channel=self._channel))
                self.data = BigtableClient(transport=BigtableGrpcTransport(channel=self._channel))
            else:
                self.admin = BaseBigtableTableAdminClient()
                self.data = BigtableClient(
                    transport=BigtableGrpcTransport(channel=keepalive_channel))
        except google.auth.exceptions.GoogleAuthError as exc:
            raise SourceError(
                f"source {source!r}: no usable Google credentials for Bigtable instance "
                f"{dsn.label!r} ({_cause(exc)}); give this worker application default "
                "credentials") from None

    @property
    def server_version(self) -> str:
        return "bigtable" if self.dsn.emulator is None else "bigtable emulator"

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        else:
            self.admin.transport.close()
            self.data.transport.close()

    def failure(self, exc: Exception, doing: str, *, table: str | None = None,
                quote: bool = True) -> SourceError:
        """The project's error for a vendor error met while ``doing`` something."""
        if isinstance(exc, grpc.RpcError) and not isinstance(exc, api_exceptions.GoogleAPIError):
            # the generated clients wrap gRPC errors; should a bare one slip through, classify
            # it by its status code all the same
            exc = api_exceptions.from_grpc_error(exc)
        where = f"Bigtable instance {self.dsn.label!r}"
        if isinstance(exc, api_exceptions.NotFound):
            if table is not None:
                return SourceError(f"source {self.source!r}: Bigtable table {table!r} does not "
                                   f"exist in instance {self.dsn.label!r}")
            return SourceError(f"source {self.source!r}: {where} does not exist or this worker "
                               f"cannot see it ({_cause(exc, quote)})")
        if isinstance(exc, _TRANSIENT_ERRORS):
            return TransientSourceError(f"source {self.source!r}: {where} could not be reached "
                                        f"or dropped the connection while {doing} "
                                        f"({_cause(exc, quote)})")
        if isinstance(exc, api_exceptions.PermissionDenied | api_exceptions.Unauthenticated):
            return SourceError(f"source {self.source!r}: {where} refused {doing} "
                               f"({_cause(exc, quote)}); grant this worker's service account "
                               "access to it")
        return SourceError(f"source {self.source!r}: {doing} failed in {where} "
                           f"({_cause(exc, quote)})")

    # -- admin --

    def table_ids(self) -> list[str]:
        """Every table of the instance, sorted (also the first call of an operation)."""
        request = admin_types.ListTablesRequest(parent=self.dsn.instance_path,
                                                view=admin_types.Table.View.NAME_ONLY)
        try:
            pages = self.admin.list_tables(request=request, timeout=CONNECT_TIMEOUT, retry=None)
            return sorted(table.name.rsplit("/", 1)[-1] for table in pages)
        except _VENDOR_ERRORS as exc:
            raise self.failure(exc, "listing its tables") from None

    def families(self, table: str) -> dict[str, Family] | None:
        """The table's column families by name, or None if the table does not exist."""
        request = admin_types.GetTableRequest(name=self.dsn.table_path(table),
                                              view=admin_types.Table.View.SCHEMA_VIEW)
        try:
            found = self.admin.get_table(request=request, timeout=CONNECT_TIMEOUT, retry=None)
        except api_exceptions.NotFound:
            return None
        except _VENDOR_ERRORS as exc:
            raise self.failure(exc, f"reading the schema of table {table!r}",
                               table=table) from None
        families: dict[str, Family] = {}
        for name, family in sorted(found.column_families.items()):
            raw = admin_types.ColumnFamily.pb(family)
            if raw.HasField("value_type"):
                raise SourceError(
                    f"source {self.source!r}: Bigtable table {table!r} has an aggregate column "
                    f"family {name!r}, which regionvault cannot back up")
            try:
                families[name] = Family(name, gc_rule_from_pb(raw.gc_rule))
            except ValueError as exc:
                raise SourceError(
                    f"source {self.source!r}: the GC rule of column family {name!r} of "
                    f"Bigtable table {table!r} cannot be backed up ({exc})") from None
        return families

    def create_table(self, table: str, families: Sequence[Family]) -> None:
        column_families = {f.name: admin_types.ColumnFamily(gc_rule=gc_rule_to_pb(f.gc_rule))
                           for f in families}
        try:
            self.admin.create_table(
                parent=self.dsn.instance_path, table_id=table,
                table=admin_types.Table(column_families=column_families),
                timeout=ADMIN_TIMEOUT, retry=None)
        except _VENDOR_ERRORS as exc:
            raise self.failure(exc, f"creating table {table!r}") from None

    def set_families(self, table: str, families: Sequence[Family]) -> None:
        """Make the table's column families exactly ``families`` (GC rules included)."""
        current = self.families(table)
        if current is None:
            raise SourceError(f"source {self.source!r}: Bigtable table {table!r} does not exist "
                              f"in instance {self.dsn.label!r}")
        Modification = admin_types.ModifyColumnFamiliesRequest.Modification
        changes: list[Any] = []
        for family in families:
            column_family = admin_types.ColumnFamily(gc_rule=gc_rule_to_pb(family.gc_rule))
            if family.name not in current:
                changes.append(Modification(id=family.name, create=column_family))
            elif current[family.name].gc_rule != family.gc_rule:
                changes.append(Modification(id=family.name, update=column_family))
        wanted = {f.name for f in families}
        changes += [Modification(id=name, drop=True) for name in current if name not in wanted]
        if not changes:
            return
        try:
            self.admin.modify_column_families(name=self.dsn.table_path(table),
                                              modifications=changes, timeout=ADMIN_TIMEOUT,
                                              retry=None)
        except _VENDOR_ERRORS as exc:
            raise self.failure(exc, f"changing the column families of table {table!r}",
                               table=table) from None

    def drop_all_rows(self, table: str) -> None:
        request = admin_types.DropRowRangeRequest(name=self.dsn.table_path(table),
                                                  delete_all_data_from_table=True)
        try:
            self.admin.drop_row_range(request=request, timeout=ADMIN_TIMEOUT, retry=None)
        except _VENDOR_ERRORS as exc:
            raise self.failure(exc, f"dropping the rows of table {table!r}", table=table) from None

    # -- data --

    def read_rows(self, table: str, row_filter: data_types.RowFilter, *, rows_limit: int = 0,
                  timeout: float | None = None) -> Iterator[Row]:
        """The rows of a whole table in key order, each with the cells the filter keeps."""
        request = data_types.ReadRowsRequest(table_name=self.dsn.table_path(table),
                                             filter=row_filter, rows_limit=rows_limit)
        assembler = RowAssembler()
        try:
            for response in self.data.read_rows(request=request, timeout=timeout, retry=None):
                for chunk in data_types.ReadRowsResponse.pb(response).chunks:
                    row = assembler.feed(chunk)
                    if row is not None:
                        yield row
            assembler.finish()
        except InvalidChunks as exc:
            raise SourceError(f"source {self.source!r}: Bigtable sent a malformed ReadRows "
                              f"stream for table {table!r} ({exc})") from None
        except _VENDOR_ERRORS as exc:
            raise self.failure(exc, f"reading table {table!r}", table=table,
                               quote=False) from None

    def holds_data(self, table: str) -> bool:
        """Whether the table has at least one cell (reads one row, without its values)."""
        rows = self.read_rows(table, _chain(_ONE_CELL, _STRIP_VALUES), rows_limit=1,
                              timeout=CONNECT_TIMEOUT)
        return next(rows, None) is not None

    def count_rows(self, table: str, until_micros: int) -> int:
        """Rows with at least one cell stamped before ``until_micros`` (values not read)."""
        row_filter = _chain(_stamped_before(until_micros), _ONE_CELL, _STRIP_VALUES)
        return sum(1 for _ in self.read_rows(table, row_filter))

    def mutate(self, send: MutateRows, table: str, request: data_types.MutateRowsRequest
               ) -> dict[int, int]:
        """Send one MutateRows request; the status code of each entry Bigtable reported on.

        If the call fails in a way worth retrying, the entries not reported yet are simply
        missing from the result (the caller retries them); any other failure raises.
        """
        codes: dict[int, int] = {}
        try:
            for response in send(self.data, request):
                for entry in response.entries:
                    codes[int(entry.index)] = int(entry.status.code)
        except _TRANSIENT_ERRORS as exc:
            log.info("source %r: MutateRows for table %r failed (%s); %d of %d entries will "
                     "be retried", self.source, table, _cause(exc, quote=False),
                     len(request.entries) - len(codes), len(request.entries))
        except _VENDOR_ERRORS as exc:
            raise self.failure(exc, f"writing rows to table {table!r}", table=table,
                               quote=False) from None
        return codes


def _cause(exc: BaseException, quote: bool = True) -> str:
    """The status code, with the first line of the message when ``quote`` (admin calls only:
    a data call's message might quote a row key)."""
    code = getattr(exc, "grpc_status_code", None)
    name = code.name if isinstance(code, grpc.StatusCode) else type(exc).__name__
    if not quote:
        return name
    text = str(getattr(exc, "message", None) or exc).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > CAUSE_LIMIT:
        line = line[:CAUSE_LIMIT] + "..."
    return f"{name}: {line}" if line else name


def _chain(*filters: data_types.RowFilter) -> data_types.RowFilter:
    return data_types.RowFilter(chain=data_types.RowFilter.Chain(filters=list(filters)))


def _stamped_before(until_micros: int) -> data_types.RowFilter:
    """Cells with a timestamp before ``until_micros`` (Bigtable's end is exclusive)."""
    return data_types.RowFilter(
        timestamp_range_filter=data_types.TimestampRange(end_timestamp_micros=until_micros))


_ONE_CELL = data_types.RowFilter(cells_per_row_limit_filter=1)
_STRIP_VALUES = data_types.RowFilter(strip_value_transformer=True)


def snapshot_micros(now_ns: int | None = None) -> int:
    """The dump's instant T: now, in whole milliseconds (Bigtable's timestamp granularity),
    as microseconds. Cells stamped in that millisecond count as before T."""
    now = time.time_ns() if now_ns is None else now_ns
    return now // 1_000_000 * 1000


def _tool_version() -> str:
    try:
        return f"google-cloud-bigtable {importlib.metadata.version('google-cloud-bigtable')}"
    except importlib.metadata.PackageNotFoundError:
        return "google-cloud-bigtable"


# --- the source -------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Row mutations waiting to be sent in one MutateRows request."""

    entries: list[data_types.MutateRowsRequest.Entry]
    mutations: int = 0
    size: int = 0

    def fits(self, mutations: int, size: int) -> bool:
        return not self.entries or (self.mutations + mutations <= MAX_REQUEST_MUTATIONS
                                    and self.size + size <= MAX_REQUEST_BYTES)

    def add(self, entry: data_types.MutateRowsRequest.Entry, mutations: int, size: int) -> None:
        self.entries.append(entry)
        self.mutations += mutations
        self.size += size

    def take(self) -> list[data_types.MutateRowsRequest.Entry]:
        entries = self.entries
        self.entries, self.mutations, self.size = [], 0, 0
        return entries


def _row_entries(row: Row) -> Iterator[tuple[data_types.MutateRowsRequest.Entry, int, int]]:
    """(entry, mutations, bytes) for a row: one entry, or several for a row with more cells
    than one request may carry. SetCell with an explicit timestamp is idempotent, so an entry
    can be sent again safely."""
    SetCell = data_types.Mutation.SetCell
    for start in range(0, len(row.cells), MAX_REQUEST_MUTATIONS):
        cells = row.cells[start:start + MAX_REQUEST_MUTATIONS]
        mutations = [data_types.Mutation(set_cell=SetCell(
            family_name=c.family, column_qualifier=c.qualifier,
            timestamp_micros=c.timestamp_micros, value=c.value)) for c in cells]
        size = len(row.key) + sum(len(c.family) + len(c.qualifier) + len(c.value) + 16
                                  for c in cells)
        yield (data_types.MutateRowsRequest.Entry(row_key=row.key, mutations=mutations),
               len(cells), size)


class BigtableSource:
    """The tables of one Bigtable instance (``tables``; empty: every table it has).

    ``mutate_rows`` is the one MutateRows call a restore makes for each batch (default
    ``send_mutate_rows``); tests wrap it to make chosen entries fail.
    """

    kind = "bigtable"

    def __init__(self, name: str, dsn: str | None, tables: tuple[str, ...] = (), *,
                 mutate_rows: MutateRows = send_mutate_rows) -> None:
        self.name = name
        # None: opened for the restore side only (``kinds.restorer_for``), which never reads
        # the source
        self._dsn = parse_dsn(dsn) if dsn is not None else None
        for table in tables:
            if not _TABLE_ID.fullmatch(table):
                raise ConfigError(f"source {name!r}: {table!r} is not a Bigtable table id "
                                  "(letters, digits, '_', '-' and '.', at most 50)")
        self._tables = tuple(tables)
        self._mutate_rows = mutate_rows

    def __repr__(self) -> str:
        instance = self._dsn.label if self._dsn is not None else None
        return f"BigtableSource(name={self.name!r}, instance={instance!r})"

    @contextmanager
    def _instance(self, dsn: BigtableDsn) -> Iterator[Instance]:
        instance = Instance(self.name, dsn)
        try:
            yield instance
        finally:
            instance.close()

    def _selected_tables(self, instance: Instance) -> list[str]:
        """The configured tables, else every table of the instance (one call: it also proves
        the instance answers, within ``CONNECT_TIMEOUT``)."""
        existing = instance.table_ids()
        return list(self._tables) if self._tables else existing

    def _table_header(self, instance: Instance, table: str) -> TableHeader:
        families = instance.families(table)
        if families is None:
            raise SourceError(f"source {self.name!r}: Bigtable table {table!r} does not exist in "
                              f"instance {instance.dsn.label!r}")
        return TableHeader(table, tuple(families.values()))

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        # T is taken before anything is read: a cell stamped after it is never dumped, however
        # late the scan reaches its row (see the module docstring for what that cannot cover).
        if self._dsn is None:
            raise ConfigError(f"source {self.name!r} was opened to restore only and has no DSN "
                              "to dump from")
        snapshot = snapshot_micros()
        with self._instance(self._dsn) as instance:
            tables = self._selected_tables(instance)
            # Every schema before the first byte: a missing table fails before any output.
            headers = [self._table_header(instance, table) for table in tables]
            if not headers:
                log.warning("source %r: Bigtable instance %r has no tables; the backup is empty",
                            self.name, instance.dsn.label)
            writer = StreamWriter(write, snapshot_micros=snapshot)
            counts: dict[str, int] = {}
            for header in headers:
                declared = {family.name for family in header.families}
                writer.begin_table(header)
                for row in instance.read_rows(header.table, _stamped_before(snapshot + 1000)):
                    if any(cell.family not in declared for cell in row.cells):
                        raise TransientSourceError(
                            f"source {self.name!r}: a column family was added to Bigtable table "
                            f"{header.table!r} during the dump; dump it again")
                    writer.row(row)
                counts[header.table] = writer.end_table()
                log.info("source %r: dumped Bigtable table %r (%d rows)", self.name,
                         header.table, counts[header.table])
            writer.finish()
            server_version = instance.server_version
        return DumpInfo(row_counts=counts, server_version=server_version,
                        tool_version=_tool_version())

    def row_counts(self, target_dsn: str) -> dict[str, int]:
        """Rows per table, as ``dump`` counts them: rows with at least one cell stamped at or
        before now (a dump: at or before its instant T), for the tables ``dump`` would read."""
        until = snapshot_micros() + 1000
        with self._instance(parse_dsn(target_dsn)) as instance:
            return {table: instance.count_rows(table, until)
                    for table in self._selected_tables(instance)}

    def check_target(self, target_dsn: str, *, clean: bool = False,
                     dump: DumpInfo | None = None) -> None:
        """Refuse a target instance where a table the backup holds already has data, unless
        ``clean``. The backup's tables are ``dump.row_counts``' keys when ``dump`` is given,
        else the configured tables, else (not knowing) every table of the target. Checks
        only: nothing is written."""
        target = parse_dsn(target_dsn)
        with self._instance(target) as instance:
            existing = instance.table_ids()
            if clean:
                return
            wanted = list(dump.row_counts) if dump is not None else list(self._tables) or existing
            for table in wanted:
                if table in existing and instance.holds_data(table):
                    raise self._occupied(table, target)

    def _occupied(self, table: str, target: BigtableDsn) -> SourceError:
        return SourceError(f"source {self.name!r}: Bigtable table {table!r} in instance "
                           f"{target.label!r} already holds data; restore into an empty "
                           "instance or pass --clean to replace it")

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        """Write a dump back: each table's families and GC rules, then its cells, with their
        timestamps, in MutateRows batches.

        Not transactional: Bigtable has no transactions, so a restore that fails half-way (or a
        stream found truncated at its end) leaves the tables written so far in the target.
        Running it again with ``clean`` replaces them. With ``clean``, every table of the
        backup that exists in the target loses all its rows and gets exactly the backup's
        families; tables of the target that the backup does not hold are left alone. Without
        it, a table of the backup that exists and holds data is refused (``check_target``
        says so before anything is written).
        """
        target = parse_dsn(target_dsn)
        with self._instance(target) as instance:
            existing = set(instance.table_ids())
            table: str | None = None
            batch = _Batch(entries=[])
            try:
                for record in btformat.decode(chunks):
                    if isinstance(record, TableHeader):
                        self._prepare_table(instance, record, exists=record.table in existing,
                                            clean=clean)
                        table = record.table
                    elif isinstance(record, Row) and table is not None:
                        for entry, mutations, size in _row_entries(record):
                            if not batch.fits(mutations, size):
                                self._write_batch(instance, table, batch.take())
                            batch.add(entry, mutations, size)
                    elif isinstance(record, TableEnd) and table is not None:
                        if batch.entries:
                            self._write_batch(instance, table, batch.take())
                        log.info("source %r: restored Bigtable table %r (%d rows) into %r",
                                 self.name, table, record.rows, target.label)
                        table = None
            except btformat.StreamFormatError as exc:
                raise SourceError(
                    f"the backup of source {self.name!r} cannot be restored into Bigtable "
                    f"instance {target.label!r} ({exc}); what was written before this point "
                    "stays, so restore it again with --clean") from None

    def _prepare_table(self, instance: Instance, header: TableHeader, *, exists: bool,
                       clean: bool) -> None:
        if not exists:
            instance.create_table(header.table, header.families)
            return
        if clean:
            instance.drop_all_rows(header.table)
        elif instance.holds_data(header.table):
            raise self._occupied(header.table, instance.dsn)
        instance.set_families(header.table, header.families)

    def _write_batch(self, instance: Instance, table: str,
                     entries: list[data_types.MutateRowsRequest.Entry]) -> None:
        """Send a batch; send again only the entries that failed with a retryable status,
        up to ``MUTATE_ATTEMPTS`` times with exponential backoff.

        The one retry below the step's own (style: retry at one level): MutateRows reports
        each entry on its own and a few UNAVAILABLE entries in a large restore are routine,
        while a failed restore can only be run again whole, with ``--clean``. Sending an entry
        again is harmless: every SetCell carries its explicit timestamp."""
        pending = list(range(len(entries)))
        for attempt in range(1, MUTATE_ATTEMPTS + 1):
            request = data_types.MutateRowsRequest(
                table_name=instance.dsn.table_path(table), entries=[entries[i] for i in pending])
            codes = instance.mutate(self._mutate_rows, table, request)
            failed: list[int] = []
            for position, index in enumerate(pending):
                code = codes.get(position)  # None: not reported before a transient failure
                if code == code_pb2.OK:
                    continue
                if code is not None and code not in _RETRYABLE_CODES:
                    raise SourceError(
                        f"source {self.name!r}: Bigtable refused to write a row of table "
                        f"{table!r} in instance {instance.dsn.label!r} "
                        f"({code_pb2.Code.Name(code)})")
                failed.append(index)
            if not failed:
                return
            if attempt == MUTATE_ATTEMPTS:
                raise TransientSourceError(
                    f"source {self.name!r}: Bigtable still failed {len(failed)} row write(s) to "
                    f"table {table!r} in instance {instance.dsn.label!r} after {attempt} "
                    "attempts; the restore is incomplete, run it again with --clean")
            log.info("source %r: %d of %d row write(s) to Bigtable table %r failed with a "
                     "retryable status; retrying them (attempt %d of %d)", self.name,
                     len(failed), len(pending), table, attempt + 1, MUTATE_ATTEMPTS)
            time.sleep(min(MUTATE_BACKOFF * 2 ** (attempt - 1), 5.0))
            pending = failed

