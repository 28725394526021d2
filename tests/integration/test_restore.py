"""Issue 3, restore: point in time, refusing a non-empty target, restore as a task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from regionvault.catalogue import find_backup
from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
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


def test_at_restores_exactly_the_rows_of_the_chosen_backup(stack: DevStack, fresh_db: str) -> None:
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
    result = regionvault_cli(stack, "restore", "--domain", "us", "--source", "ledger",
                             "--at", chosen_at.isoformat(), "--target",
                             stack.postgres.dsn(fresh_db))
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

    refused = regionvault_cli(stack, "restore", backup_id, "--target", target)
    assert refused.returncode == 2
    assert "the target database is not empty" in refused.stderr
    assert "--clean" in refused.stderr
    tables = {r[0] for r in stack.postgres.execute(
        fresh_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"precious"}
    assert stack.postgres.execute(fresh_db, "SELECT v FROM precious") == [("keep me",)]

    cleaned = regionvault_cli(stack, "restore", backup_id, "--target", target, "--clean")
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
