"""Fixtures of the source conformance suite: one real server per kind, started once.

Each kind's kit module starts its own server on a free port (``kit_postgres``: a private
PostgreSQL cluster with password authentication; ``kit_mysql``: a private ``mariadbd``;
``kit_bigtable``: ``cbtemulator``). ``kit`` runs every test once per kind.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest

from tests.sources.kit_bigtable import bigtable_kit
from tests.sources.kit_mysql import mysql_kit
from tests.sources.kit_postgres import postgres_kit
from tests.sources.kits import SourceKit

KITS: dict[str, Callable[[Path], AbstractContextManager[SourceKit]]] = {
    "postgres": postgres_kit,
    "mysql": mysql_kit,
    "bigtable": bigtable_kit,
}


@pytest.fixture(scope="session")
def _kits() -> Iterator[dict[str, SourceKit]]:
    # started lazily, at most once per kind per session, stopped at its end. Each server's
    # directory is a plain temporary directory: PostgreSQL may run as another user (not
    # root), who must reach it, and pytest's own base directory is private to root.
    started: dict[str, SourceKit] = {}
    with ExitStack() as stack:

        class Lazy(dict[str, SourceKit]):
            def __missing__(self, kind: str) -> SourceKit:
                workdir = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(prefix=f"rv-kit-{kind}-")))
                kit = stack.enter_context(KITS[kind](workdir))
                self[kind] = kit
                return kit

        yield Lazy(started)


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest, _kits: dict[str, SourceKit]) -> SourceKit:
    return _kits[str(request.param)]
