"""Integrity over time: a rotating sample of stored bytes is read back from both clouds.

Like ``restic check --read-data-subset``: each run (on beat, per domain, at
``integrity.schedule``) reads a share of the domain's verified backups in full from S3 and
from GCS, and compares the SHA-256 of each copy with its manifest. The share is chosen so that
over ``integrity.period_days`` every copy of every backup is read back at least once, with the
work spread evenly over the runs. Bit rot that a store's own checksum does not show (and the
scheduled chains verify with the stores' CRC32C only) is found here, before a restore needs it.

Each store is sampled on its own: one cloud being down never stops the other. A malformed
manifest is reported and skipped, never stops the run. A copy that does not match is reported
(the task journals it, counts it and fails) and is *not* recorded as read, so every later run
reads it again and fails again until a person deals with it (level-triggered, like the alert).

When each copy was last read back and matched lives in a ``ReadLedger`` (Redis in production).
Losing it loses no backup, only history: every copy is then "never read", and copies older
than the period are read again in the next run (a burst of reading, never a gap).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from croniter import croniter

from regionvault.context import DomainContext
from regionvault.errors import ChecksumMismatch, IntegrityError, NotFound, StoreError
from regionvault.manifest import MANIFEST_SUFFIX, Manifest
from regionvault.manifest_store import check_copy, read_manifest

log = logging.getLogger("regionvault.integrity")

#: the stores every backup has a copy in, in the order they are sampled
STORES: tuple[str, ...] = ("s3", "gcs")

#: a run may start late (queued behind long steps of the same pool): the next run is expected
#: this much after its cron time, so a copy due "just after" the next run is read in this one
START_GRACE = timedelta(hours=1)

Pair = tuple[str, str]  # (backup id, store)


class SampleFailed(IntegrityError):
    """An integrity sample read a copy that does not match its manifest; the message names
    every such copy."""


# --- choosing the sample (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class StoredBackup:
    """What the choice looks at for one verified backup."""

    backup_id: str
    created_at: datetime
    #: when retention lets it go (None: unknown); a copy never read is read before then
    expires_at: datetime | None = None
    #: when each store's copy was last read back whole and matched, by store ("s3", "gcs")
    last_read: Mapping[str, datetime] = field(default_factory=dict)
    #: the stores that hold its copies (its manifest's primary and replica); None: all
    stores: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Pick:
    """One copy to read in this run, and why."""

    backup_id: str
    store: str
    reason: str


#: why a copy is read
OVERDUE = "overdue"  # it would go unread for longer than the period before the next run
LAST_CHANCE = "expires before it is ever read"
NEVER_READ = "never read"
SPREAD = "spread"  # read a little before its deadline, to keep the work even


@dataclass(frozen=True)
class Sample:
    picks: tuple[Pick, ...]
    #: copies there are to read over a period (backups x stores)
    copies: int
    #: never-read copies a run reads at most (beyond the due ones): ceil(copies / runs)
    budget: int

    @property
    def pairs(self) -> list[Pair]:
        return [(p.backup_id, p.store) for p in self.picks]


def choose_sample(backups: Iterable[StoredBackup], *, period: timedelta, interval: timedelta,
                  now: datetime, stores: Sequence[str] = STORES) -> Sample:
    """Which copies this run reads so that no copy goes unread longer than ``period``.

    ``interval`` is the time until the next run. A copy's *deadline* is its last read (if
    never read: its backup's creation, or its expiry if that comes first) plus ``period``.

    1. Due: every copy whose deadline comes before the next run is read, however many.
    2. Spread: of the copies read before, those with the earliest deadlines, as many as a
       steady pace needs so that later runs do not meet their deadlines in a lump: at least
       (copies due within the next k runs) / k for every k, this run's due copies included.
       Copies that retention removes before their deadline need no second read.
    3. Never read: up to ``ceil(copies / floor(period / interval))`` copies that were never
       read, newest backup first (the one a restore would use; scheduled chains verify with
       the stores' checksums only, so this is its first read-back).

    Step 1 is the guarantee; steps 2 and 3 only read earlier, and spread the work evenly
    even after a burst (the first run, or a lost ledger, finds every old copy due at once).
    """
    next_run = now + interval
    due: list[tuple[datetime, Pick]] = []
    never: list[tuple[datetime, str, str]] = []
    ahead: list[tuple[datetime, str, str]] = []  # read before, with a deadline to meet
    copies = 0
    for backup in backups:
        for store in stores:
            if backup.stores is not None and store not in backup.stores:
                continue  # e.g. a Cloud Files source's backups have no S3 copy
            copies += 1
            last = backup.last_read.get(store)
            deadline = (last if last is not None else backup.created_at) + period
            reason = OVERDUE
            if last is None and backup.expires_at is not None and backup.expires_at < deadline:
                deadline, reason = backup.expires_at, LAST_CHANCE
            if deadline <= next_run:
                due.append((deadline, Pick(backup.backup_id, store, reason)))
            elif last is None:
                never.append((backup.created_at, backup.backup_id, store))
            elif backup.expires_at is None or backup.expires_at > deadline:
                ahead.append((deadline, backup.backup_id, store))
    runs = max(1, math.floor(period / interval))
    budget = math.ceil(copies / runs)
    due.sort(key=lambda item: (item[0], item[1].backup_id, item[1].store))
    never.sort(key=lambda item: (-item[0].timestamp(), item[1], item[2]))
    ahead.sort()
    # the steady pace: within the next k runs (this one included), k * pace copies are read
    deadlines = [deadline for deadline, _, _ in ahead]
    pace = 0
    for k in range(1, math.ceil(period / interval) + 2):
        within = bisect.bisect_right(deadlines, now + k * interval)
        pace = max(pace, math.ceil((len(due) + within) / k))
    picks = [pick for _, pick in due]
    picks += [Pick(b, s, NEVER_READ) for _, b, s in never[:budget]]
    picks += [Pick(b, s, SPREAD) for _, b, s in ahead[:max(0, pace - len(due))]]
    return Sample(picks=tuple(picks), copies=copies, budget=budget)


def sampling_interval(schedule: str, now: datetime) -> timedelta:
    """Time from ``now`` until the next run of ``schedule`` (cron, UTC) is expected to start."""
    next_run: datetime = croniter(schedule, now).get_next(datetime)
    return next_run - now + START_GRACE


# --- the ledger of reads -----------------------------------------------------------------------


class ReadLedger(Protocol):
    """When each copy of a backup was last read back whole and matched its manifest.

    Contract: ``last_reads`` returns, per (backup id, store), the latest time ``record`` wrote
    (timezone-aware); ``forget`` drops the entries of backups that no longer exist (idempotent).
    ``record_sample``/``last_sample`` keep a short summary of the last run for people and for
    compliance reports. A ledger holds times and ids only, never data or secrets.
    """

    def last_reads(self, domain: str) -> dict[Pair, datetime]: ...

    def record(self, domain: str, backup_id: str, store: str, at: datetime) -> None: ...

    def forget(self, domain: str, pairs: Iterable[Pair]) -> None: ...

    def record_sample(self, domain: str, summary: Mapping[str, str]) -> None: ...

    def last_sample(self, domain: str) -> dict[str, str]: ...


def _field(backup_id: str, store: str) -> str:
    return f"{backup_id}:{store}"


def _pair(name: str) -> Pair:
    backup_id, _, store = name.rpartition(":")
    return backup_id, store


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisReadLedger:
    """The ledger in Redis (the result backend's, beside the journal): one hash per domain,
    ``regionvault:integrity:{domain}``, field ``{backup_id}:{store}`` -> ISO time."""

    KEY = "regionvault:integrity:{}"
    SAMPLE_KEY = "regionvault:integrity:{}:last-sample"

    def __init__(self, client: Any) -> None:
        # redis-py's annotations mix its sync and async clients; this one is sync
        self._redis: Any = client

    def last_reads(self, domain: str) -> dict[Pair, datetime]:
        raw = self._redis.hgetall(self.KEY.format(domain))
        return {_pair(_text(k)): datetime.fromisoformat(_text(v)) for k, v in raw.items()}

    def record(self, domain: str, backup_id: str, store: str, at: datetime) -> None:
        self._redis.hset(self.KEY.format(domain), _field(backup_id, store), at.isoformat())

    def forget(self, domain: str, pairs: Iterable[Pair]) -> None:
        names = [_field(b, s) for b, s in pairs]
        if names:
            self._redis.hdel(self.KEY.format(domain), *names)

    def record_sample(self, domain: str, summary: Mapping[str, str]) -> None:
        self._redis.hset(self.SAMPLE_KEY.format(domain), mapping=dict(summary))

    def last_sample(self, domain: str) -> dict[str, str]:
        raw = self._redis.hgetall(self.SAMPLE_KEY.format(domain))
        return {_text(k): _text(v) for k, v in raw.items()}


class MemoryReadLedger:
    """The ledger in a dict, for unit tests (same contract as ``RedisReadLedger``)."""

    def __init__(self) -> None:
        self.reads: dict[str, dict[Pair, datetime]] = {}
        self.samples: dict[str, dict[str, str]] = {}

    def last_reads(self, domain: str) -> dict[Pair, datetime]:
        return dict(self.reads.get(domain, {}))

    def record(self, domain: str, backup_id: str, store: str, at: datetime) -> None:
        self.reads.setdefault(domain, {})[(backup_id, store)] = at

    def forget(self, domain: str, pairs: Iterable[Pair]) -> None:
        for pair in pairs:
            self.reads.get(domain, {}).pop(pair, None)

    def record_sample(self, domain: str, summary: Mapping[str, str]) -> None:
        self.samples[domain] = dict(summary)

    def last_sample(self, domain: str) -> dict[str, str]:
        return dict(self.samples.get(domain, {}))


# --- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    backup_id: str
    store: str
    problem: str


@dataclass(frozen=True)
class SampleReport:
    """What one run read and found; small and safe to return through the result backend."""

    domain: str
    at: datetime
    #: copies of verified backups there are (in the stores that could be listed)
    copies: int
    #: copies read back whole that matched their manifest
    matched: tuple[Pair, ...]
    mismatches: tuple[Mismatch, ...]
    #: ciphertext bytes of the copies read back, by store
    bytes_read: Mapping[str, int]
    #: stores that could not be listed or read in this run, with the reason
    store_errors: Mapping[str, str]
    #: manifests that could not be read (malformed or failing their checks), skipped
    skipped: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every store took part (a skipped manifest is reported, and does not count here)."""
        return not self.store_errors

    def summary(self) -> str:
        text = (f"integrity sample of domain {self.domain!r}: {len(self.matched)} copies "
                f"matched, {len(self.mismatches)} did not")
        if self.mismatches:
            text += ": " + "; ".join(f"backup {m.backup_id} ({m.store}): {m.problem}"
                                     for m in self.mismatches)
        if self.store_errors:
            text += "; not sampled: " + "; ".join(f"{s}: {e}"
                                                  for s, e in self.store_errors.items())
        if self.skipped:
            text += f"; {len(self.skipped)} manifest(s) skipped"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain, "at": self.at.isoformat(), "copies": self.copies,
            "matched": [f"{b} ({s})" for b, s in self.matched],
            "mismatches": [{"backup_id": m.backup_id, "store": m.store, "problem": m.problem}
                           for m in self.mismatches],
            "bytes_read": dict(self.bytes_read), "store_errors": dict(self.store_errors),
            "skipped": list(self.skipped),
        }


@dataclass
class _Catalogue:
    """The manifests of the domain in each store, by backup id, and what could not be read."""

    manifests: dict[str, dict[str, Manifest]] = field(default_factory=dict)
    manifest_keys: dict[str, str] = field(default_factory=dict)
    malformed: set[Pair] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)
    store_errors: dict[str, str] = field(default_factory=dict)


