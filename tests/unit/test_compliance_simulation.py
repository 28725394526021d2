"""Ninety simulated days of one domain, with trouble, and the 29-day promise checked every
simulated hour.

Everything runs as it runs in production, hour by hour on a moved clock: daily backups of
every source through the real chain functions (dump, encrypt, upload, replicate, verify,
expire), the expiry loop (``expiry.sweep_domain``, as the ``expire_domain`` task runs it),
the reconciler (spool sweeping and resumption), and the buckets' own lifecycle rules as
``regionvault provision`` writes them, applied the way the clouds apply them (S3: the rule's
days rounded up to the next midnight UTC). The trouble:

- S3 unreachable for three days (regionvault cannot reach it; the cloud's lifecycle still runs);
- a source whose chains fail for ten days;
- a source removed from the configuration;
- a source whose data class changes from metadata to pii;
- a malformed manifest; a forged manifest with ``created_at`` moved forward;
- an object without a manifest; an abandoned spool directory.

After every simulated hour the test asserts, against its own record of what was written when
(not the sweep's opinion): no object holding personal data is older than 29 x 24 h in either
store, no spool file is older than that, and metadata backups are kept per their policy.

The stores are in-memory ``ObjectStore``s (the same contract the conformance suite checks
against S3 and GCS): the emulators stamp objects with the real clock, which a simulation that
moves time cannot use. ``tests/integration/test_expiry_loop.py`` runs the loop on the real
stack with a moved clock. The journal stamps its records with the real clock, so the
reconciler's hand-over grace never elapses in simulated time here: it resumes what only the
spool and the stores show, and sweeps old spool; when it resumes a crashed backup is the
fault suite's subject (tests/faults).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from regionvault import chain
from regionvault.config import Config, DataClass, SourceConfig, parse_config
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import SourceError, StoreError, TransientStoreError
from regionvault.expiry import sweep_domain
from regionvault.journal import Journal
from regionvault.keyring import Keyring
from regionvault.lease import MemoryLeaseStore
from regionvault.manifest import STEPS, Step
from regionvault.provision import required_rules
from regionvault.reconcile import Reconciler
from regionvault.sources import DumpInfo
from regionvault.stores.memory import MemoryStore
from tests.unit import domain_data, source_data

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 90
CEILING = timedelta(days=29)
METADATA_DAYS = 365

S3_DOWN = (START + timedelta(days=30), START + timedelta(days=33))
FLAKY_FAILS = (START + timedelta(days=10), START + timedelta(days=20))
LEGACY_REMOVED = START + timedelta(days=40)
SWITCH_TO_PII = START + timedelta(days=45)
MALFORMED_AT = START + timedelta(days=50, hours=5)
FORGED_AT = START + timedelta(days=55, hours=5)
ORPHAN_AT = START + timedelta(days=60, hours=7)
ABANDONED_SPOOL_AT = START + timedelta(days=5, hours=9)

PAYLOAD = b"row of personal data\n" * 200


class S3Role(MemoryStore):
    name = "s3"


class GCSRole(MemoryStore):
    name = "gcs"


class Reachable:
    """An ObjectStore as regionvault sees it: every call fails while ``down`` is set."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.bucket = inner.bucket
        self.down = False

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.inner, attr)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise TransientStoreError(f"{self.name}://{self.bucket} is unreachable")
            result = value(*args, **kwargs)
            return list(result) if inspect.isgenerator(result) else result

        return call


@dataclass
class Written:
    """The test's own record of an object: when it was written and what it holds."""

    at: datetime
    source: str
    pii: bool


