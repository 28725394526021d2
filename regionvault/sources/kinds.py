"""The kinds of source regionvault backs up, and how to open a configured one."""

from __future__ import annotations

from regionvault.config import SourceConfig, read_source_dsn
from regionvault.domains import Domain
from regionvault.sources.base import Source
from regionvault.sources.postgres import PostgresSource


def open_source(domain: Domain, config: SourceConfig) -> Source:
    """The Source implementation for a configured source (its DSN is read here, lazily)."""
    if config.kind == "postgres":
        return PostgresSource(name=config.name, dsn=read_source_dsn(config, domain))
    raise NotImplementedError(f"source kind {config.kind!r}")  # config validation prevents this
