"""Issue 13: the operator's commands that need a domain's secrets run on that domain's own
workers: ``verify``, ``check`` (every domain on its own workers), ``restore`` (its target a
configured name or a reference the worker resolves, never a DSN in a task's arguments).

Each test proves where the work ran in a way that fails if the command line did it itself:
the command line is given store and KMS endpoints where nothing listens (a verify or check
run in its process could not succeed), and the task's result in the domain's result
backend names the domain's own worker.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from regionvault.devstack import sample
from regionvault.devstack.services import ManagedProcess, free_port, start_process
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain, queue_name
from tests.integration.conftest import running_stack
from tests.integration.helpers import config_of, redis_contents, regionvault_cli, run_chain

pytestmark = pytest.mark.stack


def nowhere() -> dict[str, str]:
    """Endpoints for the command line's own process where nothing listens: whatever it
    tried to read from the stores or KMS itself would fail."""
    dead = f"http://127.0.0.1:{free_port()}"
    return {"REGIONVAULT_S3_ENDPOINT": dead, "REGIONVAULT_GCS_ENDPOINT": dead,
            "REGIONVAULT_KMS_ENDPOINT": dead}


def task_results(stack: DevStack, domain: Domain, name: str) -> list[dict[str, Any]]:
    """Every stored result of task ``name`` for ``domain``, in its result backend (Celery's
    extended results: with the task's kwargs, its queue and the worker that ran it)."""
    client = redis.Redis.from_url(config_of(stack).backend_for(domain))
    found = []
    for key in client.scan_iter(match="celery-task-meta-*", count=500):
        raw = client.get(key)
        if raw is None:
            continue
        meta = json.loads(raw)
        if meta.get("name") == name and (meta.get("kwargs") or {}).get("domain") == domain.value:
            found.append(meta)
    return found


def everything_in_redis(stack: DevStack) -> bytes:
    config = config_of(stack)
    urls = {config.broker_url, *(config.broker_for(d) for d in Domain),
            *(config.backend_for(d) for d in Domain)}
    return b"\n".join(redis_contents(url) for url in sorted(urls))


@pytest.fixture(scope="module")
def eu_backup(stack: DevStack) -> str:
    return run_chain(stack, Domain.EU, "catalog")


# --- verify ------------------------------------------------------------------------------


def test_verify_runs_on_the_domains_own_worker(stack: DevStack, eu_backup: str) -> None:
    for args in ((), ("--deep",)):
        result = regionvault_cli(stack, "verify", eu_backup, *args, env=nowhere())
        assert result.returncode == 0, result.stdout + result.stderr
        how = "deep (SHA-256 of both copies)" if args else "store checksums of both copies"
        assert f"backup {eu_backup} verified: {how}" in result.stdout
    ran = [r for r in task_results(stack, Domain.EU, "regionvault.verify_backup")
           if r["kwargs"].get("backup_id") == eu_backup]
    assert len(ran) == 2, ran
    assert {r["worker"] for r in ran} == {stack.worker_name(Domain.EU)}
    assert {r["queue"] for r in ran} == {queue_name(Domain.EU)}
    assert sorted(r["kwargs"]["deep"] for r in ran) == [False, True]


def test_verify_local_runs_here_and_needs_the_stores(stack: DevStack, eu_backup: str) -> None:
    """The control of the test above: the same command with --local, which reads the stores
    from its own process, fails when its process cannot reach them, and passes when it can."""
    cut_off = regionvault_cli(stack, "verify", eu_backup, "--local", env=nowhere(),
                              timeout=300)
    assert cut_off.returncode != 0
    assert regionvault_cli(stack, "verify", eu_backup, "--local").returncode == 0


def test_verify_on_the_worker_takes_the_backups_lease(stack: DevStack) -> None:
    """While another live owner holds the backup's lease, the worker's verify waits for it
    (two lease lifetimes) and then refuses, naming the owner (exit 3), writing nothing."""
    from regionvault.lease import Lease, RedisLeaseStore, owner_id

    backup_id = run_chain(stack, Domain.EU, "accounts")
    store = RedisLeaseStore.from_url(config_of(stack).backend_for(Domain.EU))
    owner = owner_id("a-step-that-runs-long")  # this test's process: alive, never broken
    held = store.acquire(backup_id, owner, 300_000, step="replicate", run=7)
    assert isinstance(held, Lease)
    try:
        busy = regionvault_cli(stack, "verify", backup_id, timeout=300)
    finally:
        store.release(held)
    assert busy.returncode == 3, busy.stdout + busy.stderr
    said = " ".join(busy.stderr.split())
    assert f"backup {backup_id} is being worked on by {owner} (step replicate of run 7)" in said
    assert regionvault_cli(stack, "verify", backup_id).returncode == 0


def test_a_failed_verify_on_the_worker_keeps_its_sentence_and_exit_code(
        stack: DevStack) -> None:
    missing = "eu.catalog.20200101T000000Z.0badf00d"
    result = regionvault_cli(stack, "verify", missing)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert missing in lines[0] and "Traceback" not in result.stderr
    ran = [r for r in task_results(stack, Domain.EU, "regionvault.verify_backup")
           if r["kwargs"].get("backup_id") == missing]
    assert [r["status"] for r in ran] == ["FAILURE"]
    assert ran[0]["worker"] == stack.worker_name(Domain.EU)


# --- check -------------------------------------------------------------------------------


def _sources(stack: DevStack, domain: Domain) -> int:
    return len(config_of(stack).domain(domain).sources)


def test_check_without_a_domain_runs_on_each_domains_workers(stack: DevStack) -> None:
    before = {d: {r["task_id"] for r in task_results(stack, d, "regionvault.check_domain")}
              for d in Domain}
    result = regionvault_cli(stack, "check", env=nowhere())
    assert result.returncode == 0, result.stdout + result.stderr
    for domain in Domain:
        assert (f"domain {domain.value}: keys, {_sources(stack, domain)} source DSNs and 2 "
                "buckets (s3, gcs) ok" in result.stdout), result.stdout
        assert f"domain {domain.value}: current keys: " in result.stdout
        new = [r for r in task_results(stack, domain, "regionvault.check_domain")
               if r["task_id"] not in before[domain]]
        assert len(new) == 1, new
        assert new[0]["worker"] == stack.worker_name(domain)
        assert new[0]["queue"] == queue_name(domain)
        assert new[0]["result"]["domain"] == domain.value
        assert new[0]["result"]["exit_code"] == 0


def test_check_reports_a_domain_whose_workers_do_not_answer_and_checks_the_others(
        stack: DevStack) -> None:
    stack.stop_worker(Domain.AU)
    try:
        result = regionvault_cli(stack, "check", "--timeout", "5", env=nowhere())
    finally:
        stack.start_worker(Domain.AU)
        stack.wait_for_workers([Domain.AU])
    assert result.returncode == 4, result.stdout + result.stderr
    assert "domain au not checked: its workers did not answer within 5s" in " ".join(
        result.stderr.split())
    # nothing else on stderr (a result given up on is not dropped noisily at exit)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, \
        result.stderr
    for domain in (Domain.US, Domain.EU):
        assert f"domain {domain.value}: keys, " in result.stdout
    assert "domain au: keys" not in result.stdout


def test_a_domain_whose_broker_is_down_is_reported_and_the_others_checked() -> None:
    """A broker per domain, eu's stopped: ``check`` reports eu unreachable (exit 4) and
    checks us and au; ``verify`` of an eu backup says so in one sentence (exit 4)."""
    with running_stack("rv-test-work-brokers-", per_domain_brokers=True) as dev:
        dev.domain_brokers[Domain.EU].stop()
        result = regionvault_cli(dev, "check", "--timeout", "60", timeout=300)
        assert result.returncode == 4, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        said = " ".join(result.stderr.split())
        assert ("domain eu not checked: the workers of domain 'eu' cannot be reached: its "
                in said), result.stderr
        for domain in (Domain.US, Domain.AU):
            assert f"domain {domain.value}: keys, " in result.stdout, result.stdout
        assert "domain eu: " not in result.stdout
        verified = regionvault_cli(dev, "verify", "eu.catalog.20200101T000000Z.0badf00d",
                                   timeout=300)
        assert verified.returncode == 4, verified.stdout + verified.stderr
        lines = [line for line in verified.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "the workers of domain 'eu' cannot be reached" in " ".join(
            verified.stderr.split()), verified.stderr


def test_check_local_reads_here(stack: DevStack) -> None:
    """--local checks in the command line's own process: cut off from the stores, it fails
    (the workers' check above passed with the same environment)."""
    result = regionvault_cli(stack, "check", "--domain", "us", "--local", env=nowhere(),
                             timeout=300)
    assert result.returncode != 0
    assert "domain us: keys, " not in result.stdout
    assert regionvault_cli(stack, "check", "--domain", "us", "--local").returncode == 0


# --- restore -----------------------------------------------------------------------------


@pytest.fixture
def target_db(stack: DevStack, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database; its DSN."""
    assert stack.postgres is not None
    name = f"work_{request.node.name.split('[')[0][-40:]}"
    stack.postgres.drop_database(name)
    stack.postgres.create_database(name)
    yield stack.postgres.dsn(name)
    stack.postgres.drop_database(name)


@pytest.fixture
def worker_with_env(stack: DevStack, tmp_path: Path) -> Iterator[Any]:
    """Run a worker of au with one more environment variable, in place of the stack's:
    ``start(name, value)``; the stack's own au worker is back afterwards."""
    started: list[ManagedProcess] = []

    def start(variable: str, value: str) -> str:
        stack.stop_worker(Domain.AU)
        name = f"au-envref@regionvault-test-{time.monotonic_ns()}"
        metrics = tmp_path / "metrics"
        metrics.mkdir(exist_ok=True)
        env = {**stack.celery_env(Domain.AU), variable: value,
               "REGIONVAULT_METRICS_PORT": str(free_port()),
               "REGIONVAULT_METRICS_ADDRESS": "127.0.0.1",
               "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        started.append(start_process(
            "worker-au-envref",
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q",
             queue_name(Domain.AU), "-n", name, "--concurrency", "1", "--loglevel", "INFO",
             "--without-mingle", "--without-gossip"],
            log_path=tmp_path / "worker-au-envref.log", env=env, cwd=Path.cwd()))
        deadline = time.monotonic() + 60
        while name not in stack.workers_answering({name}):
            assert time.monotonic() < deadline, started[-1].tail()
            time.sleep(0.2)
        return name

    try:
        yield start
    finally:
        for process in started:
            process.stop()
        stack.start_worker(Domain.AU)
        stack.wait_for_workers([Domain.AU])


def _source_fingerprint(stack: DevStack, domain: Domain, source: str) -> Any:
    assert stack.postgres is not None
    return sample.fingerprint(stack.postgres.dsn(sample.database_name(domain, source)))


def test_restore_into_an_env_reference_that_only_the_worker_resolves(
        stack: DevStack, target_db: str, worker_with_env: Any) -> None:
    backup_id = run_chain(stack, Domain.AU, "catalog")
    variable = "RV_TEST_RESTORE_TARGET"
    worker = worker_with_env(variable, target_db)
    # the command line's own environment does not have it, and cannot reach the stores
    assert variable not in stack.celery_env()
    result = regionvault_cli(stack, "restore", backup_id, "--target", f"env:{variable}",
                             env=nowhere(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restored backup {backup_id} from s3" in result.stdout
    assert sample.fingerprint(target_db) == _source_fingerprint(stack, Domain.AU, "catalog")
    [ran] = [r for r in task_results(stack, Domain.AU, "regionvault.restore")
             if r["kwargs"].get("backup_id") == backup_id]
    assert ran["worker"] == worker and ran["status"] == "SUCCESS"
    assert ran["kwargs"]["target"] == f"env:{variable}"
    # the DSN is nowhere in Redis: not in the message, its result, or the journal
    contents = everything_in_redis(stack)
    assert f"env:{variable}".encode() in contents  # the scan sees the task's arguments
    assert target_db.encode() not in contents


def test_restore_into_a_file_reference_and_a_configured_target(
        stack: DevStack, target_db: str, tmp_path: Path) -> None:
    backup_id = run_chain(stack, Domain.US, "catalog")
    dsn_file = tmp_path / "target.dsn"
    dsn_file.write_text(target_db + "\n")
    result = regionvault_cli(stack, "restore", backup_id, "--target", f"file:{dsn_file}",
                             "--from", "gcs", env=nowhere(), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"restored backup {backup_id} from gcs" in result.stdout
    expected = _source_fingerprint(stack, Domain.US, "catalog")
    assert sample.fingerprint(target_db) == expected
    # the domain's configured restore target, by name; selected on the worker
    named = regionvault_cli(stack, "restore", "--domain", "us", "--source", "catalog",
                            "--target", "scratch", "--clean", env=nowhere(), timeout=300)
    assert named.returncode == 0, named.stdout + named.stderr
    assert "selected backup us.catalog." in named.stderr
    assert stack.postgres is not None
    assert sample.fingerprint(stack.postgres.dsn("restore_target_us")) == expected
    # a second restore into the now non-empty file target is refused on the worker, with
    # the core's own sentence and exit code
    refused = regionvault_cli(stack, "restore", backup_id, "--target", f"file:{dsn_file}")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the target database is not empty" in refused.stderr
    assert target_db not in refused.stdout + refused.stderr


def test_a_literal_dsn_is_refused_without_local_and_never_sent(
        stack: DevStack, target_db: str) -> None:
    backup_id = run_chain(stack, Domain.EU, "accounts")
    # a DSN of its own: nothing else in the stack holds this string
    dsn = target_db + "?application_name=rv_literal_dsn_probe"
    refused = regionvault_cli(stack, "restore", backup_id, "--target", dsn)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    sentence = " ".join(refused.stderr.split())
    assert "restore target of domain 'eu' (configured: scratch)" in sentence
    assert "env:VAR or file:/path" in sentence and "--local" in sentence
    assert dsn not in refused.stdout + refused.stderr
    assert not [r for r in task_results(stack, Domain.EU, "regionvault.restore")
                if r["kwargs"].get("backup_id") == backup_id]
    assert dsn.encode() not in everything_in_redis(stack)
    # with --local, the same DSN restores from this process
    local = regionvault_cli(stack, "restore", backup_id, "--target", dsn, "--local")
    assert local.returncode == 0, local.stdout + local.stderr
    assert sample.fingerprint(target_db) == _source_fingerprint(stack, Domain.EU, "accounts")
    assert dsn.encode() not in everything_in_redis(stack)


def test_the_restore_task_refuses_a_dsn_in_its_arguments_without_repeating_it(
        stack: DevStack) -> None:
    """A message sent around the command line (by hand, or an old client) with a DSN for a
    target: the worker refuses it before reading anything, and its error does not repeat
    the DSN (the error is stored in the result backend and shown in Flower)."""
    from workers.app import app

    backup_id = run_chain(stack, Domain.EU, "catalog")
    assert stack.postgres is not None
    dsn = stack.postgres.dsn("rv_never_restored_into")
    sent = app.send_task("regionvault.restore", kwargs={
        "backup_id": backup_id, "domain": "eu", "source": "catalog", "target": dsn})
    with pytest.raises(Exception) as raised:
        sent.get(timeout=60)
    assert "neither the name of a restore target" in str(raised.value)
    assert dsn not in str(raised.value)
    assert dsn not in (sent.traceback or "")


@pytest.mark.parametrize("text", [
    "postgresql://restorer:s3cret@db.internal:5432/app",
    "postgres://db.internal/app",
    "mysql://restorer:s3cret@db.internal/app",
    "host=db.internal dbname=app password=s3cret",
    "file:relative/target.dsn",
    "file:/restorer:s3cret@db.internal/app",
    "env:1NOT_A_NAME",
    "env:A=B",
    "",
])
def test_what_is_not_a_name_or_a_reference_is_refused_unrepeated(text: str) -> None:
    from regionvault.dispatch import NotAReference, RestoreTarget

    with pytest.raises(NotAReference) as refused:
        RestoreTarget.parse(text)
    assert not text or text not in str(refused.value)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(("text", "kind"), [
    ("scratch", "name"), ("pitr-2026.01", "name"), ("env:RV_TARGET_DSN", "env"),
    ("file:/run/secrets/regionvault/eu/target.dsn", "file"),
])
def test_names_and_references_travel_as_they_were_given(text: str, kind: str) -> None:
    from regionvault.dispatch import RestoreTarget

    parsed = RestoreTarget.parse(text)
    assert str(parsed) == text
    assert {"name": parsed.name, "env": parsed.ref and parsed.ref.env,
            "file": parsed.ref and parsed.ref.file}[kind] is not None
