"""Issue 3, restore: point in time, refusing a non-empty target, restore as a task; a stage
that fails half-way leaves the target as it was."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from regionvault import restore as restore_module
from regionvault.catalogue import find_backup
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from regionvault.errors import IntegrityError, TransientStoreError
from regionvault.sources.postgres import PostgresSource, pg_tool, split_dsn
from tests.integration.helpers import context, regionvault_cli, run_chain

pytestmark = pytest.mark.stack


@pytest.fixture
def fresh_db(stack: DevStack, request: pytest.FixtureRequest) -> Iterator[str]:
    assert stack.postgres is not None
    name = f"restore_{request.node.name.split('[')[0][-40:]}"
    stack.postgres.drop_database(name)
    stack.postgres.create_database(name)
    yield name
    stack.postgres.drop_database(name)


def _entries(stack: DevStack, db: str) -> set[str]:
    assert stack.postgres is not None
    return {r[0] for r in stack.postgres.execute(db, "SELECT customer FROM entries")}


def test_at_restores_exactly_the_rows_of_the_chosen_backup(stack: DevStack, fresh_db: str,
                                                            tmp_path: Path) -> None:
    assert stack.postgres is not None
    source_db = sample.database_name(Domain.US, "ledger")
    taken = []
    for label in ("first", "second", "third"):
        stack.postgres.execute(source_db, f"INSERT INTO entries (customer, cents) "
                                          f"VALUES ('pitr-{label}', 1)")
        backup_id = run_chain(stack, Domain.US, "ledger")
        manifest = find_backup(context(stack, Domain.US), backup_id)["s3"]
        taken.append((backup_id, manifest.created_at, _entries(stack, source_db)))

    chosen_id, chosen_at, rows_then = taken[1]
    # chosen and restored on the domain's worker, which reads the target's DSN from a file
    target = tmp_path / "target.dsn"
    target.write_text(stack.postgres.dsn(fresh_db))
    result = regionvault_cli(stack, "restore", "--domain", "us", "--source", "ledger",
                             "--at", chosen_at.isoformat(), "--target", f"file:{target}")
    assert result.returncode == 0, result.stderr
    assert f"selected backup {chosen_id}" in result.stderr
    restored = _entries(stack, fresh_db)
    assert restored == rows_then
    assert "pitr-second" in restored and "pitr-third" not in restored


def test_non_empty_target_is_refused_without_clean_and_unchanged(
        stack: DevStack, fresh_db: str) -> None:
    assert stack.postgres is not None
    backup_id = run_chain(stack, Domain.EU, "catalog")
    stack.postgres.execute(fresh_db, "CREATE TABLE precious (v text); "
                                     "INSERT INTO precious VALUES ('keep me')")
    target = stack.postgres.dsn(fresh_db)

    refused = regionvault_cli(stack, "restore", backup_id, "--target", target, "--local")
    assert refused.returncode == 2
    assert "the target database is not empty" in refused.stderr
    assert "--clean" in refused.stderr
    tables = {r[0] for r in stack.postgres.execute(
        fresh_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"precious"}
    assert stack.postgres.execute(fresh_db, "SELECT v FROM precious") == [("keep me",)]

    cleaned = regionvault_cli(stack, "restore", backup_id, "--target", target, "--clean",
                              "--local")
    assert cleaned.returncode == 0, cleaned.stderr
    expected = sample.fingerprint(stack.postgres.dsn(sample.database_name(Domain.EU, "catalog")))
    restored = sample.fingerprint(target)
    assert restored["plans"] == expected["plans"]


def test_restore_runs_as_a_task_in_the_domain_queue(stack: DevStack) -> None:
    from workers.app import app

    assert stack.postgres is not None
    backup_id = run_chain(stack, Domain.AU, "catalog")
    result = app.send_task("regionvault.restore", kwargs={
        "backup_id": backup_id, "domain": "au", "source": "catalog", "target": "scratch",
        "from_store": "gcs", "clean": True})
    outcome = result.get(timeout=60)
    assert outcome["store"] == "gcs" and outcome["bytes"] > 0
    # the task's arguments name the target, never a DSN
    assert "postgresql://" not in repr(result.args) + repr(result.kwargs)
    expected = sample.fingerprint(stack.postgres.dsn(sample.database_name(Domain.AU, "catalog")))
    assert sample.fingerprint(stack.postgres.dsn("restore_target_au")) == expected


class _FailsBeforeEnd(io.RawIOBase):
    """A download that delivers every byte, then fails instead of reporting the end: the
    connection dropped before the last (empty) read."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        if not data:
            raise TransientStoreError("cannot read s3://bucket/key: the connection to S3 failed "
                                      "(ConnectionResetError); retry later")
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _restore_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("restore-")]


def _pg_restore_has_written(stack: DevStack, db: str) -> bool:
    """pg_restore's transaction in ``db`` holds a transaction id: it has changed something."""
    assert stack.postgres is not None
    rows = stack.postgres.execute("postgres", (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_restore' "
        f"AND datname = '{db}' AND backend_xid IS NOT NULL"))
    return bool(rows[0][0])


