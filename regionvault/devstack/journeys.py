"""The Autopilot Journeys sample of the embedded stack.

Accounts unified from Autopilot Journeys keep their data with Rackspace (managed MySQL or
MariaDB) and in Google Cloud Bigtable. The stack gives the au domain one source of each: a
MariaDB database and a Bigtable instance (``cbtemulator``), whose backups go to Rackspace
Cloud Files in Sydney (the Swift store, primary) and to GCS (replica), as a platform team
would place them. ``fingerprint_mysql`` and ``fingerprint_bigtable`` read a database with the
vendors' own clients, so that the demo compares a restored copy with its source independently
of the code that backed it up.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from regionvault.devstack.bigtable import BigtableService
from regionvault.devstack.mariadb import MariaDBService, quote_identifier
from regionvault.domains import Domain

DOMAIN = Domain.AU
MYSQL_SOURCE = "journeys-accounts"
BIGTABLE_SOURCE = "journeys-events"
BIGTABLE_PROJECT = "rv-dev"
BIGTABLE_TABLES = ("events", "profiles")
#: the Cloud Files region and container of the au domain (Sydney)
SWIFT_REGION = "SYD"
CONTAINER = "rv-dev-au-journeys"

_MYSQL_SEED = (
    """CREATE TABLE accounts (id INT PRIMARY KEY AUTO_INCREMENT, email VARCHAR(190) NOT NULL
       UNIQUE, name VARCHAR(190), created DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))
       ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE journey_steps (id INT PRIMARY KEY AUTO_INCREMENT, account_id INT NOT NULL,
       step VARCHAR(64) NOT NULL, payload BLOB, FOREIGN KEY (account_id) REFERENCES accounts(id))
       ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """INSERT INTO accounts (email, name)
       SELECT CONCAT('journeys', seq, '@example.au'), CONCAT('Journeys customer ', seq)
       FROM seq_1_to_300""",
    """INSERT INTO journey_steps (account_id, step, payload)
       SELECT 1 + seq MOD 300, CONCAT('step-', seq MOD 7), UNHEX(SHA2(seq, 256))
       FROM seq_1_to_1200""",
)


def seed_mysql(server: MariaDBService, database: str, user: str, password: str) -> str:
    """Create ``database`` with the sample tables and a user of its own; return its DSN."""
    server.create_database(database)
    for statement in _MYSQL_SEED:  # seq_1_to_N: MariaDB's sequence engine
        server.execute(statement, database=database)
    server.create_user(user, password)
    server.grant_database(user, database)
    return server.dsn(user, password, database)


@contextmanager
def emulator_client(service: BigtableService,
                    project: str = BIGTABLE_PROJECT) -> Iterator[Any]:
    """The library's own high-level client on the emulator (it finds one only through
    ``BIGTABLE_EMULATOR_HOST``: set for the block and put back, so one thread only)."""
    from google.cloud import bigtable

    previous = os.environ.get("BIGTABLE_EMULATOR_HOST")
    os.environ["BIGTABLE_EMULATOR_HOST"] = service.emulator_host
    try:
        with warnings.catch_warnings():
            # the data client announces the emulator with a RuntimeWarning, which the test
            # suite's filterwarnings would turn into an error
            warnings.filterwarnings("ignore", message="Connecting to Bigtable emulator",
                                    category=RuntimeWarning)
            client = bigtable.Client(project=project, admin=True)
            try:
                yield client
            finally:
                client.close()
    finally:
        if previous is None:
            os.environ.pop("BIGTABLE_EMULATOR_HOST", None)
        else:
            os.environ["BIGTABLE_EMULATOR_HOST"] = previous


def seed_bigtable(service: BigtableService, instance_id: str) -> str:
    """Create the sample tables in ``instance_id`` (the emulator makes instances on use);
    return the instance's DSN."""
    from google.cloud.bigtable import column_family

    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    with emulator_client(service) as client:
        instance = client.instance(instance_id)
        events = instance.table("events")
        events.create(column_families={"e": column_family.MaxVersionsGCRule(3),
                                       "meta": column_family.MaxAgeGCRule(timedelta(days=30))})
        profiles = instance.table("profiles")
        profiles.create(column_families={"p": column_family.MaxVersionsGCRule(1)})
        rows = []
        for n in range(400):
            row = events.direct_row(f"journey#{n % 40:03d}#evt#{n:05d}".encode())
            for version in range(2):
                row.set_cell("e", b"state", f"state {n}.{version}".encode(),
                             timestamp=now + timedelta(milliseconds=version))
            row.set_cell("meta", b"source", b"autopilot", timestamp=now)
            rows.append(row)
        _mutate(events, rows)
        people = []
        for n in range(40):
            row = profiles.direct_row(f"account#{n:03d}".encode())
            row.set_cell("p", b"email", f"journeys{n}@example.au".encode(), timestamp=now)
            people.append(row)
        _mutate(profiles, people)
    return service.dsn(BIGTABLE_PROJECT, instance_id)


