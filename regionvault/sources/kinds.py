"""The kinds of source regionvault backs up, and how to open a configured one."""

from __future__ import annotations

from typing import get_args

from regionvault.config import SourceConfig, SourceKind, read_source_dsn
from regionvault.domains import Domain
from regionvault.errors import ConfigError
from regionvault.sources.base import ScratchServer, Source

#: every kind the configuration accepts, in its order
KINDS: tuple[str, ...] = get_args(SourceKind)


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
    """The Source implementation for a configured source (its DSN is read here, lazily).
    While tracing is on its calls are spans (``sources.traced``)."""
    from regionvault.sources.traced import traced_source

    return traced_source(
        _build(config.kind, config.name, read_source_dsn(config, domain), config.tables))


def restorer_for(kind: str, name: str) -> Source:
    """A Source of ``kind`` for the restore side only (``check_target``, ``row_counts``,
    ``restore`` into a target DSN): it is given no DSN of the source, so it cannot read or
    touch the source, and a machine that restores needs no secret of it. While tracing is
    on its calls are spans (``sources.traced``)."""
    from regionvault.sources.traced import traced_source

    return traced_source(_build(kind, name, None))


def scratch_server_for(kind: str) -> ScratchServer:
    """The ``ScratchServer`` of ``kind``, where drills and disaster recovery create the
    databases they restore into."""
    if kind == "postgres":
        from regionvault.sources.postgres import PostgresServer

        return PostgresServer()
    if kind == "mysql":
        from regionvault.sources.mysql import MySQLServer

        return MySQLServer()
    # A Bigtable instance has tables, not databases that a drill could create and drop; a
    # drill of its own would need an instance per run, which is slow and costly to create
    raise ConfigError(
        f"{kind} sources have no database to create for a drill or a disaster recovery "
        "run: restore them with 'regionvault restore --target' into an instance you name")


def kind_of_dsn(dsn: str) -> str:
    """The source kind a server DSN speaks: ``mysql://``/``mariadb://``, ``bigtable://``;
    anything else is a PostgreSQL DSN (a URL or libpq's ``key=value`` form)."""
    scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else ""
    if scheme in ("mysql", "mariadb"):
        return "mysql"
    if scheme == "bigtable":
        return "bigtable"
    return "postgres"
