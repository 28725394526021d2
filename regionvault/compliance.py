"""Evidence for auditors: does a domain keep its retention promise, as of a given time?

``compliance_report`` reads and never writes. Per store (S3, GCS) it shows:

- the oldest pii object and its age, and every object past its policy. Both come from the
  expiry sweep's own judgement (``regionvault.expiry``: key parsing, the strictest data class,
  age from the earlier of ``created_at`` and the store's timestamp, quarantine) and its pure
  decision (``retention.decide_expiry``), never from a second copy of those rules;
- the lifecycle rules found and required, with provision's findings, and versioning;
- the bucket's object lock, where the domain configures one (or the bucket locks every object
  by a default retention rule), with ``regionvault check``'s findings;
- the last complete expiry sweep (``SweepLedger``) and the last integrity sample
  (``ReadLedger``);
- the key ids its manifests use, and whether the domain's keyring holds each one; manifests
  that cannot be trusted (quarantined: a forged manifest hides which key its backup needs).

*Past its policy* means "should already be gone": ``decide_expiry`` would have removed it at
``as_of`` less the sweep margin (``sweep_interval_seconds + deletion_allowance_seconds``).
Between crossing the sweep's cutoff and the next sweep, a backup is only *due* (listed, no
finding). With ``pii_days`` 29 the pii cutoff plus the margin is the 29-day ceiling itself, so a
pii object past its policy is one older than the ceiling.

``compliant`` holds when there are no findings. A finding is one sentence naming the store and
the thing:

- an object past its policy;
- a lifecycle rule missing or weaker than the policy, or rules that cannot be read;
- an object lock configured for the domain that the bucket cannot hold, a default retention
  rule on the bucket, or lock settings that cannot be read;
- no complete expiry sweep of the store within twice the sweep interval;
- no integrity sample covering the store within ``integrity_max_age`` (2 days by default), or
  a last sample that found copies not matching their manifests;
- a key id in use that the keyring does not hold;
- a manifest that cannot be trusted (malformed, failing its MAC, under another backup's key);
- a store that cannot be listed or whose objects cannot all be judged.

The ledgers hold only the latest sweep and sample: judged as of a time before them (``--now``
in the past), they count as recent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from regionvault import documents, expiry
from regionvault.config import PII_MAX_RETENTION_DAYS, DataClass
from regionvault.context import DomainContext
from regionvault.documents import SCHEMA_VERSION, header, schema_id, seconds
from regionvault.errors import IntegrityError, NotFound, StoreError
from regionvault.expiry import Quarantined
from regionvault.integrity import ReadLedger
from regionvault.keyring import Keyring
from regionvault.manifest import MANIFEST_SUFFIX
from regionvault.object_lock import backstop_pii_days
from regionvault.provision import (
    RULE_PII,
    BucketRefused,
    bucket_lifecycle,
    check_bucket,
    check_lock,
    pii_prefix,
    required_rules,
)
from regionvault.retention import ExpiryRules, decide_expiry
from regionvault.stores.lifecycle import BucketState, FoundRule, Rule, RuleKind

log = logging.getLogger("regionvault.compliance")

#: the stores every domain has (a domain with Cloud Files is judged in "swift" as well)
STORES: tuple[str, ...] = expiry.STORES
#: the ``schema`` field of the JSON document (``regionvault.documents``)
SCHEMA_ID = schema_id("compliance")
#: an integrity sample older than this fails the report (``--integrity-max-age-days``)
DEFAULT_INTEGRITY_MAX_AGE = timedelta(days=2)
#: a store's last complete expiry sweep may be this many sweep intervals old
SWEEP_INTERVALS_ALLOWED = 2


class Condition(StrEnum):
    """What a finding is about (the ``condition`` of a finding in the JSON)."""

    STORE_UNREADABLE = "store-unreadable"
    PAST_POLICY = "past-policy"
    LIFECYCLE_RULES = "lifecycle-rules"
    EXPIRY_SWEEP = "expiry-sweep"
    INTEGRITY_SAMPLE = "integrity-sample"
    KEY_NOT_HELD = "key-not-held"
    MANIFEST_UNTRUSTED = "manifest-untrusted"
    #: the domain configures object lock and the bucket cannot lock objects, or the bucket
    #: locks every object by a default retention rule
    OBJECT_LOCK = "object-lock"


@dataclass(frozen=True)
class Finding:
    """One reason the domain is not compliant: one sentence naming the store and the thing."""

    condition: Condition
    #: "s3", "gcs" or "swift"; None for what concerns the domain as a whole
    store: str | None
    #: the object key, rule id or key id it is about, where there is one
    subject: str | None
    message: str

    def __str__(self) -> str:
        return self.message


class BucketRulesReader(Protocol):
    """What the report needs of a bucket's lifecycle configuration: ``read`` the bucket as the
    store holds it now (``regionvault.stores.lifecycle.BucketLifecycle`` is one; tests pass a
    fake). Errors are the project's ``StoreError`` kinds."""

    store: str
    bucket: str

    def read(self) -> BucketState: ...


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgedObject:
    """One backup as one store holds it, as the expiry sweep judges it."""

    #: the backup object's key (its manifest's when the object is gone; the key itself when it
    #: is outside the layout)
    key: str
    backup_id: str | None
    #: the rule it is judged by: "pii" (quarantined copies too) or "metadata"
    rule: str
    #: when its data was taken (never later than the store's timestamp); None if unknown
    born: datetime | None
    age: timedelta | None
    #: the decision's one-line reason
    reason: str
    quarantined: bool