def _backup_id_of(manifest_key: str) -> str:
    return manifest_key.rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX)


def _list(ctx: DomainContext) -> _Catalogue:
    # The whole domain prefix, not only the configured sources: a source removed from the
    # configuration, or whose data class changed, still has backups that must stay readable.
    prefix = f"{ctx.domain.value}/"
    found = _Catalogue()
    for role in ctx.store_names:
        store = ctx.store(role)
        try:
            for key in store.list_keys(prefix):
                if not key.endswith(MANIFEST_SUFFIX):
                    continue
                try:
                    # a version-1 manifest still names the checksums worth re-reading
                    manifest = read_manifest(ctx, store, key, allow_legacy=True)
                except IntegrityError as exc:  # malformed, forged, or fails the store's check
                    found.malformed.add((_backup_id_of(key), role))
                    found.skipped.append(f"{ctx.url(role, key)}: {exc}")
                    log.warning("integrity: skipped %s: %s", ctx.url(role, key), exc)
                    continue
                if manifest is not None:
                    found.manifests.setdefault(manifest.backup_id, {})[role] = manifest
                    found.manifest_keys.setdefault(manifest.backup_id, key)
        except StoreError as exc:
            found.store_errors[role] = str(exc)
            log.warning("integrity: %s cannot be listed: %s", ctx.url(role), exc)
    return found


