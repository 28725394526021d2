"""The fenced stack: every domain's servers and workers inside that domain's network namespace.

Per domain, inside its namespace (``tests.netns.fence``) and listening on its address only: a
Redis-protocol broker, moto's S3 server, the GCS emulator and a PostgreSQL with one small
source; that domain's ``celery worker`` runs there too. In the root namespace: the CLI (run as
a program, as an operator runs it), the shared broker of processes of no domain, and the test.
One configuration file names every domain's broker, store endpoints and source; the buckets
are made in their regions from the root namespace, as ``regionvault provision`` would.
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from celery import Celery
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from regionvault.childenv import child_environment
from regionvault.config import Config, load_config
from regionvault.devstack import sample
from regionvault.devstack.services import (
    GCSService,
    ManagedProcess,
    PostgresService,
    RedisService,
    S3Service,
    ServiceGroup,
    ServiceStartError,
    start_gcs,
    start_postgres,
    start_process,
    start_redis,
    start_s3,
)
from regionvault.domains import DOMAIN_TABLE, Domain, queue_name
from regionvault.journal import Journal
from regionvault.keyring import generate_domain_key
from regionvault.provision import provision_bucket
from regionvault.stores.lifecycle import GCSLifecycle, S3Lifecycle
from tests.netns.fence import DomainNet, Fence

REPO = Path(__file__).resolve().parents[2]

#: the one source of every domain: small, personal data (the residency that matters most)
SOURCE = sample.SampleSource(
    name="accounts",
    data_class="pii",
    seed_sql="""
        CREATE TABLE customers (id serial PRIMARY KEY, email text NOT NULL);
        INSERT INTO customers (email)
            SELECT 'user' || i || '@{domain}.example' FROM generate_series(1, 200) AS i;
    """,
)

#: dummy credentials for moto; real ones never go near these tests
AWS_ENV = {"AWS_ACCESS_KEY_ID": "regionvault-netns", "AWS_SECRET_ACCESS_KEY": "regionvault-netns"}
GCS_PROJECT = "regionvault-netns"


@dataclass
class DomainServers:
    """One domain's servers, all inside its namespace on its address."""

    net: DomainNet
    broker: RedisService
    s3: S3Service
    gcs: GCSService
    postgres: PostgresService

    def processes(self) -> list[ManagedProcess]:
        return [self.broker.process, self.s3.process, self.gcs.process, self.postgres.process]


