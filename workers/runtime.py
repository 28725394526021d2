"""Per-process state of a worker: the domain it serves, the configuration and one
DomainContext per domain."""

from __future__ import annotations

import os
from functools import lru_cache

from regionvault.config import Config, load_config
from regionvault.context import DomainContext, clock_for
from regionvault.domains import Domain, parse_domain


def worker_domain() -> Domain | None:
    """The domain this process serves (``REGIONVAULT_DOMAIN``: a domain's worker, its beat or
    its Flower, which connect to that domain's broker), or None (the CLI, a shared beat or
    Flower, tests)."""
    value = os.environ.get("REGIONVAULT_DOMAIN")
    return parse_domain(value) if value else None


def serves(requested: object) -> bool:
    """Whether this process may run a task naming domain ``requested``: any process that is
    not a domain worker may (CLI, tests); a domain worker only its own domain's tasks."""
    served = worker_domain()
    return served is None or requested == served.value


@lru_cache(maxsize=1)
def worker_config() -> Config:
    return load_config()


@lru_cache(maxsize=4)
def context_for(domain: str) -> DomainContext:
    config = worker_config()
    return DomainContext(config, parse_domain(domain), clock=clock_for(config))
