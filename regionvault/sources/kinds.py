"""The kinds of source regionvault backs up, and how to open a configured one."""

from __future__ import annotations

from regionvault.config import SourceConfig, read_source_dsn
from regionvault.domains import Domain
from regionvault.errors import ConfigError
from regionvault.sources.base import Source

KINDS = ("postgres", "mysql", "bigtable")


def _build(kind: str, name: str, dsn: str | None, tables: tuple[str, ...] = ()) -> Source:
    # imported here: a worker loads only the client library of the kinds it dumps
    if kind == "postgres":
        from regionvault.sources.postgres import PostgresSource

        return PostgresSource(name=name, dsn=dsn)
    if kind == "mysql":
        from regionvault.sources.mysql import MySQLSource

        return MySQLSource(name=name, dsn=dsn)
    if kind == "bigtable":
        from regionvault.sources.bigtable import BigtableSource

        return BigtableSource(name=name, dsn=dsn, tables=tables)
    raise ConfigError(f"source kind {kind!r} is unknown (kinds: {', '.join(KINDS)})")


def open_source(domain: Domain, config: SourceConfig) -> Source:
    """The Source implementation for a configured source (its DSN is read here, lazily)."""
    return _build(config.kind, config.name, read_source_dsn(config, domain), config.tables)


def restorer_for(kind: str, name: str) -> Source:
    """A Source of ``kind`` for the restore side only (``check_target``, ``row_counts``,
    ``restore`` into a target DSN): it is given no DSN of the source, so it cannot read or
    touch the source, and a machine that restores needs no secret of it."""
    return _build(kind, name, None)