def _still_there(ctx: DomainContext, key: str, roles: Iterable[str]) -> bool:
    """Whether the backup's manifest is still in any of ``roles`` (else expiry or a discard
    removed the backup while it was being sampled: not a mismatch)."""
    for role in roles:
        try:
            if read_manifest(ctx, ctx.store(role), key, allow_legacy=True) is not None:
                return True
        except IntegrityError:
            return True
        except StoreError:
            return True  # cannot tell: report what was seen
    return False


def _check(ctx: DomainContext, role: str, backup_id: str, catalogue: _Catalogue) -> list[str]:
    """Problems of one copy, read back whole (empty if it matches)."""
    copies = catalogue.manifests[backup_id]
    manifest = copies.get(role) or next(iter(copies.values()))
    problems: list[str] = []
    try:
        problems += check_copy(ctx, role, manifest.object_key, manifest, deep=True)
    except ChecksumMismatch as exc:  # the store's own check of the bytes it sends
        problems.append(str(exc))
    except NotFound:  # gone between stat and read
        problems.append(f"the {role} copy {ctx.url(role, manifest.object_key)} is missing")
    if role not in copies and (backup_id, role) not in catalogue.malformed:
        key = catalogue.manifest_keys[backup_id]
        problems.append(f"the {role} manifest {ctx.url(role, key)} is missing")
    return problems


