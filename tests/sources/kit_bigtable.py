"""The bigtable ``SourceKit``: one ``cbtemulator`` (``regionvault.devstack.bigtable``), a new
instance per seeding (the emulator accepts any project and instance without creating them).

Seeding and checksums use the library's own high-level client (``google.cloud.bigtable``),
not ``regionvault.sources.bigtable``: what the kit checks is computed independently of the code
under test. That client finds the emulator only through ``BIGTABLE_EMULATOR_HOST``, so the kit
sets it around each use and restores it (tests only: one thread).

Entry point for ``tests/sources/conftest.py``: ``bigtable_kit(workdir)``, a context manager that
starts the emulator, yields a ``BigtableKit`` and stops the emulator.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.cloud import bigtable
from google.cloud.bigtable import column_family
from google.cloud.bigtable.table import Table

from regionvault.devstack.bigtable import BigtableService, start_bigtable
from regionvault.devstack.journeys import emulator_client
from regionvault.devstack.services import HOST, free_port
from regionvault.sources.base import Source
from regionvault.sources.bigtable import BigtableSource

PROJECT = "rv-test"
#: what ``seeded`` creates: rows per table
SEEDED_ROWS = {"events": 5, "profiles": 3}
#: the large value (> 1 MiB in one cell), deterministic so that two seedings compare equal
BIG_VALUE = random.Random(7).randbytes(1536 * 1024)


@contextmanager
def bigtable_kit(workdir: Path) -> Iterator[BigtableKit]:
    """Start ``cbtemulator`` in ``workdir``, yield a kit over it, stop it."""
    service = start_bigtable(workdir)
    try:
        yield BigtableKit(service)
    finally:
        service.stop()


def plain_client(service: BigtableService,
                 project: str = PROJECT) -> AbstractContextManager[bigtable.Client]:
    """The library's own client, pointed at the emulator for the duration of the block."""
    return emulator_client(service, project)


def instance_of(dsn: str) -> str:
    """The instance id of a kit DSN."""
    return dsn.split("?", 1)[0].rsplit("/", 1)[1]


class BigtableKit:
    kind = "bigtable"
    password = None
    child_programs: tuple[str, ...] = ()

    def __init__(self, service: BigtableService) -> None:
        self.service = service
        self._ids = itertools.count(1)

    def new_dsn(self, prefix: str) -> str:
        """The DSN of an instance nobody has used yet."""
        return self.service.dsn(PROJECT, f"{prefix}-{os.getpid()}-{next(self._ids)}")

    def seeded(self, canary: str) -> str:
        dsn = self.new_dsn("seeded")
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        with plain_client(self.service) as client:
            instance = client.instance(instance_of(dsn))
            events = instance.table("events")
            events.create(column_families={
                "hist": column_family.MaxVersionsGCRule(3),
                "recent": column_family.MaxAgeGCRule(timedelta(days=30)),
            })
            profiles = instance.table("profiles")
            profiles.create(column_families={
                "attrs": column_family.GCRuleUnion([
                    column_family.MaxVersionsGCRule(2),
                    column_family.MaxAgeGCRule(timedelta(days=7)),
                ]),
                "blob": column_family.GCRuleIntersection([
                    column_family.MaxVersionsGCRule(1),
                    column_family.MaxAgeGCRule(timedelta(hours=36)),
                ]),
                "plain": None,  # no GC rule: keep every cell
            })
            self._seed_events(events, now, canary)
            self._seed_profiles(profiles, now)
        return dsn

    @staticmethod
    def _seed_events(table: Table, now: datetime, canary: str) -> None:
        rows = []
        for n in range(SEEDED_ROWS["events"]):
            row = table.direct_row(f"evt#{n:04d}".encode())
            # several cells per column, each with its own timestamp (milliseconds apart)
            for version in range(3):
                row.set_cell("hist", b"state", f"state {n}.{version}".encode(),
                             timestamp=now + timedelta(milliseconds=version))
            row.set_cell("hist", b"bytes", bytes(range(256)) * (n + 1), timestamp=now)
            row.set_cell("recent", "ключ".encode(), f"значение {n} ✓".encode(),
                         timestamp=now - timedelta(seconds=n))
            if n == 2:
                row.set_cell("recent", b"note", f"note with {canary} inside".encode(),
                             timestamp=now)
            if n == 4:
                row.set_cell("recent", b"empty", b"", timestamp=now)  # Bigtable's "NULL"
            rows.append(row)
        _write(table, rows)

    @staticmethod
    def _seed_profiles(table: Table, now: datetime) -> None:
        key_binary = table.direct_row(b"acct\x00\xff\x01")
        key_binary.set_cell("attrs", b"\x00\xfe", b"\xff\x00binary", timestamp=now)
        key_binary.set_cell("attrs", b"\x00\xfe", b"older", timestamp=now - timedelta(hours=1))
        key_binary.set_cell("plain", b"q", b"v", timestamp=now - timedelta(days=400))
        unicode_key = table.direct_row("üser-1".encode())
        unicode_key.set_cell("attrs", "名前".encode(), "Zoë 😀".encode(), timestamp=now)
        unicode_key.set_cell("plain", b"q", b"kept 1", timestamp=now - timedelta(seconds=2))
        unicode_key.set_cell("plain", b"q", b"kept 2", timestamp=now - timedelta(seconds=1))
        big = table.direct_row(b"zz-big")
        big.set_cell("blob", b"payload", BIG_VALUE, timestamp=now)
        _write(table, [key_binary, unicode_key, big])

    def expected_rows(self, dsn: str) -> dict[str, int]:
        return dict(SEEDED_ROWS)

    def empty_target(self) -> str:
        return self.new_dsn("target")

    def open(self, name: str, dsn: str) -> Source:
        return BigtableSource(name, dsn)

    def checksums(self, dsn: str) -> dict[str, str]:
        """Per table: sha256 of its families' GC rules and of every cell (row key, family,
        qualifier, timestamp, value), each field length-prefixed, in a fixed order."""
        digests: dict[str, str] = {}
        with plain_client(self.service) as client:
            instance = client.instance(instance_of(dsn))
            for table in instance.list_tables():
                digest = hashlib.sha256()
                for name, family in sorted(table.list_column_families().items()):
                    rule = family.gc_rule
                    encoded = b"" if rule is None else type(rule.to_pb()).serialize(rule.to_pb())
                    _add(digest, name.encode(), encoded)
                for row in table.read_rows():
                    for family_name, columns in sorted(row.cells.items()):
                        for qualifier, cells in sorted(columns.items()):
                            for cell in sorted(cells, key=lambda c: -c.timestamp_micros):
                                _add(digest, row.row_key, family_name.encode(), qualifier,
                                     str(cell.timestamp_micros).encode(), cell.value)
                digests[table.table_id] = digest.hexdigest()
        return digests

    def unreachable_dsn(self) -> str:
        return f"bigtable://{PROJECT}/unreachable?emulator={HOST}:{free_port()}"

    def wrong_password_dsn(self, dsn: str) -> str | None:
        return None  # Bigtable authenticates with Google credentials, not a DSN password


def _write(table: Table, rows: list[bigtable.row.DirectRow]) -> None:
    statuses = table.mutate_rows(rows)
    failed = [status for status in statuses if status.code != 0]
    assert not failed, f"seeding failed: {failed}"


def _add(digest: hashlib._Hash, *fields: bytes) -> None:
    for value in fields:
        digest.update(len(value).to_bytes(8, "big"))
        digest.update(value)
