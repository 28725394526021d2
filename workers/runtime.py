"""Per-process state of a worker: the configuration and one DomainContext per domain."""

from __future__ import annotations

from functools import lru_cache

from regionvault.config import Config, load_config
from regionvault.context import DomainContext, clock_for
from regionvault.domains import parse_domain
from regionvault.lease import RedisLeaseStore


@lru_cache(maxsize=1)
def worker_config() -> Config:
    return load_config()


@lru_cache(maxsize=4)
def context_for(domain: str) -> DomainContext:
    config = worker_config()
    return DomainContext(config, parse_domain(domain), clock=clock_for(config))


def leases() -> RedisLeaseStore:
    """The backup leases, in the result backend's Redis (where the journal lives)."""
    from workers.app import app

    return _leases_at(str(app.conf.result_backend))


@lru_cache(maxsize=4)
def _leases_at(url: str) -> RedisLeaseStore:
    return RedisLeaseStore.from_url(url)