PLANS_DDL = ("CREATE TABLE plans (id serial PRIMARY KEY, code text UNIQUE NOT NULL, "
             "seats int NOT NULL)")


def _dump_of_many_plans(stack: DevStack, db: str) -> bytes:
    """A custom-format dump of the catalog's "plans" table with 20,000 rows (about 400 KB):
    big enough to pass the write buffer in front of pg_restore's stdin."""
    assert stack.postgres is not None
    stack.postgres.drop_database(db)
    stack.postgres.create_database(db)
    try:
        stack.postgres.execute(db, f"{PLANS_DDL}; INSERT INTO plans (code, seats) "
                                   "SELECT 'plan-' || i, i FROM generate_series(1, 20000) i")
        conninfo, env = split_dsn(stack.postgres.dsn(db))
        return subprocess.run([pg_tool("pg_dump"), "--format=custom", "--compress=0",
                               f"--dbname={conninfo}"], env={**os.environ, **env},
                              capture_output=True, check=True).stdout
    finally:
        stack.postgres.drop_database(db)


def test_a_stage_failing_mid_restore_leaves_the_target_untouched(
        stack: DevStack, fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode stage fails once pg_restore has most of a dump and is changing the target:
    pg_restore is killed before the end of its input, its one transaction rolls back, the
    caller gets the stage's own error, and no restore thread is left running."""
    assert stack.postgres is not None
    backup_id = run_chain(stack, Domain.EU, "catalog")
    target = stack.postgres.dsn(fresh_db)
    # the backup's own table with another row: --clean drops and refills it, unless rolled back
    stack.postgres.execute(fresh_db, f"{PLANS_DDL}; "
                                     "INSERT INTO plans (code, seats) VALUES ('keep me', 1)")
    before = sample.fingerprint(target)
    big_dump = _dump_of_many_plans(stack, f"{fresh_db}_big")
    real_decode = restore_module._decode
    fed: list[int] = []

    def fails_near_the_end(*args: Any) -> Iterator[bytes]:
        # The real download and decryption run (their output is set aside); then a dump big
        # enough to matter goes out in pieces, all but its last 64 KiB, and the stage fails
        # once pg_restore's transaction has changed the target.
        for _ in real_decode(*args):
            pass
        cut = len(big_dump) - 64 * 1024
        for start in range(0, cut, 16 * 1024):
            yield big_dump[start:min(start + 16 * 1024, cut)]
        deadline = time.monotonic() + 30
        while not _pg_restore_has_written(stack, fresh_db):
            assert time.monotonic() < deadline, "pg_restore never started on the target"
            time.sleep(0.05)
        raise IntegrityError("chunk 1 of the encrypted stream failed authentication (test)")

    real_restore = PostgresSource.restore

    def counting_restore(self: PostgresSource, chunks: Iterable[bytes], *args: Any,
                         **kwargs: Any) -> None:
        def counted() -> Iterator[bytes]:
            for chunk in chunks:
                fed.append(len(chunk))
                yield chunk

        real_restore(self, counted(), *args, **kwargs)

    monkeypatch.setattr(restore_module, "_decode", fails_near_the_end)
    monkeypatch.setattr(PostgresSource, "restore", counting_restore)
    with pytest.raises(IntegrityError, match=r"chunk 1 .*\(test\)"):
        restore_module.restore(context(stack, Domain.EU), backup_id, target, from_store="s3",
                               clean=True)
    assert sum(fed) == len(big_dump) - 64 * 1024  # pg_restore had most of it when stopped
    assert _restore_threads() == []
    assert not _pg_restore_has_written(stack, fresh_db)
    assert sample.fingerprint(target) == before
    assert stack.postgres.execute(fresh_db, "SELECT code FROM plans") == [("keep me",)]


def test_a_download_failing_mid_stream_is_raised_as_is_and_auto_falls_back(
        stack: DevStack, fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack.postgres is not None
    backup_id = run_chain(stack, Domain.EU, "catalog")
    target = stack.postgres.dsn(fresh_db)
    ctx = context(stack, Domain.EU)
    s3 = ctx.store("s3")
    real_open_read = s3.open_read
    monkeypatch.setattr(s3, "open_read",
                        lambda key: io.BufferedReader(_FailsBeforeEnd(real_open_read(key))))

    with pytest.raises(TransientStoreError, match="connection to S3 failed"):
        restore_module.restore(ctx, backup_id, target, from_store="s3")
    assert _restore_threads() == []
    assert sample.fingerprint(target) == {}

    result = restore_module.restore(ctx, backup_id, target, from_store="auto")
    assert result.store == "gcs"
    assert result.fallback_reason is not None
    assert "s3 was not used: cannot read s3://" in result.fallback_reason
    assert _restore_threads() == []
    expected = sample.fingerprint(stack.postgres.dsn(sample.database_name(Domain.EU, "catalog")))
    assert sample.fingerprint(target) == expected