@dataclass
class World:
    root: Path
    redis_url: str
    now: datetime = START
    written: dict[str, Written] = field(default_factory=dict)
    quarantined_by_test: set[str] = field(default_factory=set)
    removed_sources: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.s3_inner = S3Role("rv-eu-primary", "eu-central-1", clock=self.clock)
        self.gcs_inner = GCSRole("rv-eu-replica", "europe-west4", clock=self.clock)
        self.s3 = Reachable(self.s3_inner)
        self.keyring = Keyring.local_only(Domain.EU, {"eu-2026": os.urandom(32)}, current="eu-2026")
        self.journal = Journal.from_url(self.redis_url)
        self.journal.client.flushdb()
        self.leases = MemoryLeaseStore(lambda: self.now.timestamp())
        self.config = self.make_config()
        self.ctx = self.make_ctx()

    def clock(self) -> datetime:
        return self.now

    def sources(self) -> list[dict[str, Any]]:
        switch_class = "pii" if self.now >= SWITCH_TO_PII else "metadata"
        wanted = [source_data("accounts", "pii"), source_data("catalog", "metadata"),
                  source_data("flaky", "pii"), source_data("switch", switch_class)]
        if self.now < LEGACY_REMOVED:
            wanted.append(source_data("legacy", "pii"))
        return wanted

    def make_config(self) -> Config:
        data = {"version": 1, "spool_dir": str(self.root / "spool"),
                "retention": {"pii_days": 29, "metadata_days": METADATA_DAYS,
                              "sweep_interval_seconds": 2 * 3600},
                "domains": {"eu": domain_data("eu", self.sources())}}
        return parse_config(data, origin="simulation", env={})

    def make_ctx(self) -> DomainContext:
        return DomainContext(self.config, Domain.EU, clock=self.clock,
                             s3=self.s3,  # the same contract, through the outage switch
                             gcs=self.gcs_inner, keyring=self.keyring)

    def reconfigure(self) -> None:
        self.config = self.make_config()
        self.ctx = self.make_ctx()

    # --- what happens in the domain --------------------------------------------------------

    def back_up(self, source: SourceConfig) -> None:
        backup_id = chain.new_backup(self.ctx, source.name)
        try:
            for step in STEPS:
                self.run_step(step, backup_id)
        except (StoreError, SourceError):
            pass  # a failed chain: its leftovers are the loops' to handle
        finally:
            self.stamp_spool()
        self.record_objects(backup_id, source)

    def run_step(self, step: Step, backup_id: str) -> None:
        run: dict[Step, Callable[[], object]] = {
            Step.DUMP: lambda: chain.dump(self.ctx, backup_id),
            Step.ENCRYPT: lambda: chain.encrypt(self.ctx, backup_id),
            Step.UPLOAD: lambda: chain.upload(self.ctx, backup_id),
            Step.REPLICATE: lambda: chain.replicate(self.ctx, backup_id),
            Step.VERIFY: lambda: chain.verify(self.ctx, backup_id),
            Step.EXPIRE: lambda: chain.expire(self.ctx, backup_id),
        }
        run[step]()
        self.stamp_spool()

    def resume(self, backup_id: str, step: Step, *, expected_run: int, note: str) -> bool:
        """The reconciler's starter: claim the run, then run the rest of the chain here."""
        claim = self.journal.claim(backup_id, step, mode="resume", expected_run=expected_run)
        if not claim.accepted:
            return False
        source = self.config.source(Domain.EU, backup_id.split(".")[1])
        try:
            for later in STEPS[STEPS.index(step):]:
                self.run_step(later, backup_id)
        except (StoreError, SourceError):
            pass
        self.record_objects(backup_id, source)
        return True

    def stamp_spool(self) -> None:
        """Spool files carry the simulated time at which they were written."""
        stamp = self.now.timestamp()
        for path in self.ctx.spool.files():
            if path.stat().st_mtime > stamp:
                os.utime(path, (stamp, stamp))

    def record_objects(self, backup_id: str, source: SourceConfig) -> None:
        for store in (self.s3_inner, self.gcs_inner):
            for info in store.list_info("eu/"):
                if backup_id in info.key and info.key not in self.written:
                    self.written[info.key] = Written(
                        info.modified or self.now, source.name,
                        pii=source.data_class is DataClass.PII)

    def cloud_lifecycle(self) -> None:
        """What the clouds do themselves with the rules `regionvault provision` writes, even
        while regionvault cannot reach them: S3 rounds the expiration up to midnight UTC."""
        for role, store in (("s3", self.s3_inner), ("gcs", self.gcs_inner)):
            rules = required_rules(Domain.EU, self.config, role)
            for rule in rules.rules:
                if rule.kind.value != "expire":
                    continue
                for info in list(store.list_info(rule.prefix)):
                    assert info.modified is not None
                    due = (info.modified + timedelta(days=rule.days)).replace(
                        hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
                    if self.now >= due:
                        store.delete(info.key)

    def reconcile(self) -> None:
        Reconciler(self.ctx, self.journal, self.leases, self.resume,
                   clock=lambda: self.now.timestamp()).tick()

    # --- trouble ---------------------------------------------------------------------------

    def newest(self, source: str, suffix: str) -> str:
        keys = sorted(k for k in self.gcs_inner.list_keys("eu/") if f"/{source}/" in k
                      and k.endswith(suffix))
        assert keys, f"no backup of {source} to spoil"
        return keys[-1]

    def malformed_manifest(self) -> None:
        key = self.newest("catalog", ".manifest.json")
        self.gcs_inner.put_bytes(key, b"{ this is not a manifest")
        self.quarantined_by_test.add(key)

    def forged_manifest(self) -> None:
        import json

        key = self.newest("accounts", ".manifest.json")
        for store in (self.s3_inner, self.gcs_inner):
            data = json.loads(store.get_bytes(key))
            created = datetime.fromisoformat(data["created_at"])
            data["created_at"] = (created + timedelta(days=20)).isoformat()
            store.put_bytes(key, json.dumps(data).encode())  # not signed again: a forgery
            self.written[key].at = min(self.written[key].at, self.now)

    def orphan_object(self) -> None:
        key = "eu/pii/accounts/eu.accounts.20260302T070000Z.0badc0de.rvb"
        for store in (self.s3_inner, self.gcs_inner):
            store.put_bytes(key, b"ciphertext without a manifest")
            self.written[key] = Written(self.now, "accounts", pii=True)

    def abandoned_spool(self) -> None:
        path = self.ctx.spool.path("eu.accounts.20260106T090000Z.0000abcd", "backup.rvb")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"sealed ciphertext of a dump nobody finished")
        self.stamp_spool()

    # --- the promise -----------------------------------------------------------------------

    def violations(self) -> Iterator[str]:
        for store in (self.s3_inner, self.gcs_inner):
            present = {info.key for info in store.list_info("")}
            for key in present:
                record = self.written.get(key)
                if record is None:
                    continue
                pii = record.pii or (record.source == "switch" and self.now >= SWITCH_TO_PII)
                if pii and self.now - record.at > CEILING:
                    yield (f"{store.name}: {key} holds personal data and is "
                           f"{self.now - record.at} old")
            for key, record in self.written.items():
                kept_for = timedelta(days=METADATA_DAYS)
                if (key.startswith("eu/metadata/catalog/") and key not in present
                        and key not in self.quarantined_by_test
                        and not _stem_spoiled(key, self.quarantined_by_test)
                        and self.now - record.at < kept_for and store is self.gcs_inner):
                    yield f"{store.name}: metadata {key} was removed before its policy"
        for path in self.ctx.spool.files():
            age = self.now.timestamp() - path.stat().st_mtime
            if age > CEILING.total_seconds():
                yield f"spool file {path} is {timedelta(seconds=age)} old"


