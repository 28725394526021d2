"""Benchmark: the whole backup chain against the bare tools it is built from, in one run.

Run by hand from the repository root (takes a few minutes on 2 cores for the default size):

    .venv/bin/python bench/chain.py [--size 0.5|1|2] [--repeat N] [--out bench/results/x.json]

It starts the embedded stack (``DevStack``: Redis-protocol broker, PostgreSQL, moto S3, GCS
emulator, one real celery worker per domain) in a temporary directory, fills one source with a
realistic table (bigint, uuid, timestamptz, text of words, jsonb, numeric; about 3:1 under
zstd), then measures on the same data, each at least twice (min and median):

- bare ``pg_dump -Fc -Z0 > /dev/null`` and ``pg_dump -Fc -Z0 | zstd -3 -T0 > /dev/null``;
- a naive two-cloud script: pg_dump | zstd | AES-256-CTR | tee to S3 (boto3 transfer
  manager) and GCS (client library, resumable upload) at once, against the same emulators;
- the regionvault chain (``start_run``, as ``regionvault backup --wait`` does), with the
  duration of each step read from the journal (polled: a step's ``running`` entry to its
  ``done`` entry), the spool's size and the worker's RSS sampled every 50 ms;
- each step against its bare primitive on the same bytes: a bare boto3 upload and a bare GCS
  upload of the chain's own encrypted object;
- bare ``pg_restore --single-transaction`` of a local dump file against ``regionvault
  restore``, each into a fresh database.

Figures are ratios against baselines measured in the same run, because the machine is noisy.
The numbers go to a JSON file under ``bench/results/``; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
READ_SIZE = MiB
SOURCE = "events"
#: rows of the events table per 0.5 GB on disk (about 300 bytes a row, index included)
ROWS_PER_HALF_GB = 1_750_000
SAMPLE_EVERY = 0.05

#: the table only: the stack creates it in every domain; the bench fills one domain's copy
SCHEMA_SQL = """
    CREATE TABLE events (id bigint PRIMARY KEY, event_id uuid NOT NULL,
                         occurred_at timestamptz NOT NULL, kind text NOT NULL,
                         message text NOT NULL, attrs jsonb NOT NULL,
                         amount numeric(12, 2) NOT NULL);
"""

_WORDS = [
    "the", "order", "was", "shipped", "to", "customer", "after", "payment", "cleared",
    "invoice", "refund", "pending", "account", "updated", "address", "changed", "login",
    "failed", "from", "new", "device", "session", "expired", "token", "renewed", "cart", "item",
    "added", "removed", "discount", "applied", "coupon", "code", "rejected", "warehouse",
    "stock", "low", "backorder", "delivery", "delayed", "by", "carrier", "tracking", "number",
    "assigned", "support", "ticket", "opened", "closed", "priority", "high", "normal", "email",
    "sent", "bounced", "subscription", "renewal", "cancelled", "trial", "started", "plan",
    "upgraded", "downgraded", "report",
]
_WORD = f"w[1 + (random() * {len(_WORDS) - 1})::int]"

#: rows {first}..{last}: a log line of twelve random words and a number, a jsonb of five keys
FILL_SQL = f"""
    INSERT INTO events
    SELECT i, gen_random_uuid(),
           timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second'
               + random() * interval '1 second',
           k[1 + (i % 7)],
           concat_ws(' ', {", ".join([_WORD] * 12)}, 'ref', (random() * 1e6)::int),
           jsonb_build_object('user', (random() * 100000)::int,
                              'country', c[1 + (random() * 9)::int],
                              'device', d[1 + (random() * 3)::int], 'ok', random() < 0.9,
                              'latency_ms', (random() * 5000)::int),
           round((random() * 10000)::numeric, 2)
    FROM generate_series({{first}}, {{last}}) AS i,
         (SELECT ARRAY[{", ".join(f"'{w}'" for w in _WORDS)}] AS w,
                 ARRAY['order', 'payment', 'login', 'shipment', 'refund', 'signup',
                       'support'] AS k,
                 ARRAY['DE', 'FR', 'US', 'AU', 'NL', 'IE', 'ES', 'IT', 'SE', 'PL'] AS c,
                 ARRAY['web', 'ios', 'android', 'api'] AS d) AS vocab