@dataclass
class FencedStack:
    root: Path
    fence: Fence
    group: ServiceGroup
    #: the broker of processes of no domain (the CLI's own app), in the root namespace
    shared_broker: RedisService
    servers: dict[Domain, DomainServers]
    config_data: dict[str, Any]
    config_path: Path
    #: the running worker of each domain, started with ``config_path`` unless a test swapped it
    workers: dict[Domain, ManagedProcess] = field(default_factory=dict)
    _labels: dict[Domain, str] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        return load_config(self.config_path, env={})

    def write_config(self, name: str, domain_changes: dict[Domain, dict[str, Any]]) -> Path:
        """A copy of the configuration with ``domain_changes`` set in those domains."""
        data = copy.deepcopy(self.config_data)
        for domain, changes in domain_changes.items():
            data["domains"][domain.value].update(changes)
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    # --- workers ----------------------------------------------------------------------------

    def worker_name(self, domain: Domain, label: str) -> str:
        return f"{domain.value}-{label}@rv-netns-{os.getpid()}"

    def start_worker(self, domain: Domain, config_path: Path | None = None, *,
                     label: str = "good") -> ManagedProcess:
        """Start a worker of ``domain`` inside its namespace, as the chart runs one:
        ``celery -A workers worker -Q backup.<d>`` with the domain and the configuration in its
        environment, and nothing else of ours."""
        self.stop_worker(domain)
        path = config_path or self.config_path
        env = {"REGIONVAULT_CONFIG": str(path), "REGIONVAULT_DOMAIN": domain.value,
               "PYTHONUNBUFFERED": "1", **AWS_ENV}
        process = start_process(
            f"worker-{domain.value}-{label}",
            [sys.executable, "-m", "celery", "-A", "workers", "worker",
             "-Q", queue_name(domain), "-n", self.worker_name(domain, label),
             "--concurrency", "1", "--loglevel", "INFO", "--without-mingle",
             "--without-gossip"],
            log_path=self.root / "logs" / f"worker-{domain.value}-{label}.log",
            env=env, cwd=REPO, netns=self.fence.nets[domain].netns)
        self.group.add(process)
        self.workers[domain] = process
        self._labels[domain] = label
        return process

    def stop_worker(self, domain: Domain) -> None:
        process = self.workers.pop(domain, None)
        self._labels.pop(domain, None)
        if process is not None:
            process.stop()

    def wait_for_worker(self, domain: Domain, broker_url: str | None = None,
                        timeout: float = 60) -> None:
        """Until the worker of ``domain`` answers a ping on ``broker_url`` (its domain's)."""
        process, label = self.workers[domain], self._labels[domain]
        name = self.worker_name(domain, label)
        # not the process's current app: other tests' Celery apps stay as they were
        app = Celery(f"rv-netns-ping-{domain.value}", set_as_current=False,
                     broker=broker_url or self.servers[domain].broker.url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not process.alive():
                    raise ServiceStartError(
                        f"worker {name} exited during start-up; its log ends with:\n"
                        f"{process.tail()}", service=process.name, log_tail=process.tail())
                replies = app.control.ping(destination=[name], timeout=0.5)
                if any(name in reply for reply in replies):
                    return
                time.sleep(0.2)
        finally:
            app.close()
        raise ServiceStartError(f"worker {name} did not answer a ping in {timeout:g}s; its log "
                                f"ends with:\n{process.tail()}", service=process.name)

    def ensure_workers(self) -> None:
        """Every domain's worker running with the good configuration (after a test swapped
        one for a misconfigured worker)."""
        started = [d for d in self.servers
                   if self._labels.get(d) != "good" or not self.workers[d].alive()]
        for domain in started:
            self.start_worker(domain)
        for domain in started:
            self.wait_for_worker(domain)

    # --- the root namespace's view ----------------------------------------------------------

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``regionvault ARGS --config <the configuration>``, run from the root namespace."""
        return subprocess.run(
            [sys.executable, "-m", "regionvault_cli", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.cli_env(),
            check=False)

    def cli_env(self) -> dict[str, str]:
        # an allowlisted environment: no REGIONVAULT_* of another stack in this test session
        return child_environment(os.environ, {**AWS_ENV, "COLUMNS": "250",
                                              "PYTHONUNBUFFERED": "1"})

    def journal(self, domain: Domain) -> Journal:
        """The journal of ``domain``, read on its own broker (from the root namespace)."""
        return Journal.from_url(self.config.backend_for(domain))

    def probe(self, config_path: Path, domains: Iterable[Domain], *,
              inside: Domain | None) -> dict[Domain, dict[str, Any]]:
        """``tests.netns.probe`` of ``domains`` with ``config_path``, run inside the
        namespace of domain ``inside`` (None: the root namespace): per domain, what
        connecting to its broker and its S3 endpoint gave."""
        import json

        argv = [sys.executable, "-m", "tests.netns.probe", "--config", str(config_path)]
        argv += [arg for d in domains for arg in ("--domain", d.value)]
        if inside is not None:
            argv = self.fence.nets[inside].exec_argv(argv)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                              env=child_environment(os.environ), check=False)
        assert done.returncode == 0, done.stderr
        return {Domain(name): result for name, result in json.loads(done.stdout).items()}


def s3_requests(service: S3Service) -> list[str]:
    """The requests moto's server has logged so far (werkzeug: one line per request)."""
    text = (service.workdir / f"{service.name}.log").read_text(errors="replace")
    return re.findall(r'^(\S+) - - \[[^]]*\] "[A-Z]+ [^"]*" \d{3}', text, flags=re.MULTILINE)


def _start_domain(net: DomainNet, workdir: Path) -> DomainServers:
    """The servers of one domain, in its namespace on its address; stopped again if one of
    them does not come up."""
    where = {"host": net.address, "netns": net.netns}
    started = ServiceGroup()
    try:
        broker = started.add(start_redis(workdir / "redis", **where))
        s3 = started.add(start_s3(workdir / "s3", **where))
        gcs = started.add(start_gcs(workdir / "gcs", **where))
        postgres = started.add(start_postgres(workdir / "postgres", **where))
    except BaseException:
        started.stop()
        raise
    # from here on the stack's group stops them
    return DomainServers(net=net, broker=broker, s3=s3, gcs=gcs, postgres=postgres)


def _seed(servers: DomainServers, secrets: Path) -> Path:
    domain = servers.net.domain
    db = sample.database_name(domain, SOURCE.name)
    servers.postgres.create_database(db)
    sample.seed(servers.postgres.dsn(db), domain, SOURCE)
    dsn_file = secrets / f"{domain.value}-{SOURCE.name}.dsn"
    dsn_file.touch(mode=0o600)
    dsn_file.write_text(servers.postgres.dsn(db) + "\n")
    return dsn_file


def _domain_entry(servers: DomainServers, dsn_file: Path, key_file: Path) -> dict[str, Any]:
    domain = servers.net.domain
    regions = DOMAIN_TABLE[domain]
    return {
        "aws_region": regions.aws_region,
        "s3_bucket": f"rv-netns-{domain.value}-primary",
        "gcp_location": regions.gcp_location,
        "gcs_bucket": f"rv-netns-{domain.value}-replica",
        "key": {"id": f"{domain.value}-netns-1", "secret": {"file": str(key_file)}},
        "sources": [{"name": SOURCE.name, "kind": "postgres", "data_class": SOURCE.data_class,
                     "dsn": {"file": str(dsn_file)}}],
        "broker_url": servers.broker.url,
        "s3_endpoint_url": servers.s3.endpoint,
        "gcs_endpoint_url": servers.gcs.endpoint,
    }


def _create_buckets(config: Config, servers: DomainServers) -> None:
    """The domain's buckets in its regions, on its own emulators, with the retention rules
    ``regionvault provision`` writes (as ``DevStack._create_buckets`` makes them)."""
    domain = servers.net.domain
    dcfg = config.domain(domain)
    s3 = boto3.client("s3", endpoint_url=servers.s3.endpoint, region_name=dcfg.aws_region,
                      aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"])
    location = {} if dcfg.aws_region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": dcfg.aws_region}}
    s3.create_bucket(Bucket=dcfg.s3_bucket, **location)
    provision_bucket(S3Lifecycle(dcfg.s3_bucket, dcfg.aws_region, client=s3), domain, config)
    gcs = storage.Client(project=GCS_PROJECT, credentials=AnonymousCredentials(),
                         client_options={"api_endpoint": servers.gcs.endpoint})
    bucket = gcs.bucket(dcfg.gcs_bucket)
    bucket.create(location=dcfg.gcp_location)
    # the emulator ignores the location given at creation; set it as GCS would hold it
    bucket._patch_property("location", dcfg.gcp_location.upper())
    bucket.patch()
    provision_bucket(GCSLifecycle(dcfg.gcs_bucket, project=GCS_PROJECT, client=gcs), domain,
                     config)


@pytest.fixture(scope="module")
def fenced() -> Iterator[FencedStack]:
    # Not under pytest's basetemp, which each pytest session resets to 0700 (PostgreSQL runs
    # as an unprivileged user and must traverse to its data directory).
    root = Path(tempfile.mkdtemp(prefix="rv-netns-"))
    domains = tuple(Domain)
    try:
        with Fence(domains) as fence, ServiceGroup() as group:
            shared = group.add(start_redis(root / "shared-redis"))
            with concurrent.futures.ThreadPoolExecutor(len(domains)) as pool:
                futures = {d: pool.submit(_start_domain, fence.nets[d], root / d.value)
                           for d in domains}
                concurrent.futures.wait(futures.values())
            servers: dict[Domain, DomainServers] = {}
            for domain, future in futures.items():
                if future.exception() is None:
                    servers[domain] = future.result()
                    for process in servers[domain].processes():
                        group.add(process)
            for future in futures.values():
                future.result()  # the first domain that did not come up, with its error

            secrets = root / "secrets"
            secrets.mkdir(mode=0o700)
            entries = {}
            for domain, domain_servers in servers.items():
                key_file = secrets / f"{domain.value}.key"
                key_file.touch(mode=0o600)
                key_file.write_text(generate_domain_key() + "\n")
                entries[domain.value] = _domain_entry(domain_servers,
                                                      _seed(domain_servers, secrets), key_file)
            data: dict[str, Any] = {
                "version": 1,
                "development": True,
                # the broker of processes of no domain (the CLI's own app), in the root
                # namespace: never the machine's Redis on 6379, the default
                "broker_url": shared.url,
                "spool_dir": str(root / "spool"),
                "s3": {"part_size_mib": 5},
                "gcs": {"project": GCS_PROJECT, "chunk_size_mib": 1},
                "retention": {"pii_days": 29, "metadata_days": 365},
                # a step that cannot reach its store fails within seconds, not half an hour
                "retries": {"window_seconds": 6, "backoff_seconds": 1,
                            "backoff_max_seconds": 2},
                "reconcile": {"lease_seconds": 10, "interval_seconds": 10,
                              "handoff_grace_seconds": 30, "orphan_after_seconds": 600},
                "domains": entries,
            }
            config_path = root / "regionvault.yaml"
            config_path.write_text(yaml.safe_dump(data, sort_keys=False))
            config = load_config(config_path, env={})
            for domain_servers in servers.values():
                _create_buckets(config, domain_servers)

            stack = FencedStack(root=root, fence=fence, group=group, shared_broker=shared,
                                servers=servers, config_data=data, config_path=config_path)
            for domain in domains:
                stack.start_worker(domain)
            for domain in domains:
                stack.wait_for_worker(domain)
            yield stack
    finally:
        shutil.rmtree(root, ignore_errors=True)
