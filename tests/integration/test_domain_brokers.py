"""A broker per domain, on the dev stack: everything of a domain lives in its own broker.

The stack runs a Redis-protocol broker per domain (``domains.<d>.broker_url``), each domain's
worker, beat and Flower connected only to its own, plus the shared broker, which no domain
uses. Through the real CLI, every domain's backups are taken, verified and restored; then
every key of every broker is read (Celery's messages decoded from their base64 bodies) and
none holds another domain's backup ids, bucket names or source names. Last, one domain's
broker is stopped: ``status`` reports that domain unreachable and the others fresh.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator

import pytest

from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from tests.integration.conftest import running_stack
from tests.integration.helpers import config_of, redis_contents

pytestmark = pytest.mark.stack

#: a source whose name differs in every domain, so that finding one domain's source name in
#: another's broker means something (the sample sources have the same names everywhere)
PRIVATE = sample.SampleSource(
    name="ledger-{domain}",
    data_class="pii",
    seed_sql="""
        CREATE TABLE entries (id serial PRIMARY KEY, customer text NOT NULL, cents int);
        INSERT INTO entries (customer, cents)
            SELECT 'customer-' || i || '@{domain}.example', i * 7
            FROM generate_series(1, 200) AS i;
    """,
)


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with running_stack("rv-brokers-", per_domain_brokers=True, beat=True, flower=True,
                       sources=(sample.SAMPLE_SOURCES[0], PRIVATE)) as dev:
        yield dev


def cli(stack: DevStack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real ``regionvault`` command, in a process of its own, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "regionvault_cli", *args],
                          env=stack.celery_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def source_names(stack: DevStack, domain: Domain) -> list[str]:
    return [s.name for s in config_of(stack).domain(domain).sources]


@pytest.fixture(scope="module")
def backups(stack: DevStack) -> dict[Domain, list[str]]:
    """Every source of every domain backed up through the CLI, each chain followed live to
    verified (exit 0)."""
    taken: dict[Domain, list[str]] = {}
    for domain in Domain:
        done = cli(stack, "backup", "--domain", domain.value, "--all", "--wait",
                   "--timeout", "240")
        assert done.returncode == 0, done.stdout + done.stderr
        ids = [line.split()[1] for line in done.stdout.splitlines()
               if line.startswith("backup ") and " queued in " in line]
        assert len(ids) == len(source_names(stack, domain)), done.stdout
        taken[domain] = ids
    return taken


def test_backup_verify_and_restore_in_every_domain(stack: DevStack,
                                                   backups: dict[Domain, list[str]]) -> None:
    secrets_dir = stack.data_dir / "secrets"
    for domain, ids in backups.items():
        assert [i.split(".")[0] for i in ids] == [domain.value] * len(ids)
        for backup_id in ids:
            verified = cli(stack, "verify", backup_id, "--deep")
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert f"backup {backup_id} verified" in verified.stdout
        # the private source, restored into the domain's configured restore target
        backup_id = next(i for i in ids if i.split(".")[1] == PRIVATE.name_in(domain))
        restored = cli(stack, "restore", backup_id, "--target", "scratch", "--clean")
        assert restored.returncode == 0, restored.stdout + restored.stderr
        source_dsn = (secrets_dir / f"{domain.value}-{PRIVATE.name_in(domain)}.dsn")
        target_dsn = (secrets_dir / f"{domain.value}-restore-target.dsn")
        original = sample.fingerprint(source_dsn.read_text().strip())
        copy = sample.fingerprint(target_dsn.read_text().strip())
        assert copy == original
        assert original["entries"][0] == 200


# --- what each broker holds ------------------------------------------------------------------


def identifiers(stack: DevStack, domain: Domain, ids: list[str]) -> dict[str, str]:
    """What names a domain's data: its backup ids, its buckets, its own source names."""
    dcfg = config_of(stack).domain(domain)
    found = {backup_id: "backup id" for backup_id in ids}
    found[dcfg.s3_bucket] = "S3 bucket"
    found[dcfg.gcs_bucket] = "GCS bucket"
    found[PRIVATE.name_in(domain)] = "source name"
    return found


def test_each_broker_holds_only_its_own_domain(stack: DevStack,
                                               backups: dict[Domain, list[str]]) -> None:
    config = config_of(stack)
    contents = {d: redis_contents(config.broker_for(d)) for d in Domain}
    for domain in Domain:
        own = identifiers(stack, domain, backups[domain])
        # positive control: the scan sees the domain's own backups (journal entries and the
        # task messages' decoded arguments), so an empty or undecoded scan cannot pass
        for backup_id in backups[domain]:
            assert backup_id.encode() in contents[domain], f"{backup_id} not in its own broker"
        assert PRIVATE.name_in(domain).encode() in contents[domain]
        for other in Domain:
            if other is domain:
                continue
            leaked = [f"{what} {name}" for name, what in own.items()
                      if name.encode() in contents[other]]
            assert not leaked, f"the broker of {other.value} holds {domain.value}'s: {leaked}"
    # the shared broker is used by no domain here: none of anything lands there
    shared = redis_contents(config.broker_url)
    for domain in Domain:
        leaked = [name for name in identifiers(stack, domain, backups[domain])
                  if name.encode() in shared]
        assert not leaked, f"the shared broker holds {domain.value}'s: {leaked}"


def test_flower_of_a_domain_points_at_the_others(stack: DevStack,
                                                 backups: dict[Domain, list[str]]) -> None:
    """Each domain's Flower lists its own backups only, and says where the others live."""
    import urllib.request

    password = (stack.data_dir / "secrets" / "flower-password").read_text().strip()
    token = base64.b64encode(f"operator:{password}".encode()).decode()
    for domain in Domain:
        port = stack.flower_ports[domain]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/backups",
                                         headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            page = response.read().decode()
        for backup_id in backups[domain]:
            assert backup_id in page
        for other in Domain:
            if other is domain:
                continue
            assert not any(b in page for b in backups[other])
            assert f'data-domain-elsewhere="{other.value}"' in page
            assert f"http://127.0.0.1:{stack.flower_ports[other]}/backups" in page


def test_status_reports_a_stopped_broker_unreachable_and_the_others_fresh(
        stack: DevStack, backups: dict[Domain, list[str]]) -> None:
    fresh = cli(stack, "status")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    stack.domain_brokers[Domain.EU].stop()  # last test of the module: eu stays down
    done = cli(stack, "status", timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr
    cells = [line.replace("│", " ").split() for line in done.stdout.splitlines()]
    rows = {tuple(c[:3]) for c in cells if c[:1] in (["us"], ["eu"], ["au"])}
    for domain in Domain:
        state = "unreachable" if domain is Domain.EU else "fresh"
        for source in source_names(stack, domain):
            assert (domain.value, source, state) in rows, done.stdout
    assert "domain eu unreachable" in done.stderr
