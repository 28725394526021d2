"""The embedded stack: every real part of regionvault on one machine, on free ports.

Redis-protocol broker, PostgreSQL with sample sources, S3 (moto) and GCS emulators with the
buckets of every domain created in their regions, one ``celery worker`` per domain, beat and
Flower. ``DevStack.start`` writes ``<data dir>/dev.env`` with every endpoint, so that with it
sourced every ``regionvault`` command works against the stack.

Celery is run here as programs, exactly as the servers are and as Compose and the chart run
it (``celery -A workers worker``, ``celery inspect ping``, ``regionvault flower``): this module
is part of the core, which imports no Celery.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from regionvault.config import Config, load_config
from regionvault.devstack import journeys, sample
from regionvault.devstack.bigtable import BigtableService, start_bigtable
from regionvault.devstack.mariadb import MariaDBService, start_mariadb
from regionvault.devstack.services import (
    DevstackError,
    GCSService,
    KMSService,
    ManagedProcess,
    PostgresService,
    RedisService,
    S3Service,
    ServiceGroup,
    ServiceStartError,
    free_port,
    start_gcs,
    start_kms,
    start_postgres,
    start_process,
    start_redis,
    start_s3,
)
from regionvault.devstack.swift import SwiftService, start_swift
from regionvault.domains import Domain, queue_name
from regionvault.provision import provision_bucket
from regionvault.stores.lifecycle import GCSLifecycle, S3Lifecycle


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the block (boto3 reads credentials
    there), as they were afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


#: dummy credentials for moto; real ones never go near the embedded stack
DEV_AWS_ENV = {"AWS_ACCESS_KEY_ID": "regionvault-dev", "AWS_SECRET_ACCESS_KEY": "regionvault-dev"}

Say = Callable[[str], None]


@dataclass
class DevStack:
    data_dir: Path
    #: a configuration of your own (its sources must be reachable); None = sample sources
    config_file: Path | None = None
    workers: bool = True
    beat: bool = True
    flower: bool = True
    concurrency: int = 1
    #: sample sources created in every domain when no config_file is given
    sources: tuple[sample.SampleSource, ...] = sample.SAMPLE_SOURCES
    #: merged into the sample configuration, e.g. {"s3": {"max_upload_mib_per_second": 2}}
    config_overrides: dict[str, Any] = field(default_factory=dict)
    #: also the Autopilot Journeys sample (``devstack.journeys``): MariaDB, a Bigtable
    #: emulator and Swift (Cloud Files) servers, and two au sources placed on swift + gcs
    journeys: bool = False
    #: a Redis-protocol broker per domain (``domains.<d>.broker_url`` in the sample
    #: configuration), and a beat and a Flower per domain: the per-domain topology
    per_domain_brokers: bool = False
    say: Say = field(default=lambda _: None)

    group: ServiceGroup = field(default_factory=ServiceGroup, init=False)
    env: dict[str, str] = field(default_factory=dict, init=False)
    redis: RedisService | None = field(default=None, init=False)
    #: each domain's own broker (``per_domain_brokers``)
    domain_brokers: dict[Domain, RedisService] = field(default_factory=dict, init=False)
    #: where each Flower listens: a domain's own, or None's for the shared broker's
    flower_ports: dict[Domain | None, int] = field(default_factory=dict, init=False)
    postgres: PostgresService | None = field(default=None, init=False)
    s3: S3Service | None = field(default=None, init=False)
    gcs: GCSService | None = field(default=None, init=False)
    kms: KMSService | None = field(default=None, init=False)
    mariadb: MariaDBService | None = field(default=None, init=False)
    bigtable: BigtableService | None = field(default=None, init=False)
    swift: SwiftService | None = field(default=None, init=False)
    worker_processes: dict[Domain, ManagedProcess] = field(default_factory=dict, init=False)
    #: where each domain worker's Prometheus exporter listens
    metrics_ports: dict[Domain, int] = field(default_factory=dict, init=False)
    config: Config | None = field(default=None, init=False)

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    # --- start ------------------------------------------------------------------------------

    def start(self) -> DevStack:
        self.data_dir = self.data_dir.resolve()
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.per_domain_brokers and self.config_file is not None:
            raise DevstackError("per-domain brokers come from your configuration file "
                                "(domains.<d>.broker_url); drop --per-domain-brokers")
        try:
            self._start_servers()
            config_path = self.config_file or self._write_sample_config()
            self.env["REGIONVAULT_CONFIG"] = str(config_path)
            self.config = load_config(config_path, env=self.env)
            self._create_buckets(self.config)
            if self.config_file is None:
                self._init_keyrings(self.config)
            self._write_env_file()
            if self.workers:
                for domain in self.config.domains:
                    self.start_worker(domain)
                self.wait_for_workers(list(self.config.domains))
            if self.beat:
                self._start_beat()
            if self.flower:
                self._start_flower()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_servers(self) -> None:
        self.say("starting Redis-protocol server")
        self.redis = self.group.add(start_redis(self.data_dir / "redis"))
        if self.per_domain_brokers:
            for domain in Domain:
                self.say(f"starting the broker of {domain.value}")
                self.domain_brokers[domain] = self.group.add(
                    start_redis(self.data_dir / f"redis-{domain.value}"))
        self.say("starting PostgreSQL")
        self.postgres = self.group.add(start_postgres(self.data_dir / "postgres"))
        self.say("starting S3 emulator (moto)")
        self.s3 = self.group.add(start_s3(self.data_dir / "s3"))
        self.say("starting GCS emulator")
        self.gcs = self.group.add(start_gcs(self.data_dir / "gcs"))
        self.say("starting KMS emulator (moto)")
        self.kms = self.group.add(start_kms(self.data_dir / "kms"))
        if self.journeys:
            self._start_journeys_servers()
        # No REGIONVAULT_PG_BIN here: the PostgreSQL tools are chosen by each server's major
        # (regionvault.sources.pgtools), and one the developer configured is left as it is.
        self.env.update({
            "REGIONVAULT_KMS_ENDPOINT": self.kms.endpoint,
            "REGIONVAULT_BROKER_URL": self.redis.url,
            "REGIONVAULT_S3_ENDPOINT": self.s3.endpoint,
            "REGIONVAULT_GCS_ENDPOINT": self.gcs.endpoint,
            "REGIONVAULT_DEV_POSTGRES": self.postgres.dsn(),
            **DEV_AWS_ENV,
        })

    def _start_journeys_servers(self) -> None:
        self.say("starting MariaDB")
        self.mariadb = self.group.add(start_mariadb(self.data_dir / "mariadb"))
        self.say("starting Bigtable emulator")
        self.bigtable = self.group.add(start_bigtable(self.data_dir / "bigtable"))
        self.say("starting Swift (Cloud Files) servers")
        self.swift = self.group.add(start_swift(self.data_dir / "swift"))
        self.env["REGIONVAULT_SWIFT_AUTH_URL"] = self.swift.identity_url

    def _journeys_entries(self, secrets_dir: Path) -> dict[str, Any]:
        """Seed the Journeys sources and return what the au domain gains (secrets in files)."""
        assert self.mariadb is not None and self.bigtable is not None
        assert self.swift is not None
        mysql_dsn = journeys.seed_mysql(self.mariadb, "au_journeys", "journeys",
                                        secrets.token_urlsafe(16))
        bigtable_dsn = journeys.seed_bigtable(self.bigtable, "journeys-au")
        self.say("seeded the Journeys sources (MariaDB, Bigtable)")
        return journeys.domain_entries(
            mysql_dsn_file=str(self._secret_file(secrets_dir / "au-journeys-mysql.dsn",
                                                 mysql_dsn)),
            bigtable_dsn_file=str(self._secret_file(secrets_dir / "au-journeys-bigtable.dsn",
                                                    bigtable_dsn)),
            swift_user=self.swift.user,
            api_key_file=str(self._secret_file(secrets_dir / "au-cloud-files.key",
                                               self.swift.key)),
            mysql_scratch_file=str(self._secret_file(secrets_dir / "mysql-scratch.dsn",
                                                     self.mariadb.root_dsn())))

    def _write_sample_config(self) -> Path:
        assert self.postgres is not None
        secrets_dir = self.data_dir / "secrets"
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        dsn_files: dict[tuple[Domain, str], Path] = {}
        for domain in Domain:
            for src in self.sources:
                name = src.name_in(domain)
                db = sample.database_name(domain, name)
                self.postgres.create_database(db)
                sample.seed(self.postgres.dsn(db), domain, src)
                dsn_files[(domain, name)] = self._secret_file(
                    secrets_dir / f"{domain.value}-{name}.dsn", self.postgres.dsn(db))
        self.say(f"seeded {len(dsn_files)} sample databases")
        # drills create and drop their scratch databases on the same server
        scratch = self._secret_file(secrets_dir / "scratch.dsn", self.postgres.dsn())
        targets = {}
        for domain in Domain:
            name = f"restore_target_{domain.value}"
            self.postgres.create_database(name)
            targets[domain] = self._secret_file(secrets_dir / f"{domain.value}-restore-target.dsn",
                                                self.postgres.dsn(name))
        keyrings = sample.keyring_files(self.data_dir / "keys")
        for old in keyrings.values():  # the emulators start empty: so do the keys
            old.unlink(missing_ok=True)
        path = self.data_dir / "regionvault.yaml"
        data = sample.sample_config(
            data_dir=self.data_dir, sources=self.sources, dsn_files=dsn_files,
            keyring_files=keyrings, scratch_dsn_file=scratch, restore_target_files=targets)
        if self.per_domain_brokers:
            for domain, broker in self.domain_brokers.items():
                data["domains"][domain.value]["broker_url"] = broker.url
                if self.flower:
                    port = self.flower_ports.setdefault(domain, free_port())
                    data["domains"][domain.value]["flower_url"] = f"http://127.0.0.1:{port}"
        if self.journeys:
            au = data["domains"][journeys.DOMAIN.value]
            entries = self._journeys_entries(secrets_dir)
            au["swift"] = entries["swift"]
            au["sources"] = [*au["sources"], *entries["sources"]]
            au["drill"]["scratch"] = entries["drill_scratch"]
        sample.write_yaml(path, _merged(data, self.config_overrides))
        return path

    @staticmethod
    def _secret_file(path: Path, value: str) -> Path:
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        return path

    def _create_buckets(self, config: Config, *, s3_only: bool = False) -> None:
        assert self.s3 is not None and self.gcs is not None
        gcs = storage.Client(project=config.gcs.project, credentials=AnonymousCredentials(),
                             client_options={"api_endpoint": self.gcs.endpoint})
        for domain, dcfg in config.domains.items():
            s3 = boto3.client("s3", endpoint_url=self.s3.endpoint, region_name=dcfg.aws_region,
                              aws_access_key_id=DEV_AWS_ENV["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=DEV_AWS_ENV["AWS_SECRET_ACCESS_KEY"])
            kwargs = {} if dcfg.aws_region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": dcfg.aws_region}}
            s3.create_bucket(Bucket=dcfg.s3_bucket, **kwargs)
            # GDPR backstop in the store itself, exactly as `regionvault provision` sets it.
            provision_bucket(S3Lifecycle(dcfg.s3_bucket, dcfg.aws_region, client=s3),
                             domain, config)
            if s3_only:
                continue
            bucket = gcs.bucket(dcfg.gcs_bucket)
            bucket.create(location=dcfg.gcp_location)
            # the emulator ignores the location given at creation; set it as GCS would hold it
            bucket._patch_property("location", dcfg.gcp_location.upper())
            bucket.patch()
            provision_bucket(GCSLifecycle(dcfg.gcs_bucket, project=config.gcs.project,
                                          client=gcs), domain, config)
            self.say(f"buckets of {domain.value}: s3://{dcfg.s3_bucket} ({dcfg.aws_region}), "
                     f"gs://{dcfg.gcs_bucket} ({dcfg.gcp_location})")
            if dcfg.swift is not None and self.swift is not None:
                self.swift.create_container(dcfg.swift.region, dcfg.swift.container)
                self.say(f"Cloud Files container of {domain.value}: "
                         f"swift://{dcfg.swift.container} ({dcfg.swift.region})")

    def _init_keyrings(self, config: Config) -> None:
        """Each domain's first keys, as ``regionvault keys init`` makes them (a KMS key in
        the domain's region for the domains of ``sample.KMS_DOMAINS``)."""
        from regionvault import keys

        with environment(DEV_AWS_ENV):
            for domain in config.domains:
                doc = keys.init(config, domain)
                self.say(f"keys of {domain.value}: "
                         + ", ".join(f"{k.wrapper} {k.id}" for k in doc.keys))

    def restart_kms(self) -> None:
        """Start the KMS emulator again on its port. moto keeps nothing, so every KMS key is
        lost, as when a region's KMS is gone for good: each KMS domain gets a new KMS key
        (``keys rotate --wrapper aws-kms``); its older backups open through the escrow."""
        from regionvault import keys

        assert self.kms is not None and self.config is not None
        self.kms.restart()
        with environment(DEV_AWS_ENV):
            for domain, dcfg in self.config.domains.items():
                if dcfg.keyring is not None and "aws-kms" in dcfg.keyring.wrappers:
                    keys.rotate(self.config, domain, ["aws-kms"])

    def restart_s3(self) -> None:
        """Start the S3 emulator again on its port; moto keeps nothing, so the buckets are
        made again (empty), as after a real regional outage with the data lost."""
        assert self.s3 is not None and self.config is not None
        self.s3.restart()
        self._create_buckets(self.config, s3_only=True)

    # --- celery processes -------------------------------------------------------------------

    def celery_env(self, domain: Domain | None = None) -> dict[str, str]:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env.pop("REGIONVAULT_DOMAIN", None)
        # the dev server's admin DSN is for the developer's psql (dev.env); no process of
        # regionvault needs it, and it opens every domain's sample databases
        env.pop("REGIONVAULT_DEV_POSTGRES", None)
        if domain is not None:
            env["REGIONVAULT_DOMAIN"] = domain.value
        return env

    def _celery(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "workers", *args]

    def worker_name(self, domain: Domain) -> str:
        return f"{domain.value}@regionvault-dev-{os.getpid()}"

    def start_worker(self, domain: Domain) -> ManagedProcess:
        self.say(f"starting worker pool of {domain.value} on queue {queue_name(domain)}")
        port = self.metrics_ports.setdefault(domain, free_port())
        metrics_dir = self.data_dir / "metrics" / domain.value
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env = {**self.celery_env(domain), "REGIONVAULT_METRICS_PORT": str(port),
               "REGIONVAULT_METRICS_ADDRESS": "127.0.0.1",
               "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        process = start_process(
            f"worker-{domain.value}",
            self._celery("worker", "-Q", queue_name(domain), "-n", self.worker_name(domain),
                         "--concurrency", str(self.concurrency), "--loglevel", "INFO",
                         "--without-mingle", "--without-gossip"),
            log_path=self.logs / f"worker-{domain.value}.log", env=env, cwd=Path.cwd())
        self.group.add(process)
        self.worker_processes[domain] = process
        return process

    def stop_worker(self, domain: Domain) -> None:
        process = self.worker_processes.pop(domain, None)
        if process is not None:
            process.stop()

    def broker_of(self, domain: Domain | None) -> str:
        """The broker URL of ``domain``'s processes (the shared one for None)."""
        if self.config is not None:
            return self.config.broker_for(domain)
        return self.env["REGIONVAULT_BROKER_URL"]

    def workers_answering(self, names: Collection[str], timeout: float = 1.0,
                          domain: Domain | None = None) -> set[str]:
        """Which of the workers ``names`` answer a ping within ``timeout`` seconds, asked with
        ``celery inspect ping`` on ``domain``'s broker (a bare Celery: the answer needs no
        configuration of ours). A broker that is down or restarting answers nothing."""
        argv = [sys.executable, "-m", "celery", "--broker", self.broker_of(domain),
                "inspect", "ping", "--destination", ",".join(sorted(names)),
                "--timeout", str(timeout), "--json"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                                  env=self.celery_env(), check=False)
        except subprocess.TimeoutExpired:
            return set()
        if done.returncode != 0:  # 69: no node replied (or no broker to ask)
            return set()
        try:
            replies = json.loads(done.stdout)
        except ValueError:
            return set()
        return set(replies) & set(names) if isinstance(replies, dict) else set()

    def wait_for_workers(self, domains: list[Domain], timeout: float = 60.0) -> None:
        wanted = {self.worker_name(d) for d in domains}
        deadline = time.monotonic() + timeout
        answered: set[str] = set()
        while time.monotonic() < deadline:
            for domain, proc in self.worker_processes.items():
                if not proc.alive():
                    raise ServiceStartError(
                        f"the worker of domain {domain.value!r} exited during start-up",
                        service=proc.name, log_tail=proc.tail())
            # each worker answers on its own domain's broker
            for domain in domains:
                name = self.worker_name(domain)
                if name not in answered:
                    answered |= self.workers_answering({name}, domain=domain)
            if wanted <= answered:
                return
            time.sleep(0.2)
        raise ServiceStartError(
            f"workers {', '.join(sorted(wanted - answered))} did not answer a ping in "
            f"{timeout:.0f}s", service="workers")

    def _broker_groups(self) -> list[Domain | None]:
        """One entry per broker the stack's domains use: None for the shared broker (when a
        domain is on it), and each domain that has its own. A beat and a Flower run for each,
        with ``REGIONVAULT_DOMAIN`` set for a domain's own."""
        assert self.config is not None
        shared: list[Domain | None] = [None] if self.config.shared_broker_domains() else []
        return shared + [d for d in self.config.domains if self.config.has_own_broker(d)]

    def _start_beat(self) -> None:
        for domain in self._broker_groups():
            suffix = f"-{domain.value}" if domain else ""
            self.say(f"starting beat{' of ' + domain.value if domain else ''}")
            self.group.add(start_process(
                f"beat{suffix}", self._celery("beat", "--loglevel", "INFO", "--schedule",
                                              str(self.data_dir / f"beat-schedule{suffix}")),
                log_path=self.logs / f"beat{suffix}.log", env=self.celery_env(domain),
                cwd=Path.cwd()))

    def _start_flower(self) -> None:
        for domain in self._broker_groups():
            self._start_one_flower(domain)

    def _start_one_flower(self, domain: Domain | None) -> None:
        port = self.flower_ports.setdefault(domain, free_port())
        password_file = self.data_dir / "secrets" / "flower-password"
        password_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not password_file.exists():
            password_file.touch(mode=0o600)
            password_file.write_text(secrets.token_urlsafe(16))
        password = password_file.read_text().strip()
        # `regionvault flower` reads user:password from a file, never from its command line
        auth_file = self._secret_file(password_file.with_name("flower-basic-auth"),
                                      f"operator:{password}")
        suffix = f"-{domain.value}" if domain else ""
        self.say(f"starting Flower{' of ' + domain.value if domain else ''} on "
                 f"http://127.0.0.1:{port}")
        process = start_process(
            f"flower{suffix}", [sys.executable, "-m", "regionvault_cli",  # `regionvault`
                                "flower", "--address=127.0.0.1", f"--port={port}",
                                f"--basic-auth-file={auth_file}",
                                *(["--domain", domain.value] if domain else [])],
            log_path=self.logs / f"flower{suffix}.log", env=self.celery_env(),
            cwd=Path.cwd())
        self.group.add(process)
        # the shared broker's Flower, else the first domain's
        self.env.setdefault("REGIONVAULT_FLOWER_URL", f"http://127.0.0.1:{port}")
        self.env["REGIONVAULT_FLOWER_USER"] = "operator"
        self._write_env_file()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.alive():
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise ServiceStartError("Flower did not start listening", service="flower",
                                log_tail=process.tail())

    # --- env file and stop ------------------------------------------------------------------

    @property
    def env_file(self) -> Path:
        return self.data_dir / "dev.env"

    def _write_env_file(self) -> None:
        lines = ["# regionvault embedded stack: `source` this file, then use `regionvault ...`"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        self.env_file.touch(mode=0o600)
        self.env_file.write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        self.group.stop()
        self.worker_processes.clear()
