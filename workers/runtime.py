"""Per-process state of a worker: the configuration and one DomainContext per domain."""

from __future__ import annotations

from functools import lru_cache

from regionvault.config import Config, load_config
from regionvault.context import DomainContext
from regionvault.domains import parse_domain


@lru_cache(maxsize=1)
def worker_config() -> Config:
    return load_config()


@lru_cache(maxsize=4)
def context_for(domain: str) -> DomainContext:
    return DomainContext(worker_config(), parse_domain(domain))
