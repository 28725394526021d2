"""The source interface, with its contract."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from regionvault.config import SourceConfig, read_source_dsn
from regionvault.domains import Domain


@dataclass(frozen=True)
class DumpInfo:
    """What a dump learned about its snapshot, recorded in the manifest."""

    #: exact rows per table ("schema.table") in the very snapshot that was dumped
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


def open_source(domain: Domain, config: SourceConfig) -> Source:
    """The Source implementation for a configured source (its DSN is read here, lazily)."""
    if config.kind == "postgres":
        from regionvault.sources.postgres import PostgresSource

        return PostgresSource(name=config.name, dsn=read_source_dsn(config, domain))
    raise NotImplementedError(f"source kind {config.kind!r}")  # config validation prevents this
