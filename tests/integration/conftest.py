"""The real embedded stack, once per test session, on free ports.

Redis-protocol server, PostgreSQL, moto's S3 server and the GCS emulator as real processes,
and one real ``celery worker`` process per domain. Tests talk to them over sockets.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack

#: a pii source used only by the retention test, so its expiry cannot touch other tests' data
LEDGER = sample.SampleSource(
    name="ledger",
    data_class="pii",
    seed_sql="""
        CREATE TABLE entries (id serial PRIMARY KEY, customer text NOT NULL, cents int);
        INSERT INTO entries (customer, cents)
            SELECT 'customer-' || i || '@{domain}.example', i * 100
            FROM generate_series(1, 100) AS i;
    """,
)

#: a metadata source of the shared stack that the one-pass test fills with tens of MB;
#: nothing else reads it
BULK = sample.SampleSource(
    name="bulk",
    data_class="metadata",
    seed_sql="""
        CREATE TABLE readings (id bigint PRIMARY KEY, sensor text NOT NULL, note text);
        INSERT INTO readings SELECT i, 'sensor-{domain}-' || i, NULL
            FROM generate_series(1, 10) AS i;
    """,
)


@contextlib.contextmanager
def running_stack(prefix: str, **options: Any) -> Iterator[DevStack]:
    """A whole embedded stack in its own directory, stopped and removed afterwards.

    ``options`` go to ``DevStack`` (e.g. ``flower=True``, ``config_overrides={...}``)."""
    # Not under pytest's basetemp: every pytest session resets /tmp/pytest-of-<user> to 0700,
    # which would lock PostgreSQL's unprivileged user out of its data directory if another
    # pytest run starts while this stack is up.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    settings: dict[str, Any] = {"beat": False, "flower": False,
                                "sources": (*sample.SAMPLE_SOURCES, LEDGER), **options}
    dev = DevStack(data_dir=root, **settings)
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    """The stack most tests share; its environment is the test process's for the session."""
    with running_stack("rv-test-stack-",
                       sources=(*sample.SAMPLE_SOURCES, LEDGER, BULK)) as dev:
        saved = dict(os.environ)
        os.environ.update(dev.env)
        from regionvault.config import load_config
        from workers.app import app, configure

        configure(app, load_config())
        try:
            yield dev
        finally:
            os.environ.clear()
            os.environ.update(saved)
