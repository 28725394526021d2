"""Prometheus metrics of a domain worker, exported on ``REGIONVAULT_METRICS_PORT`` (9808).

Steps run in the pool's child processes, so the metrics use prometheus_client's multiprocess
mode: every process writes to ``PROMETHEUS_MULTIPROC_DIR`` and the exporter in the worker's
main process adds them up. A worker without that variable gets a private directory.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from workers.names import STEP_TASKS, TASK_PREFIX, task_name
from workers.runtime import serves, worker_domain

# Must be decided before prometheus_client is imported: it picks its value store at import.
# Only a worker process gets a private directory (not `celery inspect` run in its pod).
_IS_WORKER = worker_domain() is not None and "worker" in sys.argv
if _IS_WORKER and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _private_dir = tempfile.mkdtemp(prefix="rv-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _private_dir
    _creator = os.getpid()

    def _remove_private_dir() -> None:
        # only the worker's main process: pool children inherit this handler
        if os.getpid() == _creator:
            shutil.rmtree(_private_dir, ignore_errors=True)

    atexit.register(_remove_private_dir)

from celery.signals import (  # noqa: E402
    task_failure,
    task_prerun,
    task_success,
    worker_init,
    worker_process_shutdown,
)
from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

log = logging.getLogger("regionvault.metrics")

DEFAULT_PORT = 9808
STEP_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 150, 300, 600, 1800, 3600, 7200, 14400)

STEP_DURATION = Histogram(
    "regionvault_step_duration_seconds", "Duration of a backup step that succeeded",
    ["domain", "source", "step"], buckets=STEP_BUCKETS)
STEP_BYTES = Counter(
    "regionvault_step_bytes", "Bytes moved by backup steps", ["domain", "source", "step"])
STEP_FAILURES = Counter(
    "regionvault_step_failures", "Backup steps that failed after their retries",
    ["domain", "source", "step"])
LAST_VERIFIED = Gauge(
    "regionvault_last_verified_backup_timestamp_seconds",
    "Snapshot time (Unix seconds) of the newest verified backup of a source",
    ["domain", "source"], multiprocess_mode="max")
MISROUTED = Counter(
    "regionvault_misrouted_tasks_refused",
    "Tasks refused because they named another domain than the worker's",
    ["worker_domain", "task_domain"])
VERIFY_MISMATCHES = Counter(
    "regionvault_verification_mismatches",
    "Verifications that found a copy not matching its manifest", ["domain", "source", "store"])
DRILL_FAILURES = Counter(
    "regionvault_drill_failures", "Restore drills that failed", ["domain"])
DRILL_LAST_SUCCESS = Gauge(
    "regionvault_drill_last_success_timestamp_seconds",
    "Time (Unix seconds) of the last restore drill that passed", ["domain"],
    multiprocess_mode="max")
RECONCILE_ACTIONS = Counter(
    "regionvault_reconciler_actions", "What the reconciler did to backups, by action",
    ["domain", "action"])
RECONCILE_SWEPT = Counter(
    "regionvault_reconciler_swept",
    "Leftovers the reconciler removed: spool directories, open uploads, manifest-less objects",
    ["domain", "kind"])
RECONCILE_ERRORS = Counter(
    "regionvault_reconciler_errors", "Backups or stores the reconciler could not judge",
    ["domain"])
RECONCILE_LAST_RUN = Gauge(
    "regionvault_reconciler_last_run_timestamp_seconds",
    "Time (Unix seconds) of the last reconciler tick of a domain", ["domain"],
    multiprocess_mode="max")
INTEGRITY_MISMATCHES = Counter(
    "regionvault_integrity_mismatches",
    "Copies an integrity sample read back that did not match their manifest",
    ["domain", "store"])
INTEGRITY_BYTES = Counter(
    "regionvault_integrity_bytes_read",
    "Ciphertext bytes integrity samples read back whole and found matching", ["domain", "store"])
INTEGRITY_LAST_SAMPLE = Gauge(
    "regionvault_integrity_last_sample_timestamp_seconds",
    "Time (Unix seconds) of the last integrity sample of a domain that reached both stores",
    ["domain"], multiprocess_mode="max")
EXPIRY_REMOVED = Counter(
    "regionvault_expiry_removed",
    "Backups the expiry sweep removed from a store, by the data class whose rule removed them",
    ["domain", "store", "data_class"])
EXPIRY_QUARANTINED = Counter(
    "regionvault_expiry_quarantined",
    "Copies the expiry sweep found quarantined (no manifest, or one it cannot trust), counted "
    "at every sweep that finds them", ["domain", "store"])
EXPIRY_LAST_SWEEP = Gauge(
    "regionvault_expiry_last_sweep_timestamp_seconds",
    "Time (Unix seconds) of the last expiry sweep that finished a store completely",
    ["domain", "store"], multiprocess_mode="max")
# The newest measurement wins, whichever pool process made it: the age falls when the oldest
# backup goes, so "max" would keep a stale peak, and "liveall" a series per process.
OLDEST_PII_AGE = Gauge(
    "regionvault_oldest_pii_age_seconds",
    "Age of the oldest pii (or quarantined) backup left in a store by the last expiry sweep",
    ["domain", "store"], multiprocess_mode="mostrecent")
WORKER_INFO = Gauge(
    "regionvault_worker_info", "1 while a worker of the domain runs (an exporter answers)",
    ["domain"], multiprocess_mode="liveall")

#: every metric family name this module exports (as Prometheus sees them)
EXPORTED = {
    "regionvault_step_duration_seconds_bucket", "regionvault_step_duration_seconds_sum",
    "regionvault_step_duration_seconds_count", "regionvault_step_bytes_total",
    "regionvault_step_failures_total", "regionvault_last_verified_backup_timestamp_seconds",
    "regionvault_misrouted_tasks_refused_total", "regionvault_verification_mismatches_total",
    "regionvault_drill_failures_total", "regionvault_drill_last_success_timestamp_seconds",
    "regionvault_worker_info", "regionvault_reconciler_actions_total",
    "regionvault_reconciler_swept_total", "regionvault_reconciler_errors_total",
    "regionvault_reconciler_last_run_timestamp_seconds",
    "regionvault_integrity_mismatches_total", "regionvault_integrity_bytes_read_total",
    "regionvault_integrity_last_sample_timestamp_seconds",
    "regionvault_expiry_removed_total", "regionvault_expiry_quarantined_total",
    "regionvault_expiry_last_sweep_timestamp_seconds", "regionvault_oldest_pii_age_seconds",
    # computed at scrape time by the exporter's own collectors (below), not by the pool
    "regionvault_queue_depth", "regionvault_queue_depth_up", "regionvault_source_rpo_seconds",
}

_started: dict[str, float] = {}
_DRILL_TASK = task_name("restore_drill")

#: seconds a scrape waits for the broker's answer to LLEN before it leaves the sample out
BROKER_TIMEOUT_SECONDS = 2.0


class QueueDepthCollector(Collector):
    """``regionvault_queue_depth{domain, queue}``: the messages waiting in the domain's
    queue, read with LLEN from the domain's own broker at every scrape, and
    ``regionvault_queue_depth_up`` (1 when the broker answered, else 0).

    Celery's Redis transport keeps a queue's waiting messages in a Redis list named after the
    queue (``backup.eu``). With message priorities it adds lists named ``backup.eu\x06\x163``
    and so on (kombu's ``Channel._q_for_pri``); regionvault sends no priorities, so every
    message is in the plain list. This reads exactly the list KEDA's redis trigger reads
    (``listName`` in charts/regionvault/templates/autoscaling.yaml), so the graph shows the
    number the autoscaler acts on. A message a worker has taken (prefetched or running) is no
    longer in the list: neither counts it.

    A broker that does not answer must not break the scrape: the depth sample is left out,
    ``regionvault_queue_depth_up`` is 0, and the first failure of an outage is logged."""

    def __init__(self, domain: str, queue: str, broker_url: str,
                 timeout: float = BROKER_TIMEOUT_SECONDS) -> None:
        self.domain, self.queue, self.broker_url, self.timeout = domain, queue, broker_url, timeout
        self._client: Any = None
        self._failing = False

    def _redis(self) -> Any:
        if self._client is None:
            import redis  # kombu's Redis transport needs it: every worker has it

            self._client = redis.Redis.from_url(
                self.broker_url, socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout)
        return self._client

    def depth(self) -> int | None:
        """The list's length, or None when the broker does not answer."""
        try:
            length = int(self._redis().llen(self.queue))
        except Exception as exc:  # any broker failure means "no sample"
            if not self._failing:
                log.warning("queue depth of %s not exported: the broker of domain %s does not "
                            "answer (%s)", self.queue, self.domain, exc)
            self._failing = True
            return None
        if self._failing:
            log.info("the broker of domain %s answers again: queue depth of %s exported",
                     self.domain, self.queue)
        self._failing = False
        return length

    def collect(self) -> Iterator[Metric]:
        labels = [self.domain, self.queue]
        length = self.depth()
        up = GaugeMetricFamily("regionvault_queue_depth_up",
                               "1 when the domain's broker answered the scrape's LLEN, else 0",
                               labels=["domain", "queue"])
        up.add_metric(labels, 0 if length is None else 1)
        yield up
        if length is not None:
            depth = GaugeMetricFamily(
                "regionvault_queue_depth",
                "Messages waiting in the domain's Celery queue (the Redis list KEDA reads)",
                labels=["domain", "queue"])
            depth.add_metric(labels, length)
            yield depth

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no broker call at registration


class SourceRPOCollector(Collector):
    """``regionvault_source_rpo_seconds{domain, source}``: each source's recovery point
    objective from the worker's configuration, so that dashboards compare a source's age
    (``time() - regionvault_last_verified_backup_timestamp_seconds``) with its own RPO."""

    def __init__(self, domain: str, rpo_seconds: Mapping[str, float]) -> None:
        self.domain, self.rpo_seconds = domain, dict(rpo_seconds)

    def collect(self) -> Iterator[Metric]:
        rpo = GaugeMetricFamily("regionvault_source_rpo_seconds",
                                "Recovery point objective of a source, from the configuration",
                                labels=["domain", "source"])
        for source, seconds in sorted(self.rpo_seconds.items()):
            rpo.add_metric([self.domain, source], seconds)
        yield rpo


def _rpo_of_sources(domain: Any) -> dict[str, float]:
    """Each source's RPO in seconds, from the worker's configuration (none without one)."""
    from workers.runtime import worker_config

    try:
        dcfg = worker_config().domain(domain)
    except Exception as exc:  # the metrics must not stop a worker
        log.warning("source RPOs of domain %s not exported: %s", domain.value, exc)
        return {}
    return {src.name: dcfg.rpo_for(src).total_seconds() for src in dcfg.sources}


@worker_init.connect
def _start_exporter(**_: Any) -> None:
    domain = worker_domain()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if domain is None or not directory:
        return
    # files of a previous run of this worker would be added to this run's numbers
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if os.path.isfile(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    from regionvault.domains import queue_name
    from workers.app import app  # configured for this domain: its own broker

    registry.register(QueueDepthCollector(domain.value, queue_name(domain),
                                          str(app.conf.broker_url)))
    registry.register(SourceRPOCollector(domain.value, _rpo_of_sources(domain)))
    port = int(os.environ.get("REGIONVAULT_METRICS_PORT", DEFAULT_PORT))
    start_http_server(port, addr=os.environ.get("REGIONVAULT_METRICS_ADDRESS", "0.0.0.0"),
                      registry=registry)
    WORKER_INFO.labels(domain=domain.value).set(1)
    log.info("metrics of domain %s on port %d", domain.value, port)


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())


def _labels(kwargs: dict[str, Any] | None) -> tuple[str, str] | None:
    kwargs = kwargs or {}
    domain, source = kwargs.get("domain"), kwargs.get("source")
    if not domain or not source or not serves(domain):
        return None
    return str(domain), str(source)


@task_prerun.connect
def _step_started(task_id: str, task: Any, **_: Any) -> None:
    if task.name in STEP_TASKS:
        _started[task_id] = time.monotonic()


@task_success.connect
def _step_succeeded(sender: Any, result: Any, **_: Any) -> None:
    started = _started.pop(sender.request.id, None)
    if sender.name == _DRILL_TASK:
        DRILL_LAST_SUCCESS.labels(domain=sender.request.kwargs.get("domain")).set(time.time())
        return
    labels = _labels(sender.request.kwargs)
    if sender.name not in STEP_TASKS or labels is None or not isinstance(result, dict):
        return
    step = sender.name.removeprefix(TASK_PREFIX)
    if started is not None:
        STEP_DURATION.labels(*labels, step).observe(time.monotonic() - started)
    STEP_BYTES.labels(*labels, step).inc(int(result.get("bytes") or 0))
    created = result.get("backup_created_at")
    if step == "verify" and created:
        LAST_VERIFIED.labels(*labels).set(datetime.fromisoformat(str(created)).timestamp())


@task_failure.connect
def _step_failed(sender: Any, task_id: str, exception: BaseException,
                 kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    _started.pop(task_id, None)
    if sender.name == _DRILL_TASK:
        DRILL_FAILURES.labels(domain=(kwargs or {}).get("domain", "")).inc()
        return
    labels = _labels(kwargs)
    if sender.name not in STEP_TASKS or labels is None:
        return
    step = sender.name.removeprefix(TASK_PREFIX)
    STEP_FAILURES.labels(*labels, step).inc()
    if step == "verify" and "failed verification" in str(exception):
        for store in ("s3", "gcs", "swift"):
            if f"{store} copy" in str(exception) or f"{store} manifest" in str(exception):
                VERIFY_MISMATCHES.labels(*labels, store).inc()


def record_reconcile(report: Any) -> None:
    """Count what one reconciler tick did (``regionvault.reconcile.Report``)."""
    for action, count in report.actions.items():
        if action != "leave":
            RECONCILE_ACTIONS.labels(domain=report.domain, action=action).inc(count)
    for kind, count in report.swept.items():
        RECONCILE_SWEPT.labels(domain=report.domain, kind=kind).inc(count)
    if report.errors:
        RECONCILE_ERRORS.labels(domain=report.domain).inc(len(report.errors))
    RECONCILE_LAST_RUN.labels(domain=report.domain).set(time.time())


def record_integrity(report: Any) -> None:
    """Count what one integrity sample found (``regionvault.integrity.SampleReport``)."""
    for store in ("s3", "gcs"):  # both series exist from the first sample on, at 0
        INTEGRITY_MISMATCHES.labels(domain=report.domain, store=store)
        INTEGRITY_BYTES.labels(domain=report.domain, store=store)
    for mismatch in report.mismatches:
        INTEGRITY_MISMATCHES.labels(domain=report.domain, store=mismatch.store).inc()
    for store, count in report.bytes_read.items():
        INTEGRITY_BYTES.labels(domain=report.domain, store=store).inc(count)
    if report.complete:  # a sample that missed a store is not a sample of the domain
        INTEGRITY_LAST_SAMPLE.labels(domain=report.domain).set(time.time())


def record_expiry(report: Any) -> None:
    """Count what one expiry sweep did (``regionvault.expiry.ExpiryReport``)."""
    domain = report.domain
    for store, sweep in report.stores.items():
        for data_class in ("pii", "metadata"):  # every series exists from the first sweep on
            EXPIRY_REMOVED.labels(domain=domain, store=store, data_class=data_class)
        EXPIRY_QUARANTINED.labels(domain=domain, store=store)
        for data_class, count in sweep.removed.items():
            EXPIRY_REMOVED.labels(domain=domain, store=store, data_class=data_class).inc(count)
        if sweep.quarantined:
            EXPIRY_QUARANTINED.labels(domain=domain, store=store).inc(len(sweep.quarantined))
        if sweep.listed:
            age = sweep.oldest_pii_age.total_seconds() if sweep.oldest_pii_age else 0.0
            OLDEST_PII_AGE.labels(domain=domain, store=store).set(age)
        if sweep.complete:
            EXPIRY_LAST_SWEEP.labels(domain=domain, store=store).set(report.at.timestamp())


def record_last_sweeps(domain: str, last_sweeps: Mapping[str, datetime]) -> None:
    """The last complete sweep of each store, from the sweep ledger: set at every sweep, so a
    worker restarted while a store is down still shows how long ago it was last swept."""
    for store, at in last_sweeps.items():
        EXPIRY_LAST_SWEEP.labels(domain=domain, store=store).set(at.timestamp())
