"""The backstops in the buckets: lifecycle rules that delete personal data in the stores
themselves, whatever happens to regionvault's own expiry.

``required_rules`` (pure) says what a domain's bucket must hold; ``compare`` (pure) says what is
missing or weaker in what a bucket holds; ``provision`` writes the rules (idempotent, keeping the
bucket's other rules) and ``check_rules`` reports the difference. The wire formats of S3 and GCS
live in ``regionvault.stores.lifecycle``.

What the rules are, per bucket of domain D (``P`` = ``D/pii/``, ``N`` = ``retention.pii_days``
but at most 28, a day under the 29-day ceiling because the clouds act late, see below):

- an unversioned bucket: objects under P are deleted N days after they were written;
- a versioned (or, on S3, versioning-suspended) bucket: deleting an object there only makes it a
  noncurrent version, so the current version expires after N - 1 days and a noncurrent version
  one day after it became noncurrent: N days in all (see ``required_rules``);
- S3 only: multipart uploads are aborted a day after they started (their parts are stored bytes
  too). GCS resumable uploads store nothing until finished, and GCS drops them after a week;
- GCS only: soft delete is turned off, since it keeps deleted objects (7 days by default).

The stores apply lifecycle rules late, not on the second: S3 rounds an expiry up to the next
midnight UTC and both clouds delete asynchronously (within about a day), which is why N stays a
day under the ceiling. The rules are therefore the backstop, not the guarantee: regionvault's
expiry sweep deletes on time; the rules delete even when the sweep cannot run at all.

Refused (``BucketRefused``, exit code 3), because no rule provision can write would keep the
ceiling:

- an S3 bucket with MFA delete (S3 accepts no lifecycle configuration on it);
- a GCS bucket whose retention policy keeps objects longer than N days;
- a versioned bucket when N is 1 (a current version and its noncurrent version need a day each).

Immutable copies (a domain with ``object_lock``): before the rules, provision makes each bucket
able to lock objects. A missing bucket is created with it (S3 ``ObjectLockEnabledForBucket``,
GCS ``enableObjectRetention``) in the domain's configured region; an existing S3 bucket gets
versioning and Object Lock enabled; an existing GCS bucket without object retention is refused
(regionvault enables it only when it creates a bucket). The bucket is given NO default
retention rule, and one found is removed: only backup objects are locked, each until its own
date (``regionvault.object_lock``), while manifests must stay rewritable and erasable. Object
Lock makes the bucket versioned, so it gets the versioned rules above, plus
``regionvault-noncurrent``: noncurrent versions anywhere under the domain's prefix (a
rewritten manifest leaves one) are deleted a day later, so that no version lingers.
``check_locks`` reports a configured lock the bucket lacks, and a default retention rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from regionvault.config import Config, DataClass
from regionvault.domains import Domain
from regionvault.errors import NotFound, PermanentStoreError, RegionvaultError
from regionvault.manifest import class_prefix
from regionvault.object_lock import backstop_pii_days, lock_problems
from regionvault.stores.base import LockSettings
from regionvault.stores.lifecycle import (
    BucketLifecycle,
    BucketLock,
    BucketState,
    FoundRule,
    GCSBucketLock,
    GCSLifecycle,
    Rule,
    RuleKind,
    S3BucketLock,
    S3Lifecycle,
)

if TYPE_CHECKING:
    from regionvault.context import DomainContext

#: the rule that keeps personal data under the ceiling (on a versioned bucket: the current version)
RULE_PII = "regionvault-pii-ceiling"
#: on a versioned bucket: the noncurrent versions of personal data
RULE_PII_NONCURRENT = "regionvault-pii-noncurrent"
#: S3: abandoned multipart uploads
RULE_ABORT_UPLOADS = "regionvault-abort-incomplete-uploads"
#: a bucket versioned for object lock: noncurrent versions anywhere under the domain's prefix
RULE_NONCURRENT = "regionvault-noncurrent"
#: what lock findings name as their rule
LOCK_SETTING = "ObjectLock"

#: days a noncurrent version of personal data may stay, on versioned buckets
NONCURRENT_DAYS = 1
#: days an incomplete S3 multipart upload may stay
ABORT_UPLOAD_DAYS = 1

STORES = ("s3", "gcs")


class BucketRefused(RegionvaultError):
    """A bucket cannot be made to keep the retention ceiling by lifecycle rules; the message
    names the bucket, why, and what to do."""

    exit_code = 3


class Problem(StrEnum):
    MISSING = "missing"
    WEAKER = "weaker"
    SOFT_DELETE = "soft-delete"
    UNSUPPORTED = "unsupported"
    #: the bucket cannot lock objects although the domain configures a lock, or it locks
    #: every object by a default retention rule
    OBJECT_LOCK = "object-lock"


@dataclass(frozen=True)
class Finding:
    """One way a bucket falls short of the policy: one sentence naming the rule and the bucket."""

    store: str
    bucket: str
    #: the required rule (or bucket setting) that is missing or weaker
    rule: str
    problem: Problem
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class BucketRules:
    """What one bucket of a domain must hold."""

    store: str
    bucket: str
    domain: Domain
    #: the days the rules give personal data after it was written: ``retention.pii_days``, but at
    #: most a day under the 29-day ceiling (the clouds act up to a day late)
    ceiling_days: int
    versioned: bool
    rules: tuple[Rule, ...]

    def rule(self, kind: RuleKind) -> Rule | None:
        return next((r for r in self.rules if r.kind is kind), None)

    @property
    def url(self) -> str:
        return _url(self.store, self.bucket)


@dataclass(frozen=True)
class ProvisionOutcome:
    store: str
    bucket: str
    #: whether anything was written (False: the bucket already held exactly this)
    changed: bool
    versioned: bool
    rules: tuple[Rule, ...]
    #: why the bucket was refused (nothing was written), else None
    refused: str | None = None
    #: what provision did about object lock (None: no lock configured, nothing to report)
    lock: LockOutcome | None = None

    @property
    def url(self) -> str:
        return _url(self.store, self.bucket)


@dataclass(frozen=True)
class LockOutcome:
    """What provision did to let a bucket lock objects."""

    store: str
    bucket: str
    #: the configured mode ("governance", "compliance"); None: the domain configures no lock
    mode: str | None
    #: the bucket did not exist and was created, able to lock objects
    created: bool = False
    #: versioning or the object lock configuration was written
    changed: bool = False
    #: as the bucket reports them after provision (None when refused before reading)
    settings: LockSettings | None = None
    #: why the bucket cannot lock objects (nothing written for the lock), else None
    refused: str | None = None

    @property
    def url(self) -> str:
        return _url(self.store, self.bucket)


def domain_prefix(domain: Domain) -> str:
    return f"{domain.value}/"


def pii_prefix(domain: Domain) -> str:
    return class_prefix(domain, DataClass.PII)


def _bucket_of(config: Config, domain: Domain, store: str) -> str:
    dcfg = config.domain(domain)
    if store == "s3":
        return dcfg.s3_bucket
    if store == "gcs":
        return dcfg.gcs_bucket
    raise ValueError(f"unknown store {store!r} (stores: s3, gcs)")


def _url(store: str, bucket: str) -> str:
    return f"{'gs' if store == 'gcs' else 's3'}://{bucket}"


def required_rules(domain: Domain, config: Config, store: str, *,
                   versioned: bool = False) -> BucketRules:
    """The lifecycle rules the ``store`` ("s3" or "gcs") bucket of ``domain`` must hold.

    Pure. Raises ``BucketRefused`` for a versioned bucket when ``retention.pii_days`` is 1.
    """
    bucket = _bucket_of(config, domain, store)
    prefix = pii_prefix(domain)
    # The clouds act late: S3 rounds an expiration up to the next midnight UTC and GCS may
    # act up to a day after the age is reached. A rule of 29 days could therefore let a pii
    # object live almost 30; at most 28 keeps the backstop itself under the 29-day ceiling.
    # (Object locks end no later than this: regionvault.object_lock.)
    days = backstop_pii_days(config.retention)
    if versioned:
        # A version's life is its life as the current version plus its life as a noncurrent
        # one, so the two rules split the days: (N - 1) + 1 = N <= 28. A version that the
        # sweep deletes early becomes noncurrent then and is gone a day later.
        if days <= NONCURRENT_DAYS:
            raise BucketRefused(
                f"{_url(store, bucket)} is versioned and retention.pii_days is {days}: no "
                "lifecycle rules can delete a backup and then its noncurrent version within "
                f"{days} day; use an unversioned bucket or raise retention.pii_days to "
                f"{NONCURRENT_DAYS + 1} or more")
        rules = [Rule(RULE_PII, RuleKind.EXPIRE, prefix, days - NONCURRENT_DAYS),
                 Rule(RULE_PII_NONCURRENT, RuleKind.EXPIRE_NONCURRENT, prefix, NONCURRENT_DAYS)]
        if config.domain(domain).object_lock is not None:
            # The bucket is versioned for the lock: rewritten manifests, replaced uploads and
            # metadata backups deleted by hand leave noncurrent versions, kept a day at most.
            rules.append(Rule(RULE_NONCURRENT, RuleKind.EXPIRE_NONCURRENT,
                              domain_prefix(domain), NONCURRENT_DAYS))
    else:
        rules = [Rule(RULE_PII, RuleKind.EXPIRE, prefix, days)]
    if store == "s3":
        rules.append(Rule(RULE_ABORT_UPLOADS, RuleKind.ABORT_UPLOADS, "", ABORT_UPLOAD_DAYS))
    return BucketRules(store=store, bucket=bucket, domain=domain, ceiling_days=days,
                       versioned=versioned, rules=tuple(rules))


# --- comparing -------------------------------------------------------------------------------


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _covering(state: BucketState, rule: Rule) -> list[FoundRule]:
    return [f for f in state.rules if f.kind is rule.kind and f.covers(rule.prefix)]


def _why_not(state: BucketState, rule: Rule) -> str:
    """Why no rule of the bucket does what ``rule`` does: the nearest candidate's fault."""
    same_kind = [f for f in state.rules if f.kind is rule.kind]
    candidates = ([f for f in same_kind if f.id == rule.id]
                  or [f for f in same_kind if any(rule.prefix.startswith(p) for p in f.prefixes)]
                  or [f for f in same_kind if any(p.startswith(rule.prefix) for p in f.prefixes)])
    for found in candidates:
        if not found.enabled:
            return f"{found.label} is disabled"
        if found.narrowed_by:
            return f"{found.label} applies only under further conditions " \
                f"({', '.join(found.narrowed_by)})"
        if not found.covers(rule.prefix):
            shown = ", ".join(f"'{p}'" for p in found.prefixes)
            return f"{found.label} applies to {shown}, not to all of '{rule.prefix}'"
    return "no rule of the bucket does"


