"""The fault stack: the real embedded stack with fault proxies in front of S3 and GCS.

Real ``celery worker`` processes per domain (two pool processes each, so a duplicate can run
beside the original), beat running each domain's reconciler every two seconds, a
Redis-protocol broker that keeps an append-only file (so a restart can keep or lose its
data), and a ``FaultProxy`` between the workers and each object store, throttled so that
every step lasts long enough to be hit. Nobody in these tests runs an operator command
unless a cell says so: healing is the reconciler's job.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from regionvault.devstack import sample
from regionvault.devstack.services import ManagedProcess, RedisService, start_redis
from regionvault.devstack.stack import DevStack
from regionvault.domains import Domain
from tests.faults.proxy import FaultProxy, Mode

MIB = 1024 * 1024
#: bytes per second through each store proxy: a 16 MiB backup takes ~2 s to upload
STORE_RATE = 8 * MIB

#: about 16 MiB that zstd cannot shrink, in eu only: the stored object stays ~16 MiB
BULK = sample.SampleSource(
    name="bulk",
    data_class="pii",
    seed_sql="""
        CREATE TABLE blobs (id int PRIMARY KEY, b bytea NOT NULL);
        INSERT INTO blobs SELECT r, decode(string_agg(md5(random()::text || r || g), ''), 'hex')
            FROM generate_series(1, 128) AS r, generate_series(1, 8192) AS g GROUP BY r;
    """,
)

FAULT_SETTINGS: dict[str, Any] = {
    # a dead owner is seen within a few seconds; the reconciler ticks every two
    "reconcile": {"lease_seconds": 3, "interval_seconds": 2, "handoff_grace_seconds": 8,
                  "orphan_after_seconds": 3600, "max_resumes": 5},
    # transient store faults are retried for up to ~30 s, then the step fails
    "retries": {"window_seconds": 30, "backoff_seconds": 1, "backoff_max_seconds": 4},
    "s3": {"part_size_mib": 5},
}


@dataclass
class FaultStack(DevStack):
    """A DevStack whose broker keeps an AOF and whose stores sit behind fault proxies."""

    s3_proxy: FaultProxy | None = field(default=None, init=False)
    gcs_proxy: FaultProxy | None = field(default=None, init=False)
    #: worker restarts done by the supervisor (not by a test), for the record
    supervisor_restarts: list[str] = field(default_factory=list, init=False)
    _supervising: threading.Lock = field(default_factory=threading.Lock, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)

    def supervise(self) -> None:
        """Restart a worker that exited, as Kubernetes restarts a crashed container.

        Needed for real: on a broker connection loss, Celery 5.7's worker with kombu 5.7's
        Redis transport exits ("Unrecoverable error: AttributeError ... 'hostname'", raised
        while it restores unacknowledged messages on a closed connection). In a cluster the
        pod restarts; here this thread does."""
        def loop() -> None:
            while not self._stopping.wait(0.5):
                with self._supervising:
                    for domain, process in list(self.worker_processes.items()):
                        if not process.alive() and not self._stopping.is_set():
                            self.supervisor_restarts.append(
                                f"{domain.value}: exited with {process.returncode}")
                            process.stop(timeout=10)
                            self.start_worker(domain)

        threading.Thread(target=loop, name="supervisor", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        with self._supervising:
            super().stop()

    def _start_servers(self) -> None:
        super()._start_servers()
        assert self.redis is not None and self.s3 is not None and self.gcs is not None
        # the broker again, with an append-only file: restarts may keep or lose its data
        self.redis.stop()
        self.redis = self.group.add(start_redis(self.data_dir / "redis", persistent=True))
        self.s3_proxy = FaultProxy(("127.0.0.1", self.s3.port), name="s3").start()
        self.gcs_proxy = FaultProxy(("127.0.0.1", self.gcs.port), name="gcs").start()
        for proxy in (self.s3_proxy, self.gcs_proxy):
            proxy.throttle(STORE_RATE)
        self.env.update({
            "REGIONVAULT_BROKER_URL": self.redis.url,
            "REGIONVAULT_S3_ENDPOINT": self.s3_proxy.url(),
            "REGIONVAULT_GCS_ENDPOINT": self.gcs_proxy.url(),
        })

    # --- faults --------------------------------------------------------------------------

    def worker(self, domain: Domain = Domain.EU) -> ManagedProcess:
        return self.worker_processes[domain]

    def pool_children(self, domain: Domain = Domain.EU) -> list[int]:
        pid = self.worker(domain).pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]

    def freeze(self, domain: Domain = Domain.EU) -> None:
        """Stop the whole worker where it stands (SIGSTOP to its process group)."""
        os.killpg(self.worker(domain).pid, signal.SIGSTOP)

    def thaw(self, domain: Domain = Domain.EU) -> None:
        os.killpg(self.worker(domain).pid, signal.SIGCONT)

    def kill_worker(self, domain: Domain = Domain.EU) -> None:
        """SIGKILL the worker's main process and every pool process: node loss, OOM, eviction.
        Then start it again, as a supervisor (Kubernetes) would."""
        with self._supervising:
            process = self.worker(domain)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.stop(timeout=10)
            self.start_worker(domain)
        self.wait_for_workers([domain], timeout=60)

    def kill_child(self, pid: int) -> None:
        """SIGKILL one pool process; the worker's main process stays and replaces it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def restart_broker(self, *, keep_data: bool) -> None:
        """Kill the broker and start it again on its port, with or without its data."""
        assert self.redis is not None
        old: RedisService = self.redis
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.process.pid, signal.SIGKILL)
        old.process.stop(timeout=10)
        workdir = self.data_dir / "redis"
        if not keep_data:
            for entry in workdir.iterdir():
                if entry.name.startswith("appendonly") or entry.suffix in (".aof", ".rdb"):
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.redis = self.group.add(start_redis(workdir, port=old.port, persistent=True))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def heal_proxies(self) -> None:
        for proxy in (self.s3_proxy, self.gcs_proxy):
            assert proxy is not None
            proxy.set_mode(Mode.PASS)
            proxy.throttle(STORE_RATE)


# Package scope: the fault stack (three workers, beat ticking every two seconds) is gone
# before the integration tests start their own stack.
@pytest.fixture(scope="package")
def fault_stack() -> Iterator[FaultStack]:
    root = Path(tempfile.mkdtemp(prefix="rv-fault-stack-"))
    dev = FaultStack(data_dir=root, beat=True, flower=False, concurrency=2, sources=(BULK,),
                     config_overrides=FAULT_SETTINGS)
    saved = dict(os.environ)
    try:
        dev.start()
        dev.supervise()
        os.environ.update(dev.env)
        _reset_clients()
        yield dev
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for proxy in (dev.s3_proxy, dev.gcs_proxy):
            if proxy is not None:
                proxy.stop()
        dev.stop()
        keep = os.environ.get("REGIONVAULT_FAULT_LOGS")  # a place to keep the logs, if asked
        if keep and dev.logs.exists():
            shutil.copytree(dev.logs, keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
        _reset_clients()


@pytest.fixture(autouse=True)
def _healthy_proxies(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fault_stack" in request.fixturenames:
        request.getfixturevalue("fault_stack").heal_proxies()


def _reset_clients() -> None:
    """The app of this process points at the stack of the moment again (the journal and the
    leases follow the app's result backend)."""
    from regionvault.config import load_config
    from workers.app import app, configure

    if os.environ.get("REGIONVAULT_CONFIG"):
        configure(app, load_config())
