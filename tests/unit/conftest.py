"""Unit tests see no REGIONVAULT_* variables from the process (an integration stack may have
set them for the session), so configuration tests read only what they set themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from regionvault.devstack.services import start_redis


@pytest.fixture(autouse=True)
def _no_regionvault_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REGIONVAULT_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Redis-protocol server for the unit tests that need one (journal, leases, ledgers);
    each test flushes what it uses."""
    server = start_redis(Path(tmp_path_factory.mktemp("redis")))
    try:
        yield server.url
    finally:
        server.stop()