def compare(required: BucketRules, state: BucketState) -> list[Finding]:
    """Everything by which ``state`` falls short of ``required``. Pure.

    A rule is satisfied by any enabled rule of the bucket that reaches every object under its
    prefix with no more days (the bucket's own ids and extra rules are fine); on a versioned
    bucket the current and noncurrent days found must add up to no more than the ceiling.
    """
    url, domain = state.url, required.domain.value
    fix = f"run `regionvault provision --domain {domain}`"
    findings: list[Finding] = []

    def finding(rule: str, problem: Problem, message: str) -> None:
        findings.append(Finding(state.store, state.bucket, rule, problem, message))

    if not state.lifecycle_allowed:
        finding("MFADelete", Problem.UNSUPPORTED,
                f"{url}: MFA delete is enabled, and S3 accepts no lifecycle rules on such a "
                f"bucket, so lifecycle rule '{RULE_PII}' cannot exist there; disable MFA delete "
                "or use another bucket")
    ceiling_seconds = required.ceiling_days * 86400
    if state.retention_seconds > ceiling_seconds:
        finding("retentionPolicy", Problem.UNSUPPORTED,
                f"{url}: its retention policy keeps every object "
                f"{state.retention_seconds / 86400:g} days, so personal data cannot be deleted "
                f"within {_days(required.ceiling_days)}; remove the retention policy or use "
                "another bucket")
    if state.soft_delete_seconds > 0:
        finding("softDeletePolicy", Problem.SOFT_DELETE,
                f"{url}: soft delete keeps deleted objects for "
                f"{state.soft_delete_seconds / 86400:g} days, so personal data outlives its "
                f"deletion; {fix} (it turns soft delete off)")

    best: dict[str, FoundRule] = {}  # by required rule id
    for rule in required.rules:
        covering = _covering(state, rule)
        if covering:
            best[rule.id] = min(covering, key=lambda f: f.days)
            continue
        extra = ""
        if rule.kind is RuleKind.EXPIRE_NONCURRENT:
            extra = "the bucket is versioned, so a deleted backup stays as a noncurrent version; "
        finding(rule.id, Problem.MISSING,
                f"{url}: lifecycle rule '{rule.id}' is missing: {extra}no enabled rule "
                f"{rule.describe()} ({_why_not(state, rule)}); {fix}")

    # On a versioned bucket with both expiries, their sum is judged (below); otherwise each
    # rule alone (a current-version expiry alone may take the whole ceiling).
    by_sum = required.versioned and {RULE_PII, RULE_PII_NONCURRENT} <= set(best)
    for rule in required.rules:
        found = best.get(rule.id)
        if found is None or (by_sum and rule.id in (RULE_PII, RULE_PII_NONCURRENT)):
            continue
        allowed = required.ceiling_days if rule.kind is RuleKind.EXPIRE else rule.days
        if found.days > allowed:
            finding(rule.id, Problem.WEAKER,
                    f"{url}: lifecycle rule '{rule.id}' is weaker than the policy: "
                    f"{found.label} acts after {_days(found.days)}, the policy allows "
                    f"{_days(allowed)}; {fix}")

    if by_sum:
        current, noncurrent = best[RULE_PII], best[RULE_PII_NONCURRENT]
        current_days, noncurrent_days = current.days, noncurrent.days
        total, ceiling = current_days + noncurrent_days, required.ceiling_days
        if total > ceiling:
            finding(RULE_PII, Problem.WEAKER,
                    f"{url}: lifecycle rules '{RULE_PII}' and '{RULE_PII_NONCURRENT}' are "
                    f"weaker than the policy: the bucket is versioned, and {current.label} "
                    f"({_days(current_days)}) plus {noncurrent.label} "
                    f"({_days(noncurrent_days)}) keep a version under "
                    f"'{pii_prefix(required.domain)}' up to {_days(total)}, the policy allows "
                    f"{_days(ceiling)}; {fix}")
    return findings