def _mutate(table: object, rows: list[object]) -> None:
    statuses = table.mutate_rows(rows)  # type: ignore[attr-defined]
    failed = [status for status in statuses if status.code != 0]
    if failed:
        raise RuntimeError(f"seeding Bigtable table failed for {len(failed)} rows")


def _add(digest: hashlib._Hash, *fields: bytes) -> None:
    for value in fields:
        digest.update(len(value).to_bytes(8, "big"))
        digest.update(value)


def fingerprint_bigtable(service: BigtableService, dsn: str) -> dict[str, tuple[int, str]]:
    """Per table: (rows, SHA-256 of its families and every cell with its timestamp)."""
    instance_id = urlsplit(dsn).path.strip("/")
    out: dict[str, tuple[int, str]] = {}
    with emulator_client(service) as client:
        instance = client.instance(instance_id)
        for table in instance.list_tables():
            digest = hashlib.sha256()
            for name, family in sorted(table.list_column_families().items()):
                rule = family.gc_rule
                _add(digest, name.encode(),
                     b"" if rule is None else type(rule.to_pb()).serialize(rule.to_pb()))
            rows = 0
            for row in table.read_rows():
                rows += 1
                for family_name, columns in sorted(row.cells.items()):
                    for qualifier, cells in sorted(columns.items()):
                        for cell in sorted(cells, key=lambda c: -c.timestamp_micros):
                            _add(digest, row.row_key, family_name.encode(), qualifier,
                                 str(cell.timestamp_micros).encode(), cell.value)
            out[table.table_id] = (rows, digest.hexdigest())
    return out


def fingerprint_mysql(dsn: str) -> dict[str, tuple[int, str]]:
    """Per base table: (rows, SHA-256 of its rows in primary-key order)."""
    import pymysql

    parts = urlsplit(dsn)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                           user=unquote(parts.username or ""),
                           password=unquote(parts.password or ""),
                           database=unquote(parts.path.lstrip("/")), charset="utf8mb4")
    out: dict[str, tuple[int, str]] = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema ="
                        " DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1")
            tables = [str(r[0]) for r in cur.fetchall()]
            for table in tables:
                digest = hashlib.sha256()
                cur.execute(f"SELECT * FROM {quote_identifier(table)} ORDER BY 1")
                rows = 0
                for row in cur.fetchall():
                    digest.update(repr(row).encode() + b"\n")
                    rows += 1
                out[table] = (rows, digest.hexdigest())
    finally:
        conn.close()
    return out


def domain_entries(*, mysql_dsn_file: str, bigtable_dsn_file: str, swift_user: str,
                   api_key_file: str, mysql_scratch_file: str) -> dict[str, Any]:
    """What the sample configuration adds to the au domain: its Cloud Files container, the
    two Journeys sources, both placed on Cloud Files (primary) and GCS (replica), and the
    MariaDB server where drills of the mysql one create their scratch databases."""
    placement = {"primary": "swift", "replica": "gcs"}
    return {
        "drill_scratch": {"mysql": {"file": mysql_scratch_file}},
        "swift": {"region": SWIFT_REGION, "container": CONTAINER, "user": swift_user,
                  "api_key": {"file": api_key_file}},
        "sources": [
            {"name": MYSQL_SOURCE, "kind": "mysql", "data_class": "pii",
             "dsn": {"file": mysql_dsn_file}, "stores": placement,
             "check": {"sql": "SELECT count(*) FROM accounts WHERE email NOT LIKE '%@%'",
                       "expect": "0"}},
            {"name": BIGTABLE_SOURCE, "kind": "bigtable", "data_class": "pii",
             "dsn": {"file": bigtable_dsn_file}, "tables": list(BIGTABLE_TABLES),
             "stores": placement},
        ],
    }
