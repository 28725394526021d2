"""The source interface, with its contract."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from regionvault.config import SourceConfig, read_source_dsn
from regionvault.domains import Domain


class Source(Protocol):
    """A database that regionvault dumps and restores.

    Contract (every implementation MUST):

    - ``dump(write)`` streams one consistent snapshot of the database to ``write`` in pieces of
      bounded size (memory does not grow with the database) and returns only once the dump
      program has succeeded; on any failure it raises ``SourceError`` with a one-sentence
      message that contains no credentials. Partial output already written must then be
      discarded by the caller.
    - ``restore(chunks, target_dsn)`` feeds a dump made by ``dump`` into the target database
      and raises ``SourceError`` if the restore program fails. It never touches the source.
    - Credentials never appear in a process's argument list, a log line or an exception.
    """

    kind: str
    name: str

    def dump(self, write: Callable[[bytes], object]) -> None: ...

    def restore(self, chunks: Iterable[bytes], target_dsn: str) -> None: ...


def open_source(domain: Domain, config: SourceConfig) -> Source:
    """The Source implementation for a configured source (its DSN is read here, lazily)."""
    if config.kind == "postgres":
        from regionvault.sources.postgres import PostgresSource

        return PostgresSource(name=config.name, dsn=read_source_dsn(config, domain))
    raise NotImplementedError(f"source kind {config.kind!r}")  # config validation prevents this