def refusal(required_ceiling_days: int, state: BucketState) -> str | None:
    """Why no lifecycle rules can make this bucket keep the ceiling, or None. Pure."""
    if not state.lifecycle_allowed:
        return (f"{state.url} has MFA delete enabled, and S3 accepts no lifecycle rules on such "
                "a bucket; disable MFA delete or use another bucket")
    if state.retention_seconds > required_ceiling_days * 86400:
        return (f"{state.url} has a retention policy of {state.retention_seconds / 86400:g} "
                f"days, so personal data cannot be deleted within "
                f"{_days(required_ceiling_days)}; remove the retention policy or use another "
                "bucket")
    return None


# --- the stores ------------------------------------------------------------------------------


def bucket_lifecycle(config: Config, domain: Domain, store: str) -> BucketLifecycle:
    """The lifecycle configuration of the domain's bucket in ``store``, built from the
    configuration as ``DomainContext`` builds the stores."""
    dcfg = config.domain(domain)
    if store == "s3":
        return S3Lifecycle(dcfg.s3_bucket, dcfg.aws_region,
                           endpoint_url=config.s3_endpoint_for(domain))
    if store == "gcs":
        return GCSLifecycle(dcfg.gcs_bucket, project=config.gcs.project,
                            endpoint_url=config.gcs_endpoint_for(domain),
                            anonymous=config.development,
                            our_prefixes=frozenset({pii_prefix(domain)}))
    raise ValueError(f"unknown store {store!r} (stores: s3, gcs)")


