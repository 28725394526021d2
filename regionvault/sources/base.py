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

    #: Exact rows per table ("schema.table") in the very snapshot that was dumped: for every
    #: ordinary or partitioned table outside the system schemas, what ``SELECT count(*)``
    #: returns there (a partitioned table or an inheritance parent includes the rows of its
    #: partitions or children). A restore drill counts the restored database the same way.
    row_counts: Mapping[str, int] = field(default_factory=dict)


class Source(Protocol):
    """A database that regionvault dumps and restores.

    Contract (every implementation MUST):

    - ``dump(write)`` streams one consistent snapshot of the database to ``write`` in pieces of
      bounded size (memory does not grow with the database) and returns, only once the dump
      program has succeeded, a ``DumpInfo`` about that same snapshot; on any failure it raises
      ``SourceError`` with a one-sentence message that contains no credentials. Output already
      written must then be discarded by the caller.
    - ``restore(chunks, target_dsn, clean=...)`` feeds a dump made by ``dump`` into the target
      database, all or nothing (a failure half-way leaves the target as it was), and raises
      ``SourceError`` if the restore program fails. It never touches the source.
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

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        ...
