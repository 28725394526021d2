"""What the source conformance suite needs of each kind of source: a ``SourceKit``.

Each kind (postgres, mysql, bigtable) provides one kit over its own real server, started by a
session fixture on a free port (``tests/sources/conftest.py``). The suite
(``test_conformance.py``) is written once against this protocol and runs for every kit.
"""

from __future__ import annotations

from typing import Protocol

from regionvault.sources.base import Source


class SourceKit(Protocol):
    """A real server of one source kind, and what the suite needs to know about it.

    Contract:

    - ``kind`` is the configuration's ``kind`` ("postgres", "mysql", "bigtable").
    - ``seeded(canary)`` creates a NEW database (a new instance's tables for bigtable) holding
      a few tables of varied types, one of them containing ``canary`` in a row value, and
      returns its DSN. The data must include what the kind's format must carry exactly:
      NULLs, binary values, non-ASCII text, large values (> 1 MiB in one row), and for
      bigtable several cells per column with distinct timestamps, two column families with
      different GC rules.
    - ``expected_rows(dsn)`` the row counts the seeding created, as ``DumpInfo.row_counts``
      must report them (same table names).
    - ``empty_target()`` a DSN of a new, empty database (or instance) to restore into.
    - ``open(name, dsn)`` the ``Source`` for a DSN (the same class ``open_source`` builds).
    - ``checksums(dsn)`` per table, a digest of its whole content (schema and data; for
      bigtable every cell with its family, qualifier, timestamp and value, and the families'
      GC rules), computed by the kit itself (not by the code under test), such that two
      databases with the same content give equal digests.
    - ``unreachable_dsn()`` a DSN whose server does not listen (a free port);
      ``wrong_password_dsn(dsn)`` the same DSN with a wrong password, or None if the kind has
      no password (bigtable authenticates with Google credentials, not a DSN password).
    - ``password`` the password of the kit's DSNs (it must never appear in any process's
      argv, log or error), or None when the kind has none.
    - ``child_programs`` the names of the external programs the kind runs (``pg_dump``,
      ``mariadb-dump``, ...); empty when the kind runs none (bigtable: a client library).
    """

    kind: str
    password: str | None
    child_programs: tuple[str, ...]

    def seeded(self, canary: str) -> str: ...

    def expected_rows(self, dsn: str) -> dict[str, int]: ...

    def empty_target(self) -> str: ...

    def open(self, name: str, dsn: str) -> Source: ...

    def checksums(self, dsn: str) -> dict[str, str]: ...

    def unreachable_dsn(self) -> str: ...

    def wrong_password_dsn(self, dsn: str) -> str | None: ...