def provision_bucket(lifecycle: BucketLifecycle, domain: Domain,
                     config: Config) -> ProvisionOutcome:
    """Write the rules one bucket must hold, keeping its other rules; idempotent.

    Raises ``BucketRefused`` (writing nothing) when no rules can keep the ceiling there, and
    ``StoreError`` when the rules read back after writing still fall short."""
    state = lifecycle.read()
    required = required_rules(domain, config, lifecycle.store, versioned=state.versioned)
    reason = refusal(required.ceiling_days, state)  # the same days check() judges by
    if reason is not None:
        raise BucketRefused(reason)
    changed = lifecycle.apply(required.rules)
    # Verify before trusting: a store that silently dropped or changed a rule is an error.
    left = compare(required, lifecycle.read())
    if left:
        raise PermanentStoreError(
            f"{state.url} does not hold the lifecycle rules just written: {left[0]}")
    return ProvisionOutcome(store=lifecycle.store, bucket=lifecycle.bucket, changed=changed,
                            versioned=state.versioned, rules=required.rules)


def check_bucket(lifecycle: BucketLifecycle, domain: Domain, config: Config) -> list[Finding]:
    """What the bucket lacks against the policy; an empty list when it holds all of it."""
    state = lifecycle.read()
    try:
        required = required_rules(domain, config, lifecycle.store, versioned=state.versioned)
    except BucketRefused as exc:
        return [Finding(state.store, state.bucket, RULE_PII_NONCURRENT, Problem.UNSUPPORTED,
                        str(exc))]
    return compare(required, state)


