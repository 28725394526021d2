"""The source interface, with its contract.

This module imports no implementation: they import it (for ``DumpInfo``), and
``regionvault.sources.kinds`` imports them to open a configured source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class DumpInfo:
    """What a dump learned about its snapshot, recorded in the manifest."""

    #: Exact rows per table in the very snapshot that was dumped, named as the kind names its
    #: tables: postgres "schema.table" (every ordinary or partitioned table outside the system
    #: schemas, what ``SELECT count(*)`` returns there, partitions and inheritance children
    #: included), mysql "table" (the DSN names one database), bigtable the table id (rows,
    #: not cells). ``Source.row_counts`` counts a restored database the same way.
    row_counts: Mapping[str, int] = field(default_factory=dict)
    #: the server's version as it reports it ("15.19", "10.11.19-MariaDB", "bigtable"), and
    #: the dump program's ("pg_dump (PostgreSQL) 15.19"); empty when unknown
    server_version: str = ""
    tool_version: str = ""


class Source(Protocol):
    """A database that regionvault dumps and restores.

    Contract (every implementation MUST):

    - ``dump(write)`` streams one consistent snapshot of the database to ``write`` in pieces of
      bounded size (memory does not grow with the database) and returns, only once the dump
      program has succeeded, a ``DumpInfo`` about that same snapshot; on any failure it raises
      ``SourceError`` with a one-sentence message that contains no credentials. Output already
      written must then be discarded by the caller.
    - ``check_target(target_dsn, clean=..., dump=...)`` refuses, before anything is written, a
      target that already holds data (unless ``clean``) or that the backup described by
      ``dump`` (its manifest's versions) cannot be restored into (a server too old), with a
      ``SourceError``/``ConfigError`` sentence naming what to do.
    - ``row_counts(target_dsn)`` counts the rows of a database the way ``dump`` counted the
      snapshot (same table names, same rules), so a drill can compare the two.
    - ``restore(chunks, target_dsn, clean=...)`` feeds a dump made by ``dump`` into the target
      database, all or nothing where the engine allows it (a failure half-way leaves the target
      as it was); where it does not (MySQL's DDL commits implicitly, Bigtable has no
      transactions) the implementation says so in its docstring, and a failed restore leaves a
      target that a rerun with ``clean`` replaces. It raises ``SourceError`` if the restore
      fails, and never touches the source.
    - Failures are classified where the vendor error enters, once: ``TransientSourceError``
      only when the database could not be reached, was not accepting connections yet, or
      dropped the connection (the caller retries with backoff); plain ``SourceError`` for
      everything else, above all a wrong password, a missing role or database, a missing
      privilege or a dump program too old for the server (the caller fails at once). The
      message names the source or program and quotes the one line that says why, never a
      ``DETAIL`` line or quoted SQL (they can hold row data).
    - Credentials never appear in a process's argument list, a log line or an exception.
    """

    kind: str
    name: str

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo: ...

    def check_target(self, target_dsn: str, *, clean: bool = False,
                     dump: DumpInfo | None = None) -> None: ...

    def row_counts(self, target_dsn: str) -> dict[str, int]: ...

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        ...


class ScratchServer(Protocol):
    """A database server of one kind where drills and disaster recovery create the databases
    they restore into.

    Contract (every implementation MUST):

    - ``database_dsn(server_dsn, name)``: the DSN of database ``name`` on the server that
      ``server_dsn`` reaches, with the same credentials; no I/O.
    - ``create_database(server_dsn, name)``: create ``name`` empty; ``SourceError`` if it
      cannot (it exists, no privilege), in one sentence without credentials.
    - ``drop_database(server_dsn, name)``: drop ``name`` and everything in it; no error if it
      does not exist.
    - ``database_exists(server_dsn, name)``.
    - ``scalar(dsn, query)``: the first column of the first row of a read-only ``query`` on
      database ``dsn``, as text ("" when there is no row): a drill's check query.
    """

    def database_dsn(self, server_dsn: str, name: str) -> str: ...

    def create_database(self, server_dsn: str, name: str) -> None: ...

    def drop_database(self, server_dsn: str, name: str) -> None: ...

    def database_exists(self, server_dsn: str, name: str) -> bool: ...

    def scalar(self, dsn: str, query: str) -> str: ...