@dataclass(frozen=True)
class RulesReport:
    """The bucket's lifecycle rules against the policy (``regionvault.provision``)."""

    bucket: str
    #: whether the rules could be read (False: ``error`` says why)
    read: bool
    #: versioning enabled or suspended; None when the bucket could not be read
    versioned: bool | None = None
    required: tuple[Rule, ...] = ()
    found: tuple[FoundRule, ...] = ()
    #: provision's findings: each a sentence naming the bucket and the rule
    findings: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class SweepRecord:
    """What the sweep ledger says of one store."""

    last_complete_at: datetime | None
    #: ``as_of`` less this is the oldest a recent sweep may be
    max_age: timedelta
    recent: bool
    #: the last sweep of the domain, complete or not, and its errors in this store
    last_attempt_at: datetime | None = None
    last_attempt_errors: str = ""
    #: the ledger could not be read
    error: str | None = None


@dataclass(frozen=True)
class SampleRecord:
    """The last integrity sample of the domain, as the read ledger summarises it."""

    at: datetime | None
    complete: bool = False
    copies: int = 0
    matched: int = 0
    mismatches: int = 0
    store_errors: str = ""
    error: str | None = None

    def covered(self, store: str) -> bool:
        """Whether the sample read ``store`` (it is not among its store errors)."""
        if self.at is None:
            return False
        # the summary joins "store: error" entries with "; " (regionvault.integrity)
        text = self.store_errors
        return not (text.startswith(f"{store}: ") or f"; {store}: " in text)


@dataclass(frozen=True)
class KeyUse:
    """A key id the store's trusted (or legacy) manifests name."""

    key_id: str
    held: bool
    #: "data-key" (wraps the backups' data keys), "manifest-mac" (signs their manifests)
    uses: tuple[str, ...]
    #: backups whose manifest names it
    backups: int


@dataclass(frozen=True)
class StoreCompliance:
    store: str
    url: str
    #: the store could be listed (False: ``errors`` says why and nothing in it was judged)
    listed: bool
    errors: tuple[str, ...]
    #: backups judged (one per object and manifest pair, or lone object or manifest)
    backups: int
    oldest_pii: JudgedObject | None
    #: should already be gone (a finding each)
    past_policy: tuple[JudgedObject, ...]
    #: past the sweep's cutoff, within the margin: the next sweep removes them
    due: tuple[JudgedObject, ...]
    rules: RulesReport
    sweep: SweepRecord
    #: the last integrity sample that read this store, if it is the domain's last sample
    integrity_sampled_at: datetime | None
    integrity_recent: bool
    key_ids: tuple[KeyUse, ...]
    #: version-1 manifests (no MAC): read, reported, never a finding by themselves
    legacy_manifests: int
    quarantined: tuple[Quarantined, ...]
    #: the bucket's object lock against the domain's setting; None when the domain configures
    #: no lock and the bucket locks nothing by default (nothing to report)
    object_lock: LockReport | None = None