def provision(ctx: DomainContext, stores: Iterable[str] = STORES) -> list[ProvisionOutcome]:
    """Provision the domain's buckets; a refused bucket is reported in its outcome (nothing
    written there) and the others are still provisioned.

    With ``object_lock`` configured, a missing bucket is created able to lock objects, and an
    existing one is made able to (``provision_lock``) before its rules are written, since the
    lock makes it versioned. A lock refused is reported in the outcome's ``lock``; the
    bucket's lifecycle rules are still written."""
    outcomes = []
    for store in stores:
        created = False
        try:
            # The bucket must really lie in the domain's region before regionvault configures it.
            ctx.ensure_resident(store)
        except NotFound:
            if ctx.dcfg.object_lock is None:
                raise
            # A bucket that is to lock objects is best born able to (GCS: only then).
            bucket_lock(ctx.config, ctx.domain, store).create()
            created = True
            ctx.ensure_resident(store)
        lifecycle = bucket_lifecycle(ctx.config, ctx.domain, store)
        try:
            lock = provision_lock(ctx, store, created=created)
            outcome = provision_bucket(lifecycle, ctx.domain, ctx.config)
            outcomes.append(replace(outcome, lock=lock))
        except BucketRefused as exc:
            outcomes.append(ProvisionOutcome(store=store, bucket=lifecycle.bucket, changed=False,
                                             versioned=False, rules=(), refused=str(exc)))
    return outcomes


def bucket_lock(config: Config, domain: Domain, store: str) -> BucketLock:
    """What makes the domain's bucket in ``store`` able to lock objects, built from the
    configuration as ``DomainContext`` builds the stores."""
    dcfg = config.domain(domain)
    if store == "s3":
        return S3BucketLock(dcfg.s3_bucket, dcfg.aws_region,
                            endpoint_url=config.s3_endpoint_for(domain))
    if store == "gcs":
        return GCSBucketLock(dcfg.gcs_bucket, dcfg.gcp_location, project=config.gcs.project,
                             endpoint_url=config.gcs_endpoint_for(domain),
                             anonymous=config.development)
    raise ValueError(f"unknown store {store!r} (stores: s3, gcs)")


