"""Acceptance 2: a marker written into a source never appears at rest (spool, S3, GCS, Redis,
worker logs) and does appear after a restore."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import redis

from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.manifest import STEPS, new_backup_id
from regionvault.restore import restore
from regionvault.sources.postgres import pg_tool
from tests.integration.helpers import all_objects, config_of, context, run_step

pytestmark = pytest.mark.stack


def _redis_bytes(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    values: list[bytes] = []
    for key in client.scan_iter(count=1000):
        values.append(key)
        kind = client.type(key)
        if kind == b"string":
            values.append(client.get(key) or b"")
        elif kind == b"list":
            values.extend(client.lrange(key, 0, -1))
        elif kind == b"hash":
            for k, v in client.hgetall(key).items():
                values += [k, v]
        elif kind == b"set":
            values.extend(client.smembers(key))
        elif kind == b"zset":
            values.extend(client.zrange(key, 0, -1))
    return values


def test_marker_never_at_rest_and_back_after_restore(stack: DevStack) -> None:
    assert stack.postgres is not None
    marker = f"RVMARKER-{uuid.uuid4().hex}"
    db = sample.database_name(Domain.EU, "accounts")
    stack.postgres.execute(db, f"INSERT INTO customers (email, name) VALUES "
                               f"('{marker}@example.eu', '{marker}')")
    needle = marker.encode()
    # positive control: a plain pg_dump of the source does contain the marker
    plain = subprocess.run([pg_tool("pg_dump"), "--format=custom", "--compress=0",
                            f"--dbname={stack.postgres.dsn(db)}"], capture_output=True,
                           check=True).stdout
    assert needle in plain

    spool = config_of(stack).spool_for(Domain.EU)
    backup_id = new_backup_id(Domain.EU, "accounts", context(stack, Domain.EU).clock())
    spool_seen = 0
    for step in STEPS:  # one step at a time, looking at the spool between steps
        run_step(stack, step, backup_id, Domain.EU, "accounts")
        for path in spool.rglob("*"):
            if path.is_file():
                spool_seen += 1
                assert needle not in path.read_bytes(), f"plaintext in spool file {path}"
    assert spool_seen > 0, "the spool was never used, so the check above proved nothing"

    for bucket, objects in all_objects(stack).items():
        for key, data in objects.items():
            assert needle not in data, f"plaintext in {bucket}/{key}"
    assert not any(needle in value for value in _redis_bytes(stack.env["REGIONVAULT_BROKER_URL"]))
    for log in stack.logs.glob("*.log"):
        assert needle not in log.read_bytes(), f"plaintext in log {log}"

    stack.postgres.create_database("marker_restore")
    try:
        restore(context(stack, Domain.EU), backup_id, stack.postgres.dsn("marker_restore"))
        rows = stack.postgres.execute("marker_restore",
                                      f"SELECT count(*) FROM customers WHERE name = '{marker}'")
        assert rows == [(1,)]
    finally:
        stack.postgres.drop_database("marker_restore")
