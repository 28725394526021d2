"""Expiry as a control loop of its own: personal data leaves on time, whatever else fails.

On beat (every ``retention.sweep_interval_seconds``, hourly by default), in the domain's own
queue, ``sweep_domain`` judges everything each store holds under ``<domain>/`` and removes what
``retention.decide_expiry`` says. It depends on no backup succeeding and on no source being
configured: backups of a source removed from the configuration, of a data class that changed,
objects whose manifest never arrived or cannot be read are all judged.

- Each store is swept on its own: S3 being down never stops GCS expiry, and the reverse.
- The data class is the strictest of what the key prefix, the manifest and the configuration
  say; a key outside the layout ``<domain>/<class>/<source>/<backup id>.rvb|.manifest.json``
  counts as pii.
- Age runs from the earlier of the manifest's ``created_at`` and the store's own timestamp: a
  ``created_at`` moved forward never makes a backup younger.
- A manifest that cannot be read (malformed, failing its checks, naming another backup than
  its key) is *quarantined*: reported, and its backup judged by the store's timestamp under
  the pii rule. So is an object without a manifest, once older than
  ``reconcile.orphan_after_seconds`` (before that its chain may still be writing the manifest;
  it is judged by the pii rule all the same). A quarantined copy never stops the rest.
- A removed backup's open uploads are aborted, then its object deleted, then its manifest: a
  manifest without its object is still listed, and removed by the next sweep. ``store.delete``
  removes every version of a key, so a versioned (object-locked) bucket keeps no bytes behind.
- A locked backup object (``object_lock``) is locked until the moment the sweep is due to
  remove it (``regionvault.object_lock``), so its delete succeeds. Should the store still
  refuse (its clock behind ours, a lock set by hand), the refusal is reported like any store
  error and the next sweep tries again; the manifest stays until the object is gone.
- Open uploads older than the pii cutoff are aborted whatever they belong to: their parts are
  bytes in the store too.

Running it twice, or after a crash, does no harm: deletes are idempotent and whatever one
sweep left the next one finds. When each store was last swept completely lives in a
``SweepLedger`` (Redis in production), for compliance reports.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from regionvault import manifest_store
from regionvault.config import SOURCE_NAME_RE, DataClass
from regionvault.context import DomainContext
from regionvault.domains import Domain
from regionvault.errors import (
    ConfigError,
    IntegrityError,
    ObjectLocked,
    RegionvaultError,
    StoreError,
    TransientStoreError,
)
from regionvault.manifest import MANIFEST_SUFFIX, OBJECT_SUFFIX, BackupRef, Manifest
from regionvault.retention import ExpiryRules, StoredCopy, decide_expiry, strictest
from regionvault.stores.base import ObjectInfo, ObjectStore

log = logging.getLogger("regionvault.expiry")

#: the stores every domain has, each swept on its own (a domain with Cloud Files also sweeps
#: ``swift``: ``DomainContext.store_names``)
STORES: tuple[str, ...] = ("s3", "gcs")

#: after this many transient errors in a row a store is taken to be down for this sweep (the
#: next sweep is the retry); a single throttled request does not stop the rest
MAX_TRANSIENT_IN_A_ROW = 3


class SweepIncomplete(RegionvaultError):
    """A store could not be swept completely; the message names it and why."""


# --- keys --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyParts:
    """What a stored key says. A key outside the layout has ``backup_id`` None, its own key as
    ``stem`` and no data class (so the pii rule)."""

    key: str
    #: the key without its suffix: the object and the manifest of one backup share it
    stem: str
    #: ``OBJECT_SUFFIX``, ``MANIFEST_SUFFIX``, or "" for a key outside the layout
    suffix: str
    data_class: DataClass | None = None
    source: str | None = None
    backup_id: str | None = None

    @property
    def in_layout(self) -> bool:
        return self.backup_id is not None


def parse_key(domain: Domain, key: str) -> KeyParts:
    """Split ``<domain>/<class>/<source>/<backup id><suffix>``; anything else is outside."""
    outside = KeyParts(key=key, stem=key, suffix="")
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != domain.value:
        return outside
    _, class_name, source, name = parts
    suffix = next((s for s in (OBJECT_SUFFIX, MANIFEST_SUFFIX) if name.endswith(s)), None)
    if suffix is None or not SOURCE_NAME_RE.fullmatch(source):
        return outside
    data_class = DataClass(class_name) if class_name in {c.value for c in DataClass} else None
    backup_id = name.removesuffix(suffix)
    try:
        ref = BackupRef.parse(backup_id)
    except ConfigError:
        return outside
    if ref.domain is not domain or ref.source != source:
        return outside
    return KeyParts(key=key, stem=key.removesuffix(suffix), suffix=suffix,
                    data_class=data_class, source=source, backup_id=backup_id)


# --- reports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantined:
    """A copy whose manifest cannot be trusted (or is missing), judged as pii by its store time."""

    store: str
    #: the manifest's key, or the object's when it has no manifest
    key: str
    backup_id: str | None
    reason: str


@dataclass(frozen=True)
class StoreSweep:
    """What one sweep did in one store."""

    store: str
    #: the store could be listed (False: it was not swept at all, see ``errors``)
    listed: bool
    #: backups removed, by the data class whose rule removed them ("pii", "metadata")
    removed: Mapping[str, int] = field(default_factory=dict)
    #: backups still in the store after the sweep
    kept: int = 0
    quarantined: tuple[Quarantined, ...] = ()
    errors: tuple[str, ...] = ()
    #: age of the oldest pii (or quarantined) backup left in the store; None if there is none
    oldest_pii_age: timedelta | None = None
    #: open uploads aborted because they were older than the pii cutoff
    uploads_aborted: int = 0

    @property
    def complete(self) -> bool:
        """Listed, and every decision carried out: the store was swept."""
        return self.listed and not self.errors

    @property
    def removed_total(self) -> int:
        return sum(self.removed.values())

    def as_dict(self) -> dict[str, object]:
        oldest = self.oldest_pii_age.total_seconds() if self.oldest_pii_age else None
        return {"store": self.store, "listed": self.listed, "complete": self.complete,
                "removed": dict(self.removed), "kept": self.kept,
                "quarantined": [{"key": q.key, "backup_id": q.backup_id, "reason": q.reason}
                                for q in self.quarantined],
                "errors": list(self.errors), "oldest_pii_age_seconds": oldest,
                "uploads_aborted": self.uploads_aborted}


@dataclass(frozen=True)
class ExpiryReport:
    """What one sweep of a domain did, per store; small and safe to return through Celery."""

    domain: str
    at: datetime
    #: the age at which pii was removed (``RetentionConfig.pii_cutoff``)
    pii_cutoff: timedelta
    stores: Mapping[str, StoreSweep]

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.stores.values())

    @property
    def removed_total(self) -> int:
        return sum(s.removed_total for s in self.stores.values())

    @property
    def kept_total(self) -> int:
        return sum(s.kept for s in self.stores.values())

    @property
    def quarantined(self) -> tuple[Quarantined, ...]:
        return tuple(q for s in self.stores.values() for q in s.quarantined)

    def summary(self) -> str:
        parts = []
        for role, s in self.stores.items():
            if not s.listed:
                parts.append(f"{role}: not swept ({'; '.join(s.errors)})")
                continue
            text = f"{role}: removed {s.removed_total}, kept {s.kept}"
            if s.quarantined:
                text += f", {len(s.quarantined)} quarantined"
            if s.errors:
                text += f", {len(s.errors)} errors ({'; '.join(s.errors[:3])})"
            parts.append(text)
        return f"expiry sweep of domain {self.domain!r}: " + "; ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {"domain": self.domain, "at": self.at.isoformat(),
                "pii_cutoff_seconds": self.pii_cutoff.total_seconds(),
                "complete": self.complete,
                "stores": {role: s.as_dict() for role, s in self.stores.items()}}


# --- one store ---------------------------------------------------------------------------------


@dataclass
class _Backup:
    """What one store holds of one backup (by key stem)."""

    parts: KeyParts
    object: ObjectInfo | None = None
    manifest: ObjectInfo | None = None

    @property
    def object_key(self) -> str:
        return self.parts.stem + OBJECT_SUFFIX if self.parts.in_layout else self.parts.key

    @property
    def manifest_key(self) -> str:
        return self.parts.stem + MANIFEST_SUFFIX


QuarantineNote = Callable[[Quarantined], None]


def _ignore(_: Quarantined) -> None:
    return None


def read_manifest(ctx: DomainContext, store: ObjectStore, key: str) -> Manifest | None:
    """The manifest at ``key``, or None if it is gone; ``IntegrityError`` if it cannot be
    trusted (malformed, failing its MAC, under another backup's key): quarantined then.

    The one place the sweep reads manifests. Unauthenticated legacy (version-1) manifests are
    read: no field of one can keep pii longer here (the data class is the strictest of key,
    manifest and configuration, the age never later than the store's timestamp; a forged
    "verified" can only keep a *metadata* backup), while quarantining them would judge every
    metadata backup older than the pii cutoff as pii and remove it on the first sweep."""
    return manifest_store.read_manifest(ctx, store, key, allow_legacy=True)


def _manifest_problem(manifest: Manifest, parts: KeyParts, domain: Domain) -> str | None:
    """Why a well-formed manifest does not belong at its key (a copied or edited manifest)."""
    if (manifest.domain is not domain or manifest.backup_id != parts.backup_id
            or manifest.source != parts.source):
        return (f"it names backup {manifest.backup_id} of {manifest.domain.value}/"
                f"{manifest.source}, not the backup its key names")
    return None


class _StoreSweeper:
    """One sweep of one store (a fresh instance per store and sweep)."""

    def __init__(self, ctx: DomainContext, role: str, now: datetime, prefixes: list[str],
                 on_quarantine: QuarantineNote, *, abort_stale_uploads: bool) -> None:
        self.ctx = ctx
        self.role = role
        self.store = ctx.store(role)
        self.now = now
        self.prefixes = prefixes
        self.on_quarantine = on_quarantine
        self.abort_stale_uploads = abort_stale_uploads
        self.rules = ExpiryRules.from_config(ctx.config.retention)
        self.grace = timedelta(seconds=ctx.config.reconcile.orphan_after_seconds)
        self.configured = {s.name: s.data_class for s in ctx.dcfg.sources}
        self.errors: list[str] = []
        self.quarantined: list[Quarantined] = []
        self.copies: list[StoredCopy] = []
        self._transient_in_a_row = 0

    # -- errors ---------------------------------------------------------------------------------

    def _failed(self, what: str, exc: StoreError) -> None:
        self.errors.append(f"{what}: {exc}")
        log.warning("expiry %s: %s: %s", self.role, what, exc)
        if isinstance(exc, TransientStoreError):
            self._transient_in_a_row += 1
        if self._transient_in_a_row >= MAX_TRANSIENT_IN_A_ROW:
            raise _StoreDown(f"{self.ctx.url(self.role)} stopped answering ({exc})")

    def _succeeded(self) -> None:
        self._transient_in_a_row = 0

    # -- the sweep ------------------------------------------------------------------------------

    def sweep(self) -> StoreSweep:
        try:
            found = self._list()
        except StoreError as exc:
            log.warning("expiry: %s cannot be listed: %s", self.ctx.url(self.role), exc)
            return StoreSweep(self.role, listed=False,
                              errors=(f"{self.ctx.url(self.role)} cannot be listed: {exc}",))
        removed: Counter[str] = Counter()
        remaining: dict[str, StoredCopy] | None = None
        uploads = 0
        try:
            self._judge(found)
            remaining = {c.name: c for c in self.copies}
            decision = decide_expiry(self.copies, self.rules, self.now)
            for name in decision.remove:  # oldest first: the most urgent go first
                copy = remaining[name]
                if self._remove(found[name], decision.reasons[name]):
                    removed[copy.rule.value] += 1
                    del remaining[name]
            if self.abort_stale_uploads:
                uploads = self._abort_stale_uploads()
        except _StoreDown as exc:
            self.errors.append(str(exc))
            if remaining is None:  # down while judging: what was judged is still there
                remaining = {c.name: c for c in self.copies}
        pii_born = [c.born for c in remaining.values()
                    if c.rule is DataClass.PII and c.born is not None]
        oldest = self.now - min(pii_born) if pii_born else None
        return StoreSweep(self.role, listed=True, removed=dict(removed), kept=len(remaining),
                          quarantined=tuple(self.quarantined), errors=tuple(self.errors),
                          oldest_pii_age=oldest, uploads_aborted=uploads)

    def _list(self) -> dict[str, _Backup]:
        found: dict[str, _Backup] = {}
        for prefix in self.prefixes:
            for info in self.store.list_info(prefix):
                parts = parse_key(self.ctx.domain, info.key)
                backup = found.setdefault(parts.stem, _Backup(parts))
                if parts.suffix == MANIFEST_SUFFIX:
                    backup.manifest = info
                else:
                    backup.object = info
        return found

    def _quarantine(self, backup: _Backup, key: str, reason: str) -> str:
        item = Quarantined(self.role, key, backup.parts.backup_id, reason)
        self.quarantined.append(item)
        log.warning("expiry: quarantined %s: %s", self.ctx.url(self.role, key), reason)
        try:
            self.on_quarantine(item)
        except Exception as exc:  # a note is for people; it never stops expiry
            log.warning("expiry: quarantine note for %s not written: %s", key, exc)
        return reason

    def _judge(self, found: Mapping[str, _Backup]) -> None:
        """Fill ``self.copies``: one judged copy per backup found (not those whose manifest
        could not be read for a store error: the next sweep judges them)."""
        copies = self.copies
        for name, backup in sorted(found.items()):
            parts = backup.parts
            written = backup.object or backup.manifest
            assert written is not None
            configured = self.configured.get(parts.source or "")
            if not parts.in_layout:
                reason = self._quarantine(backup, parts.key, "its key is outside the layout "
                                          "<domain>/<class>/<source>/<backup id>.rvb")
                copies.append(StoredCopy(name=name, source=None, data_class=DataClass.PII,
                                         store_time=written.modified, quarantined=reason))
                continue
            if backup.manifest is None:
                copies.append(self._without_manifest(name, backup, written))
                continue
            problem: str | None = None
            try:
                manifest = read_manifest(self.ctx, self.store, backup.manifest_key)
                self._succeeded()
            except IntegrityError as exc:  # before StoreError: a ChecksumMismatch is both
                manifest, problem = None, str(exc)
            except StoreError as exc:
                # cannot tell what it is: left for the next sweep, and the sweep is incomplete
                self._failed(f"manifest {backup.manifest_key} cannot be read", exc)
                continue
            if manifest is None and problem is None:  # removed since the listing
                backup.manifest = None
                copies.append(self._without_manifest(name, backup, written))
                continue
            if manifest is not None:
                problem = _manifest_problem(manifest, parts, self.ctx.domain)
            if manifest is None or problem is not None:
                reason = self._quarantine(backup, backup.manifest_key,
                                          f"its manifest cannot be trusted: {problem}")
                copies.append(StoredCopy(name=name, source=parts.source,
                                         data_class=DataClass.PII, store_time=written.modified,
                                         quarantined=reason))
                continue
            said = [parts.data_class, manifest.data_class]
            if configured is not None:  # a source still configured may have changed class
                said.append(configured)
            copies.append(StoredCopy(
                name=name, source=parts.source, data_class=strictest(*said),
                store_time=written.modified, created_at=manifest.created_at,
                verified=manifest.verified))

    def _without_manifest(self, name: str, backup: _Backup, written: ObjectInfo) -> StoredCopy:
        # Judged as pii whatever its key says: nothing tells what it holds. Reported once it
        # is older than a chain takes to write the manifest after the object.
        reason = None
        if written.modified is None or self.now - written.modified > self.grace:
            reason = self._quarantine(backup, written.key, "it has no manifest")
        return StoredCopy(name=name, source=backup.parts.source, data_class=DataClass.PII,
                          store_time=written.modified, quarantined=reason)

    def _remove(self, backup: _Backup, reason: str) -> bool:
        """Open uploads, then the object, then the manifest; False if the store refused."""
        key = backup.object_key
        try:
            self.store.abort_incomplete_uploads(key)
            if backup.object is not None:
                self.store.delete(key)
            if backup.manifest is not None:
                self.store.delete(backup.manifest_key)
        except ObjectLocked as exc:
            # Due, yet still locked by the store's clock: reported, tried again next sweep.
            self._failed(f"{key} not removed yet (still locked)", exc)
            return False
        except StoreError as exc:
            self._failed(f"{key} not removed", exc)
            return False
        self._succeeded()
        log.info("expiry: removed %s (%s)", self.ctx.url(self.role, key), reason)
        return True

    def _abort_stale_uploads(self) -> int:
        aborted = 0
        cutoff = self.now - self.rules.pii_cutoff
        try:
            uploads = self.store.incomplete_uploads(f"{self.ctx.domain.value}/")
        except StoreError as exc:
            self._failed("open uploads cannot be listed", exc)
            return 0
        for upload in uploads:
            if upload.initiated is None or upload.initiated > cutoff:
                continue
            try:
                if self.store.abort_upload(upload):
                    aborted += 1
                    log.info("expiry: aborted an open upload of %s started %s", upload.key,
                             upload.initiated.isoformat())
            except StoreError as exc:
                self._failed(f"open upload of {upload.key} not aborted", exc)
        return aborted


class _StoreDown(Exception):
    """Internal: a store failed too often in a row; the rest of its sweep waits for the next."""


# --- a domain ----------------------------------------------------------------------------------


def sweep_domain(ctx: DomainContext, now: datetime, *, source: str | None = None,
                 on_quarantine: QuarantineNote = _ignore) -> ExpiryReport:
    """Judge and expire everything under ``<domain>/`` in each store, independently.

    With ``source``, only that source's prefixes (every data class) are swept and stray open
    uploads are left to the whole-domain sweep: what the chain's expire step needs.
    ``on_quarantine`` is called for each quarantined copy found (every sweep finds it again
    until it is removed). Store trouble is reported per store, never raised.
    """
    domain = ctx.domain.value
    if source is None:
        prefixes = [f"{domain}/"]
    else:
        prefixes = [f"{domain}/{data_class.value}/{source}/" for data_class in DataClass]
    stores = {}
    for role in ctx.store_names:
        sweeper = _StoreSweeper(ctx, role, now, prefixes, on_quarantine,
                                abort_stale_uploads=source is None)
        stores[role] = sweeper.sweep()
    report = ExpiryReport(domain=domain, at=now,
                          pii_cutoff=ctx.config.retention.pii_cutoff(), stores=stores)
    (log.info if report.complete else log.warning)("%s", report.summary())
    return report


# --- the ledger of sweeps ----------------------------------------------------------------------


@dataclass
class JudgedStore:
    """One store listed and judged as the sweep judges it, nothing removed (for reports)."""

    listed: bool
    errors: list[str]
    #: the backup's key (object, else manifest, else the stray key) by copy name
    keys: dict[str, str]
    manifest_keys: dict[str, str]
    copies: list[StoredCopy]
    quarantined: list[Quarantined]


def judge_store(ctx: DomainContext, role: str, now: datetime) -> JudgedStore:
    """List and judge one store exactly as the expiry sweep does, removing nothing.

    The sweep's own listing and judging are used, so a report (``regionvault compliance``)
    can never judge differently from the sweep."""
    sweeper = _StoreSweeper(ctx, role, now, [f"{ctx.domain.value}/"],
                                   lambda _: None, abort_stale_uploads=False)
    try:
        found = sweeper._list()
    except StoreError as exc:
        return JudgedStore(False, [f"{ctx.url(role)} cannot be listed: {exc}"], {}, {}, [], [])
    try:
        sweeper._judge(found)
    except _StoreDown as exc:  # stopped answering: what was judged is still reported
        sweeper.errors.append(str(exc))
    keys: dict[str, str] = {}
    manifest_keys: dict[str, str] = {}
    for name, backup in found.items():
        written = backup.object or backup.manifest
        keys[name] = written.key if written is not None else backup.parts.key
        if backup.manifest is not None:
            manifest_keys[name] = backup.manifest_key
    return JudgedStore(True, list(sweeper.errors), keys, manifest_keys, list(sweeper.copies),
                   list(sweeper.quarantined))


class SweepLedger(Protocol):
    """When each store of a domain was last swept completely, and what the last sweep found.

    Contract: ``last_sweeps`` returns, per store ("s3", "gcs"), the latest time ``record_sweep``
    wrote (timezone-aware); ``record_summary``/``last_summary`` keep a short flat summary of
    the last sweep (strings), replacing the previous one. A ledger holds times, counts and
    keys only, never data or secrets. Losing it loses history, never a backup.
    """

    def record_sweep(self, domain: str, store: str, at: datetime) -> None: ...

    def last_sweeps(self, domain: str) -> dict[str, datetime]: ...

    def record_summary(self, domain: str, summary: Mapping[str, str]) -> None: ...

    def last_summary(self, domain: str) -> dict[str, str]: ...


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisSweepLedger:
    """The ledger in Redis (the result backend's, beside the journal): hash
    ``regionvault:expiry:{domain}`` with fields ``s3``, ``gcs`` -> ISO time of the last
    complete sweep, and hash ``regionvault:expiry:{domain}:last-sweep`` with the summary."""

    KEY = "regionvault:expiry:{}"
    SUMMARY_KEY = "regionvault:expiry:{}:last-sweep"

    def __init__(self, client: Any) -> None:
        # redis-py's annotations mix its sync and async clients; this one is sync
        self._redis: Any = client

    def record_sweep(self, domain: str, store: str, at: datetime) -> None:
        self._redis.hset(self.KEY.format(domain), store, at.isoformat())

    def last_sweeps(self, domain: str) -> dict[str, datetime]:
        raw = self._redis.hgetall(self.KEY.format(domain))
        return {_text(k): datetime.fromisoformat(_text(v)) for k, v in raw.items()}

    def record_summary(self, domain: str, summary: Mapping[str, str]) -> None:
        key = self.SUMMARY_KEY.format(domain)
        pipe = self._redis.pipeline()
        pipe.delete(key)
        pipe.hset(key, mapping=dict(summary))
        pipe.execute()

    def last_summary(self, domain: str) -> dict[str, str]:
        raw = self._redis.hgetall(self.SUMMARY_KEY.format(domain))
        return {_text(k): _text(v) for k, v in raw.items()}


class MemorySweepLedger:
    """The ledger in a dict, for unit tests (same contract as ``RedisSweepLedger``)."""

    def __init__(self) -> None:
        self.sweeps: dict[str, dict[str, datetime]] = {}
        self.summaries: dict[str, dict[str, str]] = {}

    def record_sweep(self, domain: str, store: str, at: datetime) -> None:
        self.sweeps.setdefault(domain, {})[store] = at

    def last_sweeps(self, domain: str) -> dict[str, datetime]:
        return dict(self.sweeps.get(domain, {}))

    def record_summary(self, domain: str, summary: Mapping[str, str]) -> None:
        self.summaries[domain] = dict(summary)

    def last_summary(self, domain: str) -> dict[str, str]:
        return dict(self.summaries.get(domain, {}))


def _quarantine_field(store: str) -> str:
    return f"quarantined:{store}"


def run_sweep(ctx: DomainContext, ledger: SweepLedger, now: datetime, *,
              on_new_quarantine: QuarantineNote = _ignore) -> ExpiryReport:
    """One sweep of the domain (``sweep_domain``), recorded in ``ledger`` (``record_sweep``)."""
    report = sweep_domain(ctx, now)
    record_sweep(ledger, report, on_new_quarantine=on_new_quarantine)
    return report


def record_sweep(ledger: SweepLedger, report: ExpiryReport, *,
                 on_new_quarantine: QuarantineNote = _ignore) -> None:
    """Record a sweep in ``ledger``: the time of every store swept completely, and a summary
    with the quarantined keys, so that ``on_new_quarantine`` is called only for a copy the
    previous sweep did not already report. Raises only if the ledger cannot be read or
    written."""
    domain, now = report.domain, report.at
    known = ledger.last_summary(domain)
    for role, sweep in report.stores.items():
        before = set(filter(None, known.get(_quarantine_field(role), "").split("\n")))
        for item in sweep.quarantined:
            if item.key not in before:
                try:
                    on_new_quarantine(item)
                except Exception as exc:  # a note is for people; it never fails the sweep
                    log.warning("expiry: quarantine note for %s not written: %s", item.key, exc)
    for role, sweep in report.stores.items():
        if sweep.complete:
            ledger.record_sweep(domain, role, now)
    summary = {"at": now.isoformat(), "complete": "yes" if report.complete else "no",
               "pii_cutoff_seconds": str(int(report.pii_cutoff.total_seconds()))}
    for role, sweep in report.stores.items():
        summary[f"removed:{role}"] = str(sweep.removed_total)
        summary[f"kept:{role}"] = str(sweep.kept)
        summary[f"errors:{role}"] = "; ".join(sweep.errors)
        if sweep.oldest_pii_age is not None:
            summary[f"oldest_pii_age_seconds:{role}"] = str(
                int(sweep.oldest_pii_age.total_seconds()))
        if sweep.listed:
            summary[_quarantine_field(role)] = "\n".join(q.key for q in sweep.quarantined)
        elif _quarantine_field(role) in known:  # not listed: what was known stays known
            summary[_quarantine_field(role)] = known[_quarantine_field(role)]
    ledger.record_summary(domain, summary)


__all__ = ["MAX_TRANSIENT_IN_A_ROW", "STORES", "ExpiryReport", "KeyParts",
           "MemorySweepLedger", "Quarantined", "RedisSweepLedger", "StoreSweep",
           "SweepIncomplete", "SweepLedger", "parse_key", "read_manifest", "record_sweep",
           "run_sweep", "sweep_domain"]