def run_sample(ctx: DomainContext, ledger: ReadLedger, now: datetime, *,
               interval: timedelta | None = None) -> SampleReport:
    """Read this run's share of the domain's copies back whole and compare them with their
    manifests; record the copies that matched in ``ledger``.

    ``interval`` is the time until the next run (by default from ``integrity.schedule``).
    Raises only if the ledger cannot be read or written; store trouble is reported per store.
    """
    domain = ctx.domain.value
    settings = ctx.config.integrity
    period = timedelta(days=settings.period_days)
    interval = interval or sampling_interval(settings.schedule, now)
    catalogue = _list(ctx)
    store_errors = dict(catalogue.store_errors)
    reads = ledger.last_reads(domain)
    reads_of: dict[str, dict[str, datetime]] = {}
    for (read_id, read_store), at in reads.items():
        reads_of.setdefault(read_id, {})[read_store] = at
    backups = []
    for backup_id, copies in sorted(catalogue.manifests.items()):
        if not any(m.verified for m in copies.values()):
            continue  # still in its chain, which verifies it; the reconciler watches it
        first = next(iter(copies.values()))
        backups.append(StoredBackup(
            backup_id=backup_id, created_at=first.created_at, expires_at=first.expires_at,
            last_read=reads_of.get(backup_id, {}),
            stores=(first.primary_store, first.replica_store)))
    listed = [role for role in ctx.store_names if role not in store_errors]
    sample = choose_sample(backups, period=period, interval=interval, now=now, stores=listed)

    matched: list[Pair] = []
    mismatches: list[Mismatch] = []
    bytes_read = dict.fromkeys(listed, 0)
    for pick in sample.picks:
        role, backup_id = pick.store, pick.backup_id
        if role in store_errors:
            continue  # this store failed earlier in the run: the other one goes on
        try:
            problems = _check(ctx, role, backup_id, catalogue)
        except StoreError as exc:
            store_errors[role] = str(exc)
            log.warning("integrity: %s stopped answering: %s", ctx.url(role), exc)
            continue
        manifest = next(iter(catalogue.manifests[backup_id].values()))
        if problems:
            if not _still_there(ctx, catalogue.manifest_keys[backup_id], ctx.store_names):
                log.info("integrity: backup %s was removed while sampled", backup_id)
                continue
            mismatches.append(Mismatch(backup_id, role, "; ".join(problems)))
            log.error("integrity: backup %s (%s): %s", backup_id, role, "; ".join(problems))
            continue
        bytes_read[role] += manifest.ciphertext_size
        ledger.record(domain, backup_id, role, now)
        matched.append((backup_id, role))

    if not catalogue.store_errors:  # a complete listing: entries of removed backups go
        gone = [pair for pair in reads if pair[0] not in catalogue.manifests]
        ledger.forget(domain, gone)
    report = SampleReport(domain=domain, at=now, copies=sample.copies,
                          matched=tuple(matched), mismatches=tuple(mismatches),
                          bytes_read=bytes_read, store_errors=store_errors,
                          skipped=tuple(catalogue.skipped))
    ledger.record_sample(domain, {
        "at": now.isoformat(), "copies": str(report.copies),
        "matched": str(len(report.matched)), "mismatches": str(len(report.mismatches)),
        "complete": "yes" if report.complete else "no",
        "store_errors": "; ".join(f"{s}: {e}" for s, e in store_errors.items())})
    return report


__all__ = ["STORES", "MemoryReadLedger", "Mismatch", "Pick", "ReadLedger", "RedisReadLedger",
           "Sample", "SampleFailed", "SampleReport", "StoredBackup", "choose_sample",
           "run_sample", "sampling_interval"]