def provision_lock(ctx: DomainContext, store: str, *, created: bool = False,
                   lock: BucketLock | None = None) -> LockOutcome | None:
    """Make the domain's bucket in ``store`` able to lock objects, with no default retention
    rule (idempotent); None when the domain configures no lock and the bucket has no default
    retention rule (nothing to do, nothing to report).

    Raises ``BucketRefused`` (writing nothing) when the versioned bucket the lock needs could
    not keep the retention ceiling by lifecycle rules (``retention.pii_days`` 1). An existing
    GCS bucket without object retention is reported refused in the outcome. Raises
    ``StoreError`` when the bucket, read back, still cannot lock objects."""
    mode = ctx.lock_mode
    objects = ctx.store(store)
    url = ctx.url(store)
    try:
        settings = objects.lock_settings()
    except PermanentStoreError:
        if mode is not None:
            raise
        # A domain without a lock whose credentials may not read lock settings (S3
        # GetBucketObjectLockConfiguration): nothing configured, nothing to do.
        return None
    if mode is None and settings.default_retention is None:
        return None
    writer = lock if lock is not None else bucket_lock(ctx.config, ctx.domain, store)
    wanted = _lock_problems(ctx, settings, url)
    if not wanted:
        return LockOutcome(store, settings.bucket, mode, created=created, settings=settings)
    if mode is not None:
        # Locking makes the bucket versioned for good: refuse before that if no rules could
        # then keep the ceiling (this raises BucketRefused, naming the bucket).
        required_rules(ctx.domain, ctx.config, store, versioned=True)
    if not writer.enables_existing:
        return LockOutcome(store, settings.bucket, mode, created=created, settings=settings,
                           refused=f"{url} cannot lock objects: object retention is not "
                           "enabled on it, and regionvault enables it only on a bucket it "
                           "creates; enable object retention on the bucket, or configure a "
                           "bucket that does not exist yet for provision to create")
    writer.enable()
    after = objects.lock_settings()
    left = _lock_problems(ctx, after, url)
    if left:  # verify before trusting: a store that kept the old settings is an error
        raise PermanentStoreError(f"{url} does not hold the object lock settings just "
                                  f"written: {left[0]}")
    return LockOutcome(store, after.bucket, mode, created=created, changed=True, settings=after)


def _lock_problems(ctx: DomainContext, settings: LockSettings, url: str) -> list[str]:
    return [str(p) for p in lock_problems(
        ctx.dcfg.object_lock, url=url, domain=ctx.domain.value, versioned=settings.versioned,
        lock_enabled=settings.lock_enabled, default_retention=settings.default_retention)]


def check_lock(ctx: DomainContext, store: str,
               settings: LockSettings | None = None) -> list[Finding]:
    """What the domain's bucket in ``store`` lacks for its object lock setting (empty when
    nothing), from ``settings`` or else as the bucket reports them now."""
    url = ctx.url(store)
    found = settings if settings is not None else ctx.store(store).lock_settings()
    return [Finding(store, found.bucket, LOCK_SETTING, Problem.OBJECT_LOCK, str(problem))
            for problem in lock_problems(
                ctx.dcfg.object_lock, url=url, domain=ctx.domain.value,
                versioned=found.versioned, lock_enabled=found.lock_enabled,
                default_retention=found.default_retention)]


def check_locks(ctx: DomainContext, stores: Iterable[str] = STORES) -> list[Finding]:
    """Every way the domain's buckets fall short of its object lock setting."""
    return [finding for store in stores for finding in check_lock(ctx, store)]


def check_rules(ctx: DomainContext, stores: Iterable[str] = STORES) -> list[Finding]:
    """Every way the domain's buckets fall short of the lifecycle rules the policy requires."""
    return [finding for store in stores
            for finding in check_bucket(bucket_lifecycle(ctx.config, ctx.domain, store),
                                        ctx.domain, ctx.config)]