@dataclass(frozen=True)
class LockReport:
    """The bucket's object lock (``regionvault.object_lock``) against the domain's setting."""

    #: the configured mode ("governance", "compliance"); None: the domain configures no lock
    mode: str | None
    #: whether the settings could be read (False: ``error`` says why)
    read: bool
    versioned: bool | None = None
    lock_enabled: bool | None = None
    default_retention: str | None = None
    #: each a sentence naming the bucket and the fix
    findings: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Policy:
    """The numbers the report judges by, from the configuration and the caller."""

    pii_days: int
    pii_cutoff: timedelta
    pii_ceiling: timedelta
    metadata_retention: timedelta
    #: sweep interval plus deletion allowance: how late the sweep may remove what is due
    sweep_margin: timedelta
    sweep_max_age: timedelta
    integrity_max_age: timedelta


@dataclass(frozen=True)
class ComplianceReport:
    domain: str
    as_of: datetime
    policy: Policy
    integrity: SampleRecord
    stores: Mapping[str, StoreCompliance]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def compliant(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        """The domain's part of the JSON document (``regionvault/compliance/v1``)."""
        return _domain_dict(self)


# --- judging one store ---------------------------------------------------------------------------


def _span(period: timedelta) -> str:
    """A duration as people read it in a finding: "40 days 3 h", "5 h", "12 min"."""
    seconds = int(period.total_seconds())
    if seconds < 3600:
        return f"{max(seconds, 0) // 60} min"
    days, rest = divmod(seconds, 86400)
    hours = rest // 3600
    if not days:
        return f"{hours} h"
    text = f"{days} day" if days == 1 else f"{days} days"
    return text + (f" {hours} h" if hours else "")


def _held(keyring: Keyring) -> Callable[[str], bool]:
    return keyring.holds


def _key_uses(ctx: DomainContext, role: str, judged: expiry.JudgedStore,
              held: Callable[[str], bool]) -> tuple[tuple[KeyUse, ...], int, list[Quarantined]]:
    """Key ids named by the manifests the sweep trusted, read again the way the sweep reads
    them; a manifest that fails on this second read is quarantined like the sweep would."""
    store = ctx.store(role)
    uses: dict[str, set[str]] = {}
    backups: dict[str, set[str]] = {}
    legacy = 0
    late: list[Quarantined] = []
    for copy in judged.copies:
        mkey = judged.manifest_keys.get(copy.name)
        if copy.quarantined is not None or mkey is None:
            continue
        try:
            manifest = expiry.read_manifest(ctx, store, mkey)
        except IntegrityError as exc:  # changed since the sweep's read
            late.append(Quarantined(role, mkey, expiry.parse_key(ctx.domain, mkey).backup_id,
                                    f"its manifest cannot be trusted: {exc}"))
            continue
        except StoreError as exc:
            judged.errors.append(f"manifest {mkey} cannot be read: {exc}")
            continue
        if manifest is None:  # removed since the listing
            continue
        legacy += manifest.legacy
        # every wrapping's key (KMS and local escrow alike) and the MAC's key
        named = [(w.key_id, "data-key") for w in manifest.wrappings]
        if manifest.mac is not None:
            named.append((manifest.mac.key_id, "manifest-mac"))
        for key_id, use in named:
            uses.setdefault(key_id, set()).add(use)
            backups.setdefault(key_id, set()).add(manifest.backup_id)
    found = tuple(KeyUse(key_id=k, held=held(k), uses=tuple(sorted(uses[k])),
                         backups=len(backups[k])) for k in sorted(uses))
    return found, legacy, late


def _object_lock(ctx: DomainContext, role: str) -> LockReport | None:
    """The bucket's lock settings as ``regionvault check`` judges them (``check_lock``)."""
    mode = ctx.lock_mode
    try:
        settings = ctx.store(role).lock_settings()
    except StoreError as exc:
        return LockReport(mode=mode, read=False, error=str(exc)) if mode is not None else None
    if mode is None and settings.default_retention is None:
        return None
    return LockReport(mode=mode, read=True, versioned=settings.versioned,
                      lock_enabled=settings.lock_enabled,
                      default_retention=settings.default_retention,
                      findings=tuple(f.message for f in check_lock(ctx, role, settings)))


def _rules(ctx: DomainContext, role: str, reader: BucketRulesReader) -> RulesReport:
    try:
        state = reader.read()
    except StoreError as exc:
        return RulesReport(bucket=reader.bucket, read=False, error=str(exc))
    try:
        required = required_rules(ctx.domain, ctx.config, role,
                                  versioned=state.versioned).rules
    except BucketRefused:
        required = ()  # no rules can hold the ceiling there; check_bucket says why
    findings = check_bucket(_AsRead(state), ctx.domain, ctx.config)
    return RulesReport(bucket=state.bucket, read=True, versioned=state.versioned,
                       required=required, found=state.rules,
                       findings=tuple(f.message for f in findings))


def _object_expiries(ctx: DomainContext, now: datetime) -> RulesReport:
    """Cloud Files has no lifecycle rules: the store gives every pii object its own expiry
    (``X-Delete-At``, ``SwiftStore(delete_after=...)``), and this reads it back from each
    one, as the rules are read from a bucket. A pii object without one, or with one later
    than the backstop allows after it was written, is a finding."""
    from regionvault.stores.swift import SwiftStore

    store = ctx.store("swift")
    assert isinstance(store, SwiftStore)
    days = backstop_pii_days(ctx.config.retention)
    prefix = pii_prefix(ctx.domain)
    required = Rule(RULE_PII, RuleKind.EXPIRE, prefix, days)
    findings: list[str] = []
    try:
        versioned = store.lock_settings().versioned
        for info in store.list_info(prefix):
            try:
                expires = store.expires_at(info.key)
            except NotFound:
                continue  # expired (or deleted) since it was listed
            where = f"swift://{store.bucket}/{info.key}"
            if expires is None:
                findings.append(f"{where} holds personal data and has no X-Delete-At: only "
                                "the expiry sweep would remove it")
            elif info.modified is not None and expires > info.modified + timedelta(days=days):
                findings.append(f"{where} expires at {_iso(expires)}, later than {days} days "
                                f"after it was written ({_iso(info.modified)})")
    except StoreError as exc:
        return RulesReport(bucket=store.bucket, read=False, error=str(exc))
    found = () if findings else (FoundRule(
        label="X-Delete-At on every pii object", kind=RuleKind.EXPIRE, prefixes=(prefix,),
        days=days),)
    return RulesReport(bucket=store.bucket, read=True, versioned=versioned,
                       required=(required,), found=found, findings=tuple(findings))


class _AsRead:
    """A bucket state already read, in the shape ``provision.check_bucket`` reads it from."""

    def __init__(self, state: BucketState) -> None:
        self.state = state
        self.store = state.store
        self.bucket = state.bucket

    def read(self) -> BucketState:
        return self.state

    def apply(self, rules: Iterable[Rule]) -> bool:
        raise AssertionError("a compliance report never writes lifecycle rules")


# --- ledgers -------------------------------------------------------------------------------------


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _count(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _sweeps(ledger: expiry.SweepLedger, domain: str, now: datetime, max_age: timedelta,
            stores: Iterable[str] = STORES) -> dict[str, SweepRecord]:
    try:
        last = ledger.last_sweeps(domain)
        summary = ledger.last_summary(domain)
    except Exception as exc:  # the ledger's own backend errors (redis): types unknown here
        log.warning("compliance: the sweep ledger of domain %s cannot be read: %s", domain, exc)
        return {role: SweepRecord(None, max_age, False, error=str(exc)) for role in stores}
    records = {}
    for role in stores:
        at = last.get(role)
        records[role] = SweepRecord(
            last_complete_at=at, max_age=max_age,
            recent=at is not None and now - at <= max_age,
            last_attempt_at=_time(summary.get("at")),
            last_attempt_errors=summary.get(f"errors:{role}", ""))
    return records


def _sample(ledger: ReadLedger, domain: str) -> SampleRecord:
    try:
        summary: Mapping[str, str] = ledger.last_sample(domain)
    except Exception as exc:  # the ledger's own backend errors (redis): types unknown here
        log.warning("compliance: the read ledger of domain %s cannot be read: %s", domain, exc)
        return SampleRecord(at=None, error=str(exc))
    return SampleRecord(at=_time(summary.get("at")), complete=summary.get("complete") == "yes",
                        copies=_count(summary.get("copies")),
                        matched=_count(summary.get("matched")),
                        mismatches=_count(summary.get("mismatches")),
                        store_errors=summary.get("store_errors", ""))


# --- the report ----------------------------------------------------------------------------------


def policy_of(ctx: DomainContext, integrity_max_age: timedelta) -> Policy:
    retention = ctx.config.retention
    rules = ExpiryRules.from_config(retention)
    return Policy(
        pii_days=retention.pii_days, pii_cutoff=rules.pii_cutoff,
        pii_ceiling=timedelta(days=PII_MAX_RETENTION_DAYS),
        metadata_retention=rules.metadata_retention,
        sweep_margin=timedelta(seconds=retention.sweep_interval_seconds
                               + retention.deletion_allowance_seconds),
        sweep_max_age=SWEEP_INTERVALS_ALLOWED
        * timedelta(seconds=retention.sweep_interval_seconds),
        integrity_max_age=integrity_max_age)


def compliance_report(ctx: DomainContext, *, expiry_ledger: expiry.SweepLedger,
                      integrity_ledger: ReadLedger, now: datetime,
                      rules: Mapping[str, BucketRulesReader] | None = None,
                      integrity_max_age: timedelta = DEFAULT_INTEGRITY_MAX_AGE,
                      ) -> ComplianceReport:
    """The compliance of ``ctx``'s domain as of ``now``; reads the stores, their lifecycle
    configuration and the two ledgers, writes nothing.

    Only ``last_sample`` of ``integrity_ledger`` is read. ``rules`` gives each store's
    lifecycle configuration (default: the bucket's own, as ``regionvault check`` reads it).
    Store and ledger trouble becomes findings; only a configuration or a key secret that
    cannot be read raises (``ConfigError``)."""
    domain = ctx.domain.value
    policy = policy_of(ctx, integrity_max_age)
    sweeps = _sweeps(expiry_ledger, domain, now, policy.sweep_max_age, ctx.store_names)
    sample = _sample(integrity_ledger, domain)
    held = _held(ctx.keyring)
    stores: dict[str, StoreCompliance] = {}
    findings: list[Finding] = []
    for role in ctx.store_names:
        if rules is not None and role in rules:
            judged_rules = _rules(ctx, role, rules[role])
        elif role == "swift":
            judged_rules = _object_expiries(ctx, now)
        else:
            judged_rules = _rules(ctx, role, bucket_lifecycle(ctx.config, ctx.domain, role))
        entry = _store_compliance(ctx, role, now, policy, held, rules=judged_rules,
                                  sweep=sweeps[role],
                                  sampled_at=sample.at if sample.covered(role) else None)
        entry = replace(entry, object_lock=_object_lock(ctx, role))
        stores[role] = entry
        findings += _store_findings(entry, domain, policy, now)
    if sample.mismatches:
        findings.append(Finding(
            Condition.INTEGRITY_SAMPLE, None, None,
            f"domain {domain}: the last integrity sample ({_iso(sample.at)}) found "
            f"{sample.mismatches} stored "
            + ("copy that does not match its manifest" if sample.mismatches == 1
               else "copies that do not match their manifests")
            + "; the journal and the worker's log name them"))
    return ComplianceReport(domain=domain, as_of=now, policy=policy, integrity=sample,
                            stores=stores, findings=tuple(findings))


def _store_compliance(ctx: DomainContext, role: str, now: datetime, policy: Policy,
                      held: Callable[[str], bool], *, rules: RulesReport, sweep: SweepRecord,
                      sampled_at: datetime | None) -> StoreCompliance:
    """What one store holds, judged as the expiry sweep judges it, with the evidence read
    elsewhere (its bucket's rules, its sweeps, the sample that last read it)."""
    judged = expiry.judge_store(ctx, role, now)
    key_ids, legacy, late = _key_uses(ctx, role, judged, held) if judged.listed \
        else ((), 0, [])
    # a manifest that failed the second read is judged as the sweep judges a quarantined one
    reasons = {q.key: q.reason for q in late}
    copies = [replace(c, quarantined=reasons[judged.manifest_keys[c.name]])
              if judged.manifest_keys.get(c.name) in reasons else c for c in judged.copies]

    expiry_rules = ExpiryRules.from_config(ctx.config.retention)
    decision_now = decide_expiry(copies, expiry_rules, now)
    # Judged again as of the latest time by which the sweep must have acted, over the copies
    # that existed then: what it should have removed by now, whatever its timing. (A backup
    # that became removable only because a newer one appeared since is only due.)
    overdue_at = now - policy.sweep_margin
    decision_then = decide_expiry([c for c in copies if c.born is None or c.born <= overdue_at],
                                  expiry_rules, overdue_at)
    by_name = {c.name: c for c in copies}

    def judged_object(name: str, reason: str) -> JudgedObject:
        copy = by_name[name]
        key = judged.keys.get(name, name)
        born = copy.born
        return JudgedObject(key=key, backup_id=expiry.parse_key(ctx.domain, key).backup_id,
                            rule=copy.rule.value, born=born,
                            age=(now - born) if born is not None else None, reason=reason,
                            quarantined=copy.quarantined is not None)

    overdue = set(decision_then.remove)
    pii = [c for c in copies if c.rule is DataClass.PII and c.born is not None]
    oldest = min(pii, key=lambda c: (c.born or now, c.name)) if pii else None
    return StoreCompliance(
        store=role, url=ctx.url(role), listed=judged.listed, errors=tuple(judged.errors),
        backups=len(copies),
        oldest_pii=judged_object(oldest.name, decision_now.reasons[oldest.name])
        if oldest is not None else None,
        past_policy=tuple(judged_object(n, decision_then.reasons[n])
                          for n in decision_then.remove),
        due=tuple(judged_object(n, decision_now.reasons[n])
                  for n in decision_now.remove if n not in overdue),
        rules=rules, sweep=sweep, integrity_sampled_at=sampled_at,
        integrity_recent=sampled_at is not None and now - sampled_at <= policy.integrity_max_age,
        key_ids=key_ids,
        legacy_manifests=legacy, quarantined=tuple(judged.quarantined) + tuple(late))


def _iso(at: datetime | None) -> str:
    """A time in a finding, to the second."""
    return at.isoformat(timespec="seconds") if at is not None else "never"


def _store_findings(s: StoreCompliance, domain: str, policy: Policy,
                    now: datetime) -> list[Finding]:
    found: list[Finding] = []

    def add(condition: Condition, subject: str | None, message: str) -> None:
        found.append(Finding(condition, s.store, subject, message))

    if not s.listed:
        add(Condition.STORE_UNREADABLE, None,
            f"{s.url}: nothing in it could be judged: {'; '.join(s.errors)}")
    elif s.errors:
        add(Condition.STORE_UNREADABLE, None,
            f"{s.url}: not every backup in it could be judged ({len(s.errors)} "
            f"error{'s' if len(s.errors) > 1 else ''}, first: {s.errors[0]})")
    for item in s.past_policy:
        age = f"{_span(item.age)} old" if item.age is not None else "of unknown age"
        add(Condition.PAST_POLICY, item.key,
            f"{s.url}: {item.key} is past its policy ({item.reason}; it is {age}) and the "
            "expiry sweep should have removed it by now")
    if not s.rules.read:
        add(Condition.LIFECYCLE_RULES, None,
            f"{s.url}: its lifecycle rules cannot be read ({s.rules.error}), so the bucket's "
            "own backstop is unproven")
    for message in s.rules.findings:
        add(Condition.LIFECYCLE_RULES, None, message)
    lock = s.object_lock
    if lock is not None and not lock.read:
        add(Condition.OBJECT_LOCK, None,
            f"{s.url}: its object lock settings cannot be read ({lock.error}), so whether it "
            f"locks backups ({lock.mode} mode is configured) is unproven")
    for message in lock.findings if lock is not None else ():
        add(Condition.OBJECT_LOCK, None, message)
    sweep = s.sweep
    every = _span(policy.sweep_max_age / SWEEP_INTERVALS_ALLOWED)
    if sweep.error is not None:
        add(Condition.EXPIRY_SWEEP, None,
            f"{s.url}: the record of expiry sweeps cannot be read ({sweep.error})")
    elif sweep.last_complete_at is None:
        add(Condition.EXPIRY_SWEEP, None,
            f"{s.url}: no complete expiry sweep of it is recorded; regionvault.expire_domain "
            f"of domain {domain} must run every {every}")
    elif not sweep.recent:
        errors = (f"; the last sweep ({_iso(sweep.last_attempt_at)}) reported: "
                  f"{sweep.last_attempt_errors}" if sweep.last_attempt_errors else "")
        add(Condition.EXPIRY_SWEEP, None,
            f"{s.url}: its last complete expiry sweep was at {_iso(sweep.last_complete_at)}, "
            f"{_span(now - sweep.last_complete_at)} ago, more than twice the sweep interval "
            f"of {every}{errors}")
    if not s.integrity_recent:
        if s.integrity_sampled_at is None:
            what = "no integrity sample that read it is recorded"
        else:
            what = (f"its last integrity sample was at {_iso(s.integrity_sampled_at)}, "
                    f"{_span(now - s.integrity_sampled_at)} ago")
        add(Condition.INTEGRITY_SAMPLE, None,
            f"{s.url}: {what}; regionvault.integrity_sample of domain {domain} must read it "
            f"within {_span(policy.integrity_max_age)}")
    for use in s.key_ids:
        if not use.held:
            add(Condition.KEY_NOT_HELD, use.key_id,
                f"{s.url}: {use.backups} backup{'s use' if use.backups > 1 else ' uses'} key "
                f"{use.key_id!r} ({', '.join(use.uses)}), which the keyring of domain {domain} "
                "does not hold; put it back in the keyring (previous_keys, or the keyring "
                "file), or, if another wrapping still opens "
                f"{'them' if use.backups > 1 else 'it'}, run 'regionvault keys rewrap'")
    for q in s.quarantined:
        if q.key.endswith(MANIFEST_SUFFIX):
            add(Condition.MANIFEST_UNTRUSTED, q.key,
                f"{s.url}: manifest {q.key} is quarantined ({q.reason}); its backup is "
                "judged as pii by its store time, and which key it needs is unknown")
    return found


# --- the JSON document ---------------------------------------------------------------------------


def _object_dict(item: JudgedObject) -> dict[str, Any]:
    return {"key": item.key, "backup_id": item.backup_id, "rule": item.rule,
            "born_at": _iso_or_none(item.born), "age_seconds": seconds(item.age),
            "reason": item.reason, "quarantined": item.quarantined}


def _iso_or_none(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _lock_dict(lock: LockReport) -> dict[str, Any]:
    return {"mode": lock.mode, "read": lock.read, "versioned": lock.versioned,
            "lock_enabled": lock.lock_enabled, "default_retention": lock.default_retention,
            "findings": list(lock.findings), "error": lock.error}


def _store_dict(s: StoreCompliance) -> dict[str, Any]:
    document = _store_fields(s)
    # Optional, and only where there is a lock to report, so a document of a domain without
    # one is unchanged (schema v1, "new optional fields do not raise it").
    if s.object_lock is not None:
        document["object_lock"] = _lock_dict(s.object_lock)
    return document


def _store_fields(s: StoreCompliance) -> dict[str, Any]:
    rules = s.rules
    return {
        "store": s.store, "url": s.url, "listed": s.listed, "errors": list(s.errors),
        "backups": s.backups,
        "oldest_pii": _object_dict(s.oldest_pii) if s.oldest_pii is not None else None,
        "past_policy": [_object_dict(o) for o in s.past_policy],
        "due_for_removal": [_object_dict(o) for o in s.due],
        "versioned": rules.versioned,
        "lifecycle": {
            "bucket": rules.bucket, "read": rules.read, "error": rules.error,
            "required": [{"id": r.id, "kind": r.kind.value, "prefix": r.prefix, "days": r.days,
                          "description": r.describe()} for r in rules.required],
            "found": [{"label": f.label, "id": f.id, "kind": f.kind.value,
                       "prefixes": list(f.prefixes), "days": f.days, "enabled": f.enabled,
                       "narrowed_by": list(f.narrowed_by)} for f in rules.found],
            "findings": list(rules.findings),
        },
        "expiry_sweep": {
            "last_complete_at": _iso_or_none(s.sweep.last_complete_at),
            "max_age_seconds": s.sweep.max_age.total_seconds(), "recent": s.sweep.recent,
            "last_attempt_at": _iso_or_none(s.sweep.last_attempt_at),
            "last_attempt_errors": s.sweep.last_attempt_errors, "error": s.sweep.error,
        },
        "integrity_sample": {"last_at": _iso_or_none(s.integrity_sampled_at),
                             "recent": s.integrity_recent},
        "key_ids": [{"key_id": k.key_id, "held": k.held, "uses": list(k.uses),
                     "backups": k.backups} for k in s.key_ids],
        "legacy_manifests": s.legacy_manifests,
        "quarantined": [{"key": q.key, "backup_id": q.backup_id, "reason": q.reason,
                         "manifest": q.key.endswith(MANIFEST_SUFFIX)} for q in s.quarantined],
    }


def _domain_dict(report: ComplianceReport) -> dict[str, Any]:
    p, sample = report.policy, report.integrity
    return {
        "domain": report.domain,
        "as_of": report.as_of.isoformat(),
        "compliant": report.compliant,
        "findings": [{"condition": f.condition.value, "store": f.store, "subject": f.subject,
                      "message": f.message} for f in report.findings],
        "policy": {
            "pii_days": p.pii_days, "pii_cutoff_seconds": p.pii_cutoff.total_seconds(),
            "pii_ceiling_seconds": p.pii_ceiling.total_seconds(),
            "metadata_retention_seconds": p.metadata_retention.total_seconds(),
            "sweep_margin_seconds": p.sweep_margin.total_seconds(),
            "sweep_max_age_seconds": p.sweep_max_age.total_seconds(),
            "integrity_max_age_seconds": p.integrity_max_age.total_seconds(),
        },
        "integrity_sample": {
            "at": _iso_or_none(sample.at), "complete": sample.complete, "copies": sample.copies,
            "matched": sample.matched, "mismatches": sample.mismatches,
            "store_errors": sample.store_errors, "error": sample.error,
        },
        "stores": {role: _store_dict(s) for role, s in report.stores.items()},
    }


def compliance_document(reports: Iterable[ComplianceReport],
                        generated_at: datetime) -> dict[str, Any]:
    """The JSON document ``regionvault compliance --json`` prints (schema: ``load_schema``)."""
    domains = [r.as_dict() for r in reports]
    return {**header("compliance"), "generated_at": generated_at.isoformat(),
            "compliant": all(d["compliant"] for d in domains), "domains": domains}


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``compliance_document``."""
    return documents.load_schema("compliance")


__all__ = ["DEFAULT_INTEGRITY_MAX_AGE", "SCHEMA_ID", "SCHEMA_VERSION", "STORES",
           "BucketRulesReader", "ComplianceReport", "Condition", "Finding", "JudgedObject",
           "KeyUse", "LockReport", "Policy", "RulesReport", "SampleRecord", "StoreCompliance",
           "SweepRecord",
           "compliance_document", "compliance_report", "load_schema", "policy_of"]