"""

#: a stand-in for `zstd -3 -T0` (stdin to stdout) when the zstd program is not installed
_PY_ZSTD = ("import sys, zstandard; zstandard.ZstdCompressor(level=3, threads=-1)"
            ".copy_stream(sys.stdin.buffer, sys.stdout.buffer)")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Measure:
    """Repeated timings of one thing, in seconds."""

    name: str
    runs: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> float:
        self.runs.append(seconds)
        return seconds

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": [round(r, 3) for r in self.runs], "min": round(self.min, 3),
                "median": round(self.median, 3)}


@contextmanager
def timing(measure: Measure) -> Iterator[None]:
    """Time the block into ``measure`` (its last run is ``measure.runs[-1]``)."""
    started = time.perf_counter()
    yield
    measure.add(time.perf_counter() - started)


def zstd_argv() -> tuple[list[str], str]:
    """(argv of a `zstd -3 -T0` filter, what it is)."""
    found = shutil.which("zstd")
    if found:
        return [found, "-3", "-T0", "-q", "-c"], "zstd program"
    return [sys.executable, "-c", _PY_ZSTD], "python-zstandard in a pipe (no zstd program)"


def shell(command: str, env: dict[str, str]) -> None:
    subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], env=env, check=True)


# --- sampling while the chain runs ------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid``, from /proc (no psutil in the project's dependencies)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pool_processes(worker_pid: int) -> list[int]:
    """The celery pool processes of a worker: its Python children (not pg_dump and the like)."""
    return [p for p in _children(worker_pid) if _comm(p).startswith(("python", "celery"))]


def reset_peak_rss(pids: list[int]) -> bool:
    """Reset VmHWM of ``pids`` (Linux: write 5 to clear_refs); False if not allowed."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            # a partial file can be renamed or removed between listing and stat
            with suppress(FileNotFoundError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


@dataclass
class ChainSample:
    """What was seen while one chain ran."""

    seconds: float = 0.0
    spool_peak: int = 0
    pool_rss_peak_kib: int = 0
    tree_rss_peak_kib: int = 0
    pool_hwm_kib: int = 0
    running_at: dict[str, datetime] = field(default_factory=dict)
    done_at: dict[str, datetime] = field(default_factory=dict)
    claimed_at: datetime | None = None
    steps: dict[str, float] = field(default_factory=dict)
    handoff_seconds: float = 0.0
    step_bytes: dict[str, str] = field(default_factory=dict)


# --- the naive two-cloud script ---------------------------------------------------------------


class _TellingReader:
    """A pipe with ``tell()``: the GCS client asks where a resumable upload's stream is."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos


def naive_two_cloud(dump_argv: list[str], zstd: list[str], env: dict[str, str], s3: Any,
                    s3_bucket: str, gcs_bucket: Any, key: str) -> int:
    """pg_dump | zstd | AES-256-CTR | tee to S3 and GCS at once; the ciphertext's size."""
    import boto3.s3.transfer
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    dump = subprocess.Popen(dump_argv, stdout=subprocess.PIPE, env=env)
    assert dump.stdout is not None
    comp = subprocess.Popen(zstd, stdin=dump.stdout, stdout=subprocess.PIPE)
    dump.stdout.close()
    assert comp.stdout is not None
    errors: list[BaseException] = []

    def to_s3(reader: BinaryIO) -> None:
        # the transfer manager's defaults: 8 MiB parts, 10 threads
        s3.upload_fileobj(reader, s3_bucket, key, Config=boto3.s3.transfer.TransferConfig())

    def to_gcs(reader: BinaryIO) -> None:
        # size unknown: a resumable upload; 8 MiB chunks keep the buffer small
        gcs_bucket.blob(key, chunk_size=8 * MiB).upload_from_file(
            _TellingReader(reader), content_type="application/octet-stream")

    def upload(send: Callable[[BinaryIO], None], fd: int) -> None:
        reader = os.fdopen(fd, "rb")
        try:
            send(reader)
        except BaseException as exc:
            errors.append(exc)
        finally:
            reader.close()  # a failed upload breaks the tee instead of blocking it

    s3_read, s3_write = os.pipe()
    gcs_read, gcs_write = os.pipe()
    threads = [threading.Thread(target=upload, args=(to_s3, s3_read)),
               threading.Thread(target=upload, args=(to_gcs, gcs_read))]
    for thread in threads:
        thread.start()
    sent = 0
    with os.fdopen(s3_write, "wb") as s3_pipe, os.fdopen(gcs_write, "wb") as gcs_pipe:
        try:
            while chunk := comp.stdout.read(READ_SIZE):
                data = encryptor.update(chunk)
                s3_pipe.write(data)
                gcs_pipe.write(data)
                sent += len(data)
            tail = encryptor.finalize()
            s3_pipe.write(tail)
            gcs_pipe.write(tail)
        except BrokenPipeError:
            pass  # an uploader failed: its error is raised below
    for thread in threads:
        thread.join()
    if dump.wait() or comp.wait():
        raise RuntimeError(f"pg_dump exited {dump.returncode}, zstd exited {comp.returncode}")
    if errors:
        raise errors[0]
    return sent


# --- the benchmark ----------------------------------------------------------------------------


class ChainBench:
    def __init__(self, size_gb: float, repeat: int, workdir: Path) -> None:
        from regionvault.devstack import sample
        from regionvault.devstack.stack import DevStack
        from regionvault.domains import Domain

        self.size_gb = size_gb
        self.repeat = repeat
        self.workdir = workdir
        self.domain = Domain.EU
        self.rows = round(ROWS_PER_HALF_GB * size_gb / 0.5)
        source = sample.SampleSource(name=SOURCE, data_class="metadata", seed_sql=SCHEMA_SQL)
        self.stack = DevStack(data_dir=workdir / "stack", sources=(source,), beat=False,
                              flower=False, say=lambda m: say(f"stack: {m}"))
        self.measures: dict[str, Measure] = {}
        self.chain_samples: list[ChainSample] = []
        self.facts: dict[str, Any] = {}
        self.notes: list[str] = []

    def measure(self, name: str) -> Measure:
        return self.measures.setdefault(name, Measure(name))

    # --- setup -------------------------------------------------------------------------------

    def start(self) -> None:
        from regionvault.config import load_config
        from regionvault.context import DomainContext
        from regionvault.devstack import sample
        from regionvault.sources.postgres import pg_tool, split_dsn
        from workers.app import app, configure

        self.stack.start()
        os.environ.update(self.stack.env)
        configure(app, load_config())
        assert self.stack.postgres is not None and self.stack.config is not None
        self.pg = self.stack.postgres
        self.db = sample.database_name(self.domain, SOURCE)
        self.dsn = self.pg.dsn(self.db)
        self.ctx = DomainContext(self.stack.config, self.domain)
        conninfo, secret_env = split_dsn(self.dsn)
        # as regionvault.sources.postgres does: the password (if any) in the environment only
        self.pg_env = {**{k: v for k, v in os.environ.items() if not k.startswith("PG")},
                       **secret_env}
        self.pg_dump = pg_tool("pg_dump")
        self.pg_restore = pg_tool("pg_restore")
        self.dump_argv = [self.pg_dump, "--format=custom", "--compress=0", "--no-password",
                          f"--dbname={conninfo}"]
        self.zstd, self.facts["zstd"] = zstd_argv()
        if "python" in self.facts["zstd"]:
            self.notes.append("zstd program missing: python-zstandard stands in for it")
        dcfg = self.ctx.dcfg
        self.s3_bucket, self.gcs_bucket_name = dcfg.s3_bucket, dcfg.gcs_bucket
        self.s3 = self._s3_client(dcfg.aws_region)
        self.gcs = self._gcs_client()
        self.gcs_bucket = self.gcs.bucket(self.gcs_bucket_name)
        self.facts.update(
            pg_dump=self.pg_dump, domain=self.domain.value, source=SOURCE,
            s3_part_size_mib=self.stack.config.s3.part_size_mib,
            gcs_chunk_size_mib=self.stack.config.gcs.chunk_size_mib,
            worker_concurrency=self.stack.concurrency)

    def _s3_client(self, region: str) -> Any:
        import boto3

        from regionvault.devstack.stack import DEV_AWS_ENV

        return boto3.client("s3", endpoint_url=self.stack.env["REGIONVAULT_S3_ENDPOINT"],
                            region_name=region,
                            aws_access_key_id=DEV_AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=DEV_AWS_ENV["AWS_SECRET_ACCESS_KEY"])

    def _gcs_client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        assert self.stack.config is not None
        return storage.Client(
            project=self.stack.config.gcs.project, credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.stack.env["REGIONVAULT_GCS_ENDPOINT"]})

    def fill(self) -> None:
        say(f"filling {self.db}.events with {self.rows:,} rows")
        started = time.perf_counter()
        step = 500_000
        for first in range(1, self.rows + 1, step):
            last = min(first + step - 1, self.rows)
            self.pg.execute(self.db, FILL_SQL.format(first=first, last=last))
        # frozen and analysed now, so that no dump below pays for setting hint bits
        self.pg.execute(self.db, "VACUUM (FREEZE, ANALYZE) events")
        self.pg.execute(self.db, "CHECKPOINT")
        on_disk = int(self.pg.execute(self.db, "SELECT pg_total_relation_size('events')")[0][0])
        self.facts.update(rows=self.rows, seed_seconds=round(time.perf_counter() - started, 1),
                          on_disk_bytes=on_disk)
        say(f"events: {self.rows:,} rows, {on_disk / MiB:.0f} MiB on disk "
            f"(pg_total_relation_size), filled in {self.facts['seed_seconds']} s")

    # --- baselines ---------------------------------------------------------------------------

    def local_dump(self) -> Path:
        path = self.workdir / "events.dump"
        subprocess.run([*self.dump_argv, f"--file={path}"], env=self.pg_env, check=True)
        size = path.stat().st_size
        compressed = subprocess.run(
            f"{shlex.join(self.zstd)} < {shlex.quote(str(path))} | wc -c", shell=True,
            check=True, capture_output=True, text=True).stdout
        self.facts.update(dump_bytes=size, zstd_bytes=int(compressed))
        say(f"dump (P): {size / MiB:.0f} MiB; zstd -3 of it: {int(compressed) / MiB:.0f} MiB "
            f"({size / int(compressed):.2f}:1)")
        return path

    def dumps(self) -> None:
        dump = shlex.join(self.dump_argv)
        zstd = shlex.join(self.zstd)
        for run in range(self.repeat):
            with timing(self.measure("pg_dump")):
                shell(f"{dump} > /dev/null", self.pg_env)
            with timing(self.measure("pg_dump | zstd")):
                shell(f"{dump} | {zstd} > /dev/null", self.pg_env)
            key = f"bench/naive-{run}"
            with timing(self.measure("naive two-cloud")):
                sent = naive_two_cloud(self.dump_argv, self.zstd, self.pg_env, self.s3,
                                       self.s3_bucket, self.gcs_bucket, key)
            self._check_and_delete(key, sent)
            bare, piped, naive = (self.measures[n].runs[-1] for n in (
                "pg_dump", "pg_dump | zstd", "naive two-cloud"))
            say(f"run {run + 1}: pg_dump {bare:.2f} s, pg_dump | zstd {piped:.2f} s, "
                f"naive two-cloud {naive:.2f} s")

    def _check_and_delete(self, key: str, size: int) -> None:
        """Make sure both stores hold all ``size`` bytes under ``key`` (a timing of a short
        upload would flatter it), then remove the object to keep the emulators' memory low."""
        in_s3 = self.s3.head_object(Bucket=self.s3_bucket, Key=key)["ContentLength"]
        blob = self.gcs_bucket.get_blob(key)
        in_gcs = blob.size if blob is not None else None
        if in_s3 != size or in_gcs != size:
            raise RuntimeError(f"{key}: S3 holds {in_s3} bytes, GCS {in_gcs}, expected {size}")
        self._delete(key)

    def _delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.s3_bucket, Key=key)
        blob = self.gcs_bucket.blob(key)
        if blob.exists():
            blob.delete()

    # --- the chain ---------------------------------------------------------------------------

    def chains(self) -> str:
        """Run the chain ``repeat`` times; the id of the first backup (restored later)."""
        ids = []
        for run in range(self.repeat):
            backup_id, sample = self._one_chain()
            ids.append(backup_id)
            self.chain_samples.append(sample)
            self.measure("chain").add(sample.seconds)
            for step, seconds in sample.steps.items():
                self.measure(f"step {step}").add(seconds)
            self.measure("step dump+encrypt").add(sample.steps["dump"] + sample.steps["encrypt"])
            steps = ", ".join(f"{s} {t:.2f}" for s, t in sample.steps.items())
            say(f"chain {run + 1}: {sample.seconds:.2f} s ({steps}); spool peak "
                f"{sample.spool_peak / MiB:.0f} MiB, worker peak RSS "
                f"{max(sample.pool_hwm_kib, sample.pool_rss_peak_kib) / 1024:.0f} MiB")
        return ids[0]

    def _one_chain(self) -> tuple[str, ChainSample]:
        from regionvault.journal import BackupState, StepState
        from regionvault.manifest import STEPS, new_backup_id
        from workers.canvas import start_run
        from workers.journal import journal

        worker_pid = self.stack.worker_processes[self.domain].pid
        pool = pool_processes(worker_pid)
        if not reset_peak_rss(pool):
            self.notes.append("could not reset VmHWM of the pool processes: the peak is "
                              "over their whole life")
        spool_root = self.ctx.config.spool_for(self.domain)
        sample = ChainSample()
        backup_id = new_backup_id(self.domain, SOURCE, self.ctx.clock())
        deadline = time.monotonic() + 600 * max(self.size_gb, 0.5)
        started = time.perf_counter()
        assert start_run(self.domain.value, SOURCE, backup_id, note="bench").accepted
        sample.claimed_at = datetime.now(UTC)
        while True:
            sample.spool_peak = max(sample.spool_peak, tree_bytes(spool_root))
            tree = [worker_pid, *_children(worker_pid)]
            sample.tree_rss_peak_kib = max(sample.tree_rss_peak_kib,
                                           sum(_status_kib(p, "VmRSS") for p in tree))
            sample.pool_rss_peak_kib = max([sample.pool_rss_peak_kib, *(
                _status_kib(p, "VmRSS") for p in pool_processes(worker_pid))])
            record = journal().get(backup_id)
            if record is not None:
                for step, rec in record.steps.items():
                    if rec.at is None:
                        continue
                    if rec.state is StepState.RUNNING:
                        sample.running_at.setdefault(step.value, rec.at)
                    elif rec.state is StepState.DONE:
                        sample.done_at[step.value] = rec.at
                        sample.step_bytes[step.value] = rec.detail
                if record.state in (BackupState.FAILED, BackupState.CANCELLED):
                    raise RuntimeError(f"backup {backup_id} is {record.state.value} at "
                                       f"{record.error_step}: {record.error}")
                if "expire" in sample.done_at:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"backup {backup_id} did not finish in time: {record}")
            time.sleep(SAMPLE_EVERY)
        sample.seconds = time.perf_counter() - started
        sample.pool_hwm_kib = max(
            [0, *(_status_kib(p, "VmHWM") for p in pool_processes(worker_pid))])
        previous = sample.claimed_at
        for step in STEPS:
            # a step too quick for the 50 ms poll to see running starts when the last ended
            begin = sample.running_at.get(step.value, previous)
            end = sample.done_at[step.value]
            sample.steps[step.value] = max(0.0, (end - begin).total_seconds())
            previous = end
        sample.handoff_seconds = max(0.0, sample.seconds - sum(sample.steps.values()))
        return backup_id, sample

    # --- each step against its bare primitive ------------------------------------------------

    def bare_uploads(self, backup_id: str) -> None:
        from regionvault.manifest_store import keys_of, read_manifest, resolve

        ref, src = resolve(self.ctx, backup_id)
        okey, mkey = keys_of(ref, src)
        manifest = read_manifest(self.ctx, self.ctx.s3, mkey)
        assert manifest is not None
        self.facts.update(plaintext_bytes=manifest.plaintext_size,
                          ciphertext_bytes=manifest.ciphertext_size)
        local = self.workdir / "backup.enc"
        self.s3.download_file(self.s3_bucket, okey, str(local))
        size = local.stat().st_size
        assert size == manifest.ciphertext_size
        chunk = self.stack.config.gcs.chunk_size_mib if self.stack.config else 1
        for run in range(self.repeat):
            key = f"bench/bare-{run}"
            with timing(self.measure("bare boto3 upload")):
                self.s3.upload_file(str(local), self.s3_bucket, key)
            with timing(self.measure("bare GCS upload")):
                self.gcs_bucket.blob(key).upload_from_filename(str(local))
            self._check_and_delete(key, size)
            self.s3.upload_file(str(local), self.s3_bucket, key)  # for the check only
            with timing(self.measure(f"bare GCS upload, {chunk} MiB chunks")):
                self.gcs_bucket.blob(key, chunk_size=chunk * MiB).upload_from_filename(
                    str(local))
            self._check_and_delete(key, size)
            s3, gcs, gcs_small = (self.measures[n].runs[-1] for n in (
                "bare boto3 upload", "bare GCS upload", f"bare GCS upload, {chunk} MiB chunks"))
            say(f"run {run + 1}: bare boto3 upload {s3:.2f} s, bare GCS upload {gcs:.2f} s "
                f"(library default chunks), {gcs_small:.2f} s ({chunk} MiB chunks as "
                "configured)")
        local.unlink()

    def restores(self, backup_id: str, dump_file: Path) -> None:
        from regionvault.restore import restore
        from regionvault.sources.postgres import split_dsn

        for run in range(self.repeat):
            bare_db, rv_db = f"bench_bare_{run}", f"bench_rv_{run}"
            self.pg.create_database(bare_db)
            conninfo, _ = split_dsn(self.pg.dsn(bare_db))
            with timing(self.measure("bare pg_restore")):
                subprocess.run(
                    [self.pg_restore, "--no-owner", "--no-privileges", "--exit-on-error",
                     "--single-transaction", "--no-password", f"--dbname={conninfo}",
                     str(dump_file)], env=self.pg_env, check=True)
            self.pg.drop_database(bare_db)
            self.pg.create_database(rv_db)
            with timing(self.measure("regionvault restore")):
                restore(self.ctx, backup_id, self.pg.dsn(rv_db), from_store="s3")
            bare, rv = (self.measures[n].runs[-1] for n in (
                "bare pg_restore", "regionvault restore"))
            rows = self.pg.execute(rv_db, "SELECT count(*) FROM events")[0][0]
            if rows != self.rows:
                raise RuntimeError(f"the restored copy holds {rows} rows, not {self.rows}")
            self.pg.drop_database(rv_db)
            say(f"run {run + 1}: bare pg_restore {bare:.2f} s, regionvault restore {rv:.2f} s")

    # --- report ------------------------------------------------------------------------------

    def comparisons(self) -> list[dict[str, Any]]:
        """(measure, baseline, target) rows: the issue's targets first, then the others."""
        m = self.measures
        rows: list[dict[str, Any]] = []

        def ratio(what: str, base: str, target: str = "") -> None:
            a, b = m[what], m[base]
            rows.append({"measure": what, "baseline": base, "min_s": round(a.min, 3),
                         "median_s": round(a.median, 3), "baseline_median_s": round(b.median, 3),
                         "ratio_median": round(a.median / b.median, 2),
                         "ratio_min": round(a.min / b.min, 2), "target": target})

        ratio("chain", "naive two-cloud", "<= 1.3x")
        ratio("step dump+encrypt", "pg_dump | zstd", "<= 1.2x")
        ratio("step replicate", "bare GCS upload", "<= 1.2x")
        ratio("regionvault restore", "bare pg_restore", "<= 1.15x")
        ratio("naive two-cloud", "pg_dump | zstd")
        ratio("pg_dump | zstd", "pg_dump")
        ratio("step dump", "pg_dump")
        ratio("step upload", "bare boto3 upload")
        chunk = self.facts["gcs_chunk_size_mib"]
        ratio("step replicate", f"bare GCS upload, {chunk} MiB chunks")
        ratio(f"bare GCS upload, {chunk} MiB chunks", "bare GCS upload")
        return rows

    def resources(self) -> dict[str, Any]:
        c = self.facts["ciphertext_bytes"]
        p = self.facts["plaintext_bytes"]
        spool = max(s.spool_peak for s in self.chain_samples)
        hwm = max(max(s.pool_hwm_kib, s.pool_rss_peak_kib) for s in self.chain_samples)
        return {"spool_peak_bytes": spool, "spool_peak_over_C": round(spool / c, 2),
                "spool_peak_over_P_plus_C": round(spool / (p + c), 2),
                "worker_pool_peak_rss_mib": round(hwm / 1024, 1),
                "worker_tree_peak_rss_mib": round(
                    max(s.tree_rss_peak_kib for s in self.chain_samples) / 1024, 1),
                "chain_handoff_seconds": [round(s.handoff_seconds, 3) for s in self.chain_samples]}

    def report(self, out: Path) -> dict[str, Any]:
        comparisons = self.comparisons()
        resources = self.resources()
        result = {
            "benchmark": "bench/chain.py", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "size_gb": self.size_gb, "repeat": self.repeat, "facts": self.facts,
            "measures": {name: mm.as_dict() for name, mm in self.measures.items()},
            "comparisons": comparisons, "resources": resources,
            "chains": [{"seconds": round(s.seconds, 3), "steps": s.steps,
                        "spool_peak_bytes": s.spool_peak,
                        "pool_peak_rss_kib": max(s.pool_hwm_kib, s.pool_rss_peak_kib),
                        "tree_peak_rss_kib": s.tree_rss_peak_kib,
                        "step_details": s.step_bytes} for s in self.chain_samples],
            "method": {
                "step_times": "journal polled every 50 ms during start_run: a step's running "
                              "entry to its done entry (a step too quick to be seen running "
                              "starts at the previous step's done entry)",
                "worker_rss": "max of VmHWM (reset before each chain) and polled VmRSS of the "
                              "domain worker's pool processes; tree = worker and all its "
                              "children (pg_dump included) summed, polled",
                "spool_peak": "size of the domain's spool directory, polled every 50 ms",
                "ratios": "median over median (and min over min) of runs in this one run",
            },
            "notes": self.notes,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print_table(result)
        return result


def print_table(result: dict[str, Any]) -> None:
    facts, res = result["facts"], result["resources"]
    print()
    print(f"source: {facts['rows']:,} rows, {facts['on_disk_bytes'] / MiB:.0f} MiB on disk; "
          f"dump P = {facts['plaintext_bytes'] / MiB:.0f} MiB, stored C = "
          f"{facts['ciphertext_bytes'] / MiB:.0f} MiB "
          f"({facts['plaintext_bytes'] / facts['ciphertext_bytes']:.2f}:1); "
          f"{result['machine']['cores']} cores; {result['repeat']} runs each")
    print()
    header = f"{'measure':<36} {'min s':>7} {'med s':>7}  {'vs baseline':<34} {'x med':>6} " \
             f"{'x min':>6}  target"
    print(header)
    print("-" * len(header))
    for row in result["comparisons"]:
        print(f"{row['measure']:<36} {row['min_s']:>7.2f} {row['median_s']:>7.2f}  "
              f"{row['baseline']:<34} {row['ratio_median']:>6.2f} {row['ratio_min']:>6.2f}  "
              f"{row['target']}")
    print()
    steps = ", ".join(f"{name.removeprefix('step ')} {m['median']:.2f}"
                      for name, m in result["measures"].items()
                      if name.startswith("step ") and "+" not in name)
    print(f"chain steps (median s): {steps}")
    print(f"spool peak: {res['spool_peak_bytes'] / MiB:.0f} MiB = {res['spool_peak_over_C']}x C "
          f"(target <= 1.05 C); {res['spool_peak_over_P_plus_C']}x (P + C)")
    print(f"worker peak RSS: pool process {res['worker_pool_peak_rss_mib']} MiB (target <= 256 "
          f"MiB); worker tree with pg_dump {res['worker_tree_peak_rss_mib']} MiB")
    for note in result["notes"]:
        print(f"note: {note}")


def run(size_gb: float, repeat: int, out: Path) -> None:
    os.chdir(ROOT)  # the workers are started with this directory as theirs (-A workers)
    workdir = Path(tempfile.mkdtemp(prefix="rv-bench-chain-"))
    bench = ChainBench(size_gb, repeat, workdir)
    try:
        bench.start()
        bench.fill()
        dump_file = bench.local_dump()
        bench.dumps()
        backup_id = bench.chains()
        bench.bare_uploads(backup_id)
        bench.restores(backup_id, dump_file)
        bench.report(out)
        say(f"results written to {out}")
    finally:
        say("stopping the stack")
        bench.stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=float, choices=(0.5, 1.0, 2.0), default=0.5,
                        help="size of the source on disk, GB (default 0.5)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of every measurement (at least 2; default 3)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "bench" / "results" / "chain-latest.json",
                        help="JSON file for the numbers (default bench/results/chain-latest.json)")
    args = parser.parse_args(argv)
    if args.repeat < 2:
        parser.error("--repeat must be at least 2 (the report gives min and median)")
    run(args.size, args.repeat, args.out.resolve())


if __name__ == "__main__":
    main()