def _stem_spoiled(key: str, spoiled: set[str]) -> bool:
    stem = key.rsplit(".rvb", 1)[0].rsplit(".manifest.json", 1)[0]
    return any(s.startswith(stem) for s in spoiled)


@dataclass
class FakeSource:
    name: str
    fails: bool

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        if self.fails:
            raise SourceError(f"source {self.name!r}: the database is failing (simulated)")
        write(PAYLOAD)
        return DumpInfo(row_counts={"public.rows": 200})

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        raise AssertionError("not part of the simulation")


def test_ninety_days_keep_the_29_day_promise(tmp_path: Path, redis_url: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, redis_url)

    def open_source(domain: Domain, src: SourceConfig) -> FakeSource:
        failing = src.name == "flaky" and FLAKY_FAILS[0] <= world.now < FLAKY_FAILS[1]
        return FakeSource(src.name, failing)

    monkeypatch.setattr(chain, "open_source", open_source)
    events: dict[datetime, Callable[[], None]] = {
        ABANDONED_SPOOL_AT: world.abandoned_spool,
        MALFORMED_AT: world.malformed_manifest,
        FORGED_AT: world.forged_manifest,
        ORPHAN_AT: world.orphan_object,
    }
    sweep_every = timedelta(seconds=world.config.retention.sweep_interval_seconds)
    last_sweep = START - sweep_every
    removed_by_loop = 0
    checks = 0
    for hour in range(DAYS * 24 + 1):
        world.now = START + timedelta(hours=hour)
        world.s3.down = S3_DOWN[0] <= world.now < S3_DOWN[1]
        if world.now in (LEGACY_REMOVED, SWITCH_TO_PII):
            world.reconfigure()
        if world.now in events:
            events[world.now]()
        if world.now.hour == 0:
            world.cloud_lifecycle()
        if world.now.hour == 2:
            for source in world.config.domain(Domain.EU).sources:
                world.back_up(source)
        if world.now - last_sweep >= sweep_every:
            report = sweep_domain(world.ctx, world.now)  # what expire_domain runs, on beat
            removed_by_loop += report.removed_total
            last_sweep = world.now
            if not world.s3.down:
                assert report.stores["s3"].listed
            assert report.stores["gcs"].complete, report.summary()  # S3 down never stops GCS
        world.reconcile()
        problems = list(world.violations())
        assert not problems, f"at {world.now}: " + "; ".join(problems[:5])
        checks += 1

    assert checks == DAYS * 24 + 1
    # the loop expired what no chain's step 6 could (a removed source, a failing one, spoiled
    # manifests), not only the buckets' backstop
    assert removed_by_loop > 0
    # what the trouble left was handled, and metadata is still there
    assert not any(p for p in world.ctx.spool.files() if "0000abcd" in str(p))
    orphan = "eu/pii/accounts/eu.accounts.20260302T070000Z.0badc0de.rvb"
    assert orphan not in set(world.gcs_inner.list_keys("eu/"))
    # every metadata backup that reached the stores is still there (the hourly check says it
    # was never removed early), bar the one whose manifest was spoiled
    catalog = {k for k in world.gcs_inner.list_keys("eu/metadata/catalog/") if k.endswith(".rvb")}
    reached = {k for k, w in world.written.items()
               if w.source == "catalog" and k.endswith(".rvb") and "catalog" in k}
    spoiled = {k for k in reached if _stem_spoiled(k, world.quarantined_by_test)}
    assert catalog == reached - spoiled
    assert len(catalog) > DAYS - 10  # the outage's and the spoiled one's are the only gaps
    legacy = [k for k in world.gcs_inner.list_keys("eu/pii/legacy/")]
    assert legacy == []  # a source removed from the configuration still expires
