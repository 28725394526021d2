"""Bucket lifecycle rules on S3 and GCS: read what a bucket holds, write regionvault's rules.

The stores' own deletion (lifecycle rules) is the backstop behind regionvault's expiry sweep.
This module only speaks the two wire formats; what the rules must be, and whether what a bucket
holds is enough, is policy and lives in ``regionvault.provision``.

Both formats are translated to and from one neutral form: a ``Rule`` is what regionvault writes,
a ``FoundRule`` is what a bucket's configuration does, read conservatively (a rule with a
condition we do not model is "narrowed" and never counted as covering anything).

Writing replaces regionvault's own rules and keeps every other rule of the bucket:

- on S3 ours are the rules whose ``ID`` starts with ``regionvault-``;
- GCS rules carry no id, so ours are the ``Delete`` rules whose condition has exactly the shape
  regionvault writes (see ``_is_ours_gcs``); any other rule, even on the same prefix, is kept.

Object lock (``S3BucketLock``, ``GCSBucketLock``): create a bucket able to lock objects, or
make an existing one able to, with no default retention rule. Reading the lock settings is the
stores' own ``lock_settings``.

Vendor errors are translated with the store modules' own ``translate_error``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from regionvault.errors import RegionvaultError
from regionvault.stores import gcs as gcs_store
from regionvault.stores import s3 as s3_store


class RuleKind(StrEnum):
    #: delete objects (on a versioned bucket: make the live version noncurrent) by age
    EXPIRE = "expire"
    #: delete noncurrent versions some days after they became noncurrent
    EXPIRE_NONCURRENT = "expire-noncurrent"
    #: abort multipart uploads some days after they were started (S3 only)
    ABORT_UPLOADS = "abort-uploads"


@dataclass(frozen=True)
class Rule:
    """A lifecycle rule regionvault writes."""

    id: str
    kind: RuleKind
    #: the rule applies to keys starting with this ("" = the whole bucket)
    prefix: str
    days: int

    def describe(self) -> str:
        day_s = "day" if self.days == 1 else "days"
        where = f"under '{self.prefix}'" if self.prefix else "in the whole bucket"
        if self.kind is RuleKind.EXPIRE:
            return f"deletes objects {where} within {self.days} {day_s} of being written"
        if self.kind is RuleKind.EXPIRE_NONCURRENT:
            return f"deletes noncurrent versions {where} within {self.days} {day_s} of " \
                "becoming noncurrent"
        return f"aborts multipart uploads {where} within {self.days} {day_s} of their start"


@dataclass(frozen=True)
class FoundRule:
    """One action of one lifecycle rule, as a bucket holds it."""

    #: how a person finds it: "rule 'ID'" on S3, "Delete rule #2" on GCS
    label: str
    kind: RuleKind
    #: it applies under any of these ("" = the whole bucket)
    prefixes: tuple[str, ...]
    days: int
    #: S3 rules can be disabled; GCS rules cannot
    enabled: bool = True
    #: further conditions that limit what the rule applies to (tags, sizes, storage classes...)
    narrowed_by: tuple[str, ...] = ()
    #: the S3 rule ID (None on GCS)
    id: str | None = None

    def covers(self, prefix: str) -> bool:
        """Whether every object under ``prefix`` is subject to this rule."""
        return (self.enabled and not self.narrowed_by
                and any(prefix.startswith(p) for p in self.prefixes))


@dataclass(frozen=True)
class BucketState:
    """What a bucket holds that decides how long bytes can live in it."""

    store: str  # "s3" or "gcs"
    bucket: str
    #: versioning enabled, or (S3) suspended: noncurrent versions may exist
    versioned: bool
    rules: tuple[FoundRule, ...]
    #: S3 refuses lifecycle rules on a bucket with MFA delete
    lifecycle_allowed: bool = True
    #: GCS soft delete keeps deleted objects this long (0: off)
    soft_delete_seconds: int = 0
    #: GCS retention policy: no object can be deleted before this age (0: none)
    retention_seconds: int = 0

    @property
    def url(self) -> str:
        return f"{'gs' if self.store == 'gcs' else 's3'}://{self.bucket}"


class BucketLifecycle(Protocol):
    """The lifecycle configuration of one bucket.

    ``read`` MUST report the bucket as the store holds it now. ``apply`` MUST replace
    regionvault's own rules with ``rules`` (removing those of ours not in ``rules``), keep every
    other rule unchanged, make the store keep no deleted bytes (``soft delete`` off where the
    store has it), write nothing when the bucket already holds exactly that, and return whether
    it wrote. Both are idempotent; errors are the project's ``StoreError`` kinds.
    """

    store: str
    bucket: str

    def read(self) -> BucketState: ...

    def apply(self, rules: Sequence[Rule]) -> bool: ...


# --- S3 --------------------------------------------------------------------------------------

#: the ids of regionvault's S3 rules start with this; such rules are replaced, others kept
OUR_S3_ID_PREFIX = "regionvault-"


def s3_rule_body(rule: Rule) -> dict[str, Any]:
    body: dict[str, Any] = {"ID": rule.id, "Status": "Enabled", "Filter": {"Prefix": rule.prefix}}
    if rule.kind is RuleKind.EXPIRE:
        body["Expiration"] = {"Days": rule.days}
    elif rule.kind is RuleKind.EXPIRE_NONCURRENT:
        body["NoncurrentVersionExpiration"] = {"NoncurrentDays": rule.days}
    else:
        body["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": rule.days}
    return body


def parse_s3_rules(raw: Sequence[dict[str, Any]]) -> tuple[FoundRule, ...]:
    """The actions of S3 lifecycle rules (``GetBucketLifecycleConfiguration``'s ``Rules``)."""
    found: list[FoundRule] = []
    for rule in raw:
        rule_id = rule.get("ID")
        label = f"rule '{rule_id}'" if rule_id else "an unnamed rule"
        enabled = rule.get("Status") == "Enabled"
        filt = rule.get("Filter")
        if filt is None:  # the legacy form: a top-level Prefix, or nothing for the whole bucket
            prefix, narrowed = str(rule.get("Prefix", "")), ()
        else:  # And, Tag, ObjectSize*: the rule does not reach every object under its prefix
            prefix = str(filt.get("Prefix", ""))
            narrowed = tuple(sorted(k for k in filt if k != "Prefix"))

        actions: list[tuple[RuleKind, Any, tuple[str, ...]]] = []
        # Expiration by Date (a fixed day) or ExpiredObjectDeleteMarker sets no age: not counted.
        if "Days" in rule.get("Expiration", {}):
            actions.append((RuleKind.EXPIRE, rule["Expiration"]["Days"], ()))
        noncurrent = rule.get("NoncurrentVersionExpiration", {})
        if "NoncurrentDays" in noncurrent:
            # NewerNoncurrentVersions keeps that many noncurrent versions whatever their age.
            keeps = ("NewerNoncurrentVersions",) if "NewerNoncurrentVersions" in noncurrent else ()
            actions.append((RuleKind.EXPIRE_NONCURRENT, noncurrent["NoncurrentDays"], keeps))
        abort = rule.get("AbortIncompleteMultipartUpload", {})
        if "DaysAfterInitiation" in abort:
            actions.append((RuleKind.ABORT_UPLOADS, abort["DaysAfterInitiation"], ()))
        found += [FoundRule(label=label, kind=kind, prefixes=(prefix,), days=int(days),
                            enabled=enabled, narrowed_by=narrowed + extra, id=rule_id)
                  for kind, days, extra in actions]
    return tuple(found)


def merge_s3_rules(existing: Sequence[dict[str, Any]],
                   rules: Sequence[Rule]) -> list[dict[str, Any]]:
    """The bucket's other rules, unchanged and in their order, then ours."""
    kept = [copy.deepcopy(r) for r in existing
            if not str(r.get("ID", "")).startswith(OUR_S3_ID_PREFIX)]
    return kept + [s3_rule_body(r) for r in rules]


class _S3Bucket:
    """One S3 bucket's client, its errors translated (what the lifecycle and the lock share)."""

    def __init__(self, bucket: str, region: str, *, endpoint_url: str | None = None,
                 client: Any = None) -> None:
        self.bucket = bucket
        self.region = region
        self._client = client if client is not None else s3_store.make_s3_client(
            region, endpoint_url)

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except RegionvaultError:
            raise
        except (ClientError, BotoCoreError) as exc:
            raise s3_store.translate_error(exc, f"s3://{self.bucket}", action) from exc


class S3Lifecycle(_S3Bucket):
    """The lifecycle configuration of one S3 bucket."""

    store = "s3"

    def _raw(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The bucket's rules, and the other settings a put must carry over."""
        action = "read the lifecycle rules of"
        try:
            response = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchLifecycleConfiguration":
                return [], {}
            raise s3_store.translate_error(exc, f"s3://{self.bucket}", action) from exc
        except BotoCoreError as exc:
            raise s3_store.translate_error(exc, f"s3://{self.bucket}", action) from exc
        extra = {k: response[k] for k in ("TransitionDefaultMinimumObjectSize",) if k in response}
        return list(response.get("Rules", [])), extra

    def read(self) -> BucketState:
        with self._translated("read the versioning of"):
            versioning = self._client.get_bucket_versioning(Bucket=self.bucket)
        raw, _ = self._raw()
        return BucketState(
            store=self.store,
            bucket=self.bucket,
            # Suspended versioning still keeps the noncurrent versions made while it was on.
            versioned=versioning.get("Status") in ("Enabled", "Suspended"),
            rules=parse_s3_rules(raw),
            lifecycle_allowed=versioning.get("MFADelete") != "Enabled",
        )

    def apply(self, rules: Sequence[Rule]) -> bool:
        # S3 has no conditional put for lifecycle rules: a change someone makes between this
        # read and the put is lost (running provision again is harmless).
        raw, extra = self._raw()
        merged = merge_s3_rules(raw, rules)
        if merged == raw:
            return False
        with self._translated("write the lifecycle rules of"):
            self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": merged}, **extra)
        return True

    def raw_rules(self) -> list[dict[str, Any]]:
        """The rules as S3 returns them (for reports and tests)."""
        return self._raw()[0]


# --- GCS -------------------------------------------------------------------------------------

# The condition keys of the rules regionvault writes on GCS, by kind.
_OUR_GCS_SHAPES = (
    frozenset({"age", "matchesPrefix"}),
    frozenset({"isLive", "daysSinceNoncurrentTime", "matchesPrefix"}),
)


def gcs_rule_body(rule: Rule) -> dict[str, Any]:
    """A rule of ``Bucket.lifecycle.rule`` in the GCS JSON API."""
    if rule.kind is RuleKind.EXPIRE:
        condition: dict[str, Any] = {"age": rule.days, "matchesPrefix": [rule.prefix]}
    elif rule.kind is RuleKind.EXPIRE_NONCURRENT:
        condition = {"isLive": False, "daysSinceNoncurrentTime": rule.days,
                     "matchesPrefix": [rule.prefix]}
    else:
        raise ValueError("GCS resumable uploads need no abort rule: they store nothing until "
                         "finished and expire after a week")
    return {"action": {"type": "Delete"}, "condition": condition}


def _is_ours_gcs(rule: dict[str, Any], prefixes: frozenset[str]) -> bool:
    condition = rule.get("condition", {})
    return (rule.get("action", {}).get("type") == "Delete"
            and frozenset(condition) in _OUR_GCS_SHAPES
            and condition.get("isLive", False) is False
            and len(condition["matchesPrefix"]) == 1
            and condition["matchesPrefix"][0] in prefixes)


def parse_gcs_rules(raw: Sequence[dict[str, Any]]) -> tuple[FoundRule, ...]:
    """The Delete actions of GCS lifecycle rules (``Bucket.lifecycle.rule``).

    Conditions of one GCS rule must all hold (AND), so any condition besides the one that gives
    the rule its age narrows it."""
    found: list[FoundRule] = []
    for number, rule in enumerate(raw, start=1):
        if rule.get("action", {}).get("type") != "Delete":
            continue
        condition = dict(rule.get("condition", {}))
        prefixes = tuple(condition.pop("matchesPrefix", None) or ("",))
        is_live = condition.pop("isLive", None)
        shown = ", ".join(f"{k} {v}" for k, v in rule.get("condition", {}).items())
        label = f"Delete rule #{number} ({shown})"
        if "age" in condition and is_live is not False:
            found.append(FoundRule(label=label, kind=RuleKind.EXPIRE, prefixes=prefixes,
                                   days=int(condition["age"]),
                                   narrowed_by=tuple(sorted(set(condition) - {"age"}))))
        if "daysSinceNoncurrentTime" in condition and is_live is not True:
            found.append(FoundRule(
                label=label, kind=RuleKind.EXPIRE_NONCURRENT, prefixes=prefixes,
                days=int(condition["daysSinceNoncurrentTime"]),
                narrowed_by=tuple(sorted(set(condition) - {"daysSinceNoncurrentTime"}))))
    return tuple(found)


def merge_gcs_rules(existing: Sequence[dict[str, Any]], rules: Sequence[Rule],
                    our_prefixes: frozenset[str]) -> list[dict[str, Any]]:
    """The bucket's other rules, unchanged and in their order, then ours.

    ``our_prefixes``: the prefixes regionvault writes rules for in this bucket; an existing rule
    of our shape on one of them is ours (replaced), on any other prefix it is kept."""
    kept = [copy.deepcopy(r) for r in existing if not _is_ours_gcs(r, our_prefixes)]
    return kept + [gcs_rule_body(r) for r in rules]


class _GCSBucket:
    """What the GCS lifecycle and lock share: their errors translated."""

    bucket: str

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except RegionvaultError:
            raise
        except gcs_store._VENDOR_ERRORS as exc:
            raise gcs_store.translate_error(exc, f"gs://{self.bucket}", action) from exc


class GCSLifecycle(_GCSBucket):
    """The lifecycle configuration (and soft delete policy) of one GCS bucket.

    gcp-storage-emulator stores ``lifecycle``, ``versioning`` and ``softDeletePolicy`` as it is
    given them and returns them, but neither validates nor enforces them (it never deletes by
    age). The tests therefore also validate the PATCH body this class sends against a JSON
    Schema written from Google's documented Bucket resource (tests/schemas/).
    """

    store = "gcs"

    def __init__(self, bucket: str, *, project: str, endpoint_url: str | None = None,
                 anonymous: bool = False, our_prefixes: frozenset[str] = frozenset(),
                 client: Any = None) -> None:
        self.bucket = bucket
        self.our_prefixes = our_prefixes
        self._client = client if client is not None else gcs_store.make_gcs_client(
            project, endpoint_url, anonymous=anonymous)

    def _reload(self) -> Any:
        bucket = self._client.bucket(self.bucket)
        with self._translated("read the lifecycle rules of"):
            bucket.reload(timeout=gcs_store.TIMEOUT, retry=None)
        return bucket

    @staticmethod
    def _raw_of(bucket: Any) -> list[dict[str, Any]]:
        # Read from the resource itself: the library's lifecycle_rules getter warns (an error
        # under pytest) on action types it does not know.
        lifecycle = bucket._properties.get("lifecycle") or {}
        return copy.deepcopy(list(lifecycle.get("rule") or []))

    def read(self) -> BucketState:
        bucket = self._reload()
        return BucketState(
            store=self.store,
            bucket=self.bucket,
            versioned=bool(bucket.versioning_enabled),
            rules=parse_gcs_rules(self._raw_of(bucket)),
            soft_delete_seconds=bucket.soft_delete_policy.retention_duration_seconds or 0,
            retention_seconds=int(bucket.retention_period or 0),
        )

    def apply(self, rules: Sequence[Rule]) -> bool:
        bucket = self._reload()
        raw = self._raw_of(bucket)
        merged = merge_gcs_rules(raw, rules, self.our_prefixes | {r.prefix for r in rules})
        changed = False
        if merged != raw:
            bucket.lifecycle_rules = merged
            changed = True
        if bucket.soft_delete_policy.retention_duration_seconds:
            # Soft-deleted objects are still stored (and restorable) for the policy's duration:
            # personal data deleted on day 29 would live on for 7 more days by default. Only the
            # duration is sent (an int64, which the JSON API writes as a string); effectiveTime
            # is set by GCS.
            bucket._patch_property("softDeletePolicy", {"retentionDurationSeconds": "0"})
            changed = True
        if not changed:
            return False
        with self._translated("write the lifecycle rules of"):
            # Conditional on the configuration read above: a concurrent change fails this write
            # (412) instead of being overwritten. The emulator ignores the condition.
            bucket.patch(timeout=gcs_store.TIMEOUT, retry=None,
                         if_metageneration_match=bucket.metageneration)
        return True

    def raw_rules(self) -> list[dict[str, Any]]:
        """The rules as GCS returns them (for reports and tests)."""
        return self._raw_of(self._reload())


# --- object lock -----------------------------------------------------------------------------


class BucketLock(Protocol):
    """Making one bucket able to lock objects (what a bucket holds: ``ObjectStore.lock_settings``).

    ``create`` MUST create the missing bucket in its region able to lock objects, with no
    default retention. ``enable`` (only where ``enables_existing``) MUST make an existing bucket
    versioned and able to lock objects and remove any default retention rule; idempotent.
    Errors are the project's ``StoreError`` kinds."""

    store: str
    bucket: str
    #: whether ``enable`` can make an existing bucket lock objects
    enables_existing: bool

    def create(self) -> None: ...

    def enable(self) -> None: ...


class S3BucketLock(_S3Bucket):
    """Object Lock on one S3 bucket."""

    store = "s3"
    enables_existing = True

    def create(self) -> None:
        # S3 takes us-east-1 as no location constraint at all (and refuses it named).
        where = ({} if self.region == "us-east-1"
                 else {"CreateBucketConfiguration": {"LocationConstraint": self.region}})
        with self._translated("create"):
            self._client.create_bucket(Bucket=self.bucket, ObjectLockEnabledForBucket=True,
                                       **where)

    def enable(self) -> None:
        # Object Lock needs versioning enabled first; once on, neither can be turned off.
        with self._translated("enable versioning on"):
            self._client.put_bucket_versioning(
                Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        # No Rule: a default retention would lock manifests too, and by a period regionvault
        # does not choose; putting the configuration without one removes one set before.
        with self._translated("enable object lock on"):
            self._client.put_object_lock_configuration(
                Bucket=self.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled"})


class GCSBucketLock(_GCSBucket):
    """Object retention on one GCS bucket: enabled only when regionvault creates the bucket."""

    store = "gcs"
    enables_existing = False

    def __init__(self, bucket: str, location: str, *, project: str,
                 endpoint_url: str | None = None, anonymous: bool = False,
                 client: Any = None) -> None:
        self.bucket = bucket
        self.location = location
        self._client = client if client is not None else gcs_store.make_gcs_client(
            project, endpoint_url, anonymous=anonymous)

    def create(self) -> None:
        # POST /storage/v1/b?enableObjectRetention=true with the name and location.
        with self._translated("create"):
            self._client.create_bucket(self.bucket, location=self.location,
                                       enable_object_retention=True,
                                       timeout=gcs_store.TIMEOUT, retry=None)

    def enable(self) -> None:
        raise NotImplementedError("regionvault enables GCS object retention only when it "
                                  "creates the bucket (enables_existing is False)")
