"""The configuration: one YAML file validated into typed, frozen models.

Secrets are never in the file itself: a source's DSN and a domain's key are *references*
(``env: NAME`` or ``file: /path``) resolved only when the domain's own worker needs them, so a
worker of one domain never reads another domain's secrets. Endpoints and the broker URL may be
overridden from the environment (see ``ENV_OVERRIDES``) so the same file serves every stack.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from regionvault.domains import DOMAIN_TABLE, Domain, parse_domain
from regionvault.errors import ConfigError, SecretError, UnknownSourceError

#: GDPR ceiling from the source policy: backups holding personal data are gone within 29 days.
PII_MAX_RETENTION_DAYS = 29

#: the most that one expiry sweep interval plus the deletion allowance may take off the ceiling
#: (see ``RetentionConfig.pii_cutoff``)
PII_MAX_MARGIN_SECONDS = 24 * 3600

SOURCE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

#: environment variable -> what it overrides
ENV_OVERRIDES = {
    "REGIONVAULT_BROKER_URL": "broker_url",
    "REGIONVAULT_RESULT_BACKEND": "result_backend",
    "REGIONVAULT_S3_ENDPOINT": "s3.endpoint_url",
    "REGIONVAULT_GCS_ENDPOINT": "gcs.endpoint_url",
    "REGIONVAULT_KMS_ENDPOINT": "kms.endpoint_url",
    "REGIONVAULT_SWIFT_AUTH_URL": "swift.auth_url",
    "REGIONVAULT_SPOOL_DIR": "spool_dir",
}

#: environment variable -> what it overrides in each configured domain (``{D}``: US, EU, AU):
#: a domain's own broker URL may carry a password, which a Secret gives to that domain's
#: pods only, never the shared configuration file
DOMAIN_ENV_OVERRIDES = {
    "REGIONVAULT_BROKER_URL_{D}": "broker_url",
    "REGIONVAULT_RESULT_BACKEND_{D}": "result_backend",
}


class DataClass(StrEnum):
    """What a backup holds; decides its retention and its object-key prefix."""

    PII = "pii"
    METADATA = "metadata"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecretRef(_Frozen):
    """Where a secret lives: exactly one of an environment variable or a file."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(self, what: str) -> str:
        """The secret's value; a SecretError naming ``what`` and where it was looked for."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise SecretError(
                    f"{what} is not set: environment variable {self.env} is missing or empty"
                )
            return value.strip()
        assert self.file is not None
        try:
            value = self.file.read_text().strip()
        except OSError as exc:
            raise SecretError(
                f"{what} cannot be read from file {self.file}: {exc.strerror}") from None
        if not value:
            raise SecretError(f"{what} is empty in file {self.file}")
        return value


class KeyRef(_Frozen):
    """A domain key: its id (recorded in manifests) and where its 32 bytes (base64) live."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    secret: SecretRef


#: the wrappers a domain's data keys can be wrapped by (``regionvault.keyring``)
WrapperName = Literal["aws-kms", "local"]


class KeyringConfig(_Frozen):
    """A managed keyring: the domain's key-encryption keys in a file that ``regionvault keys``
    writes (rotate, rewrap, retire) and running workers re-read when it changes.

    ``wrappers`` says which key-encryption keys wrap every new data key, each wrapping kept in
    the manifest: ``local`` (a 256-bit key held in the keyring file) and ``aws-kms`` (a KMS key
    in the domain's own region). ``local`` is always present: it is the escrow that opens the
    backups when AWS is gone, and its key signs the manifests.
    """

    file: Path
    wrappers: tuple[WrapperName, ...] = ("local",)

    @field_validator("wrappers")
    @classmethod
    def _local_always(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({w for w in value if value.count(w) > 1})
        if repeated:
            raise ValueError(f"wrappers must be unique, repeated: {', '.join(repeated)}")
        if "local" not in value:
            raise ValueError(
                "wrappers must include 'local': the local escrow key opens the backups when "
                "AWS KMS is unreachable (disaster recovery) and signs the manifests")
        return value


class ObjectLockConfig(_Frozen):
    """Immutable copies: every backup object is locked in the store until the moment the
    expiry sweep is due to remove it (never later, so a pii backup never outlives 29 days).

    ``governance``: a credential with s3:BypassGovernanceRetention can still delete early;
    ``compliance``: nobody can, not even the account's root, until the date passes.
    """

    mode: Literal["governance", "compliance"] = "governance"


class CheckQuery(_Frozen):
    """A query a restore drill runs on the restored copy; its first value must equal ``expect``."""

    sql: str = Field(min_length=1)
    expect: str


#: the kinds of source (``regionvault.sources``); the DSN's form depends on the kind:
#: postgres ``postgresql://user:pw@host:port/db`` (any libpq DSN), mysql
#: ``mysql://user:pw@host:port/db``, bigtable ``bigtable://project/instance``
SourceKind = Literal["postgres", "mysql", "bigtable"]

#: the kinds of object store (``regionvault.stores``)
StoreName = Literal["s3", "gcs", "swift"]

#: Bigtable table ids (the admin API's rule)
BIGTABLE_TABLE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,49}")


class StorePair(_Frozen):
    """Where a source's backups go: ``primary`` receives the object from the spool (upload),
    ``replica`` copies it from the primary (replicate). Two different stores, both in the
    domain: for example ``{primary: swift, replica: gcs}`` for the Journeys sources that
    live with Rackspace."""

    primary: StoreName = "s3"
    replica: StoreName = "gcs"

    @model_validator(mode="after")
    def _two_stores(self) -> StorePair:
        if self.primary == self.replica:
            raise ValueError(
                f"primary and replica must be two different stores (both are "
                f"{self.primary!r}): a backup is kept in two clouds")
        return self

    @property
    def names(self) -> tuple[str, str]:
        return (self.primary, self.replica)


class SourceConfig(_Frozen):
    name: str
    kind: SourceKind = "postgres"
    dsn: SecretRef
    data_class: DataClass
    #: bigtable: the tables to back up (empty: every table of the instance)
    tables: tuple[str, ...] = ()
    #: this source's stores, when they differ from the domain's ``stores``
    stores: StorePair | None = None
    #: run by restore drills on the restored copy (postgres and mysql)
    check: CheckQuery | None = None
    #: recovery point objective: older than this, the newest verified backup is late
    rpo_hours: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not SOURCE_NAME_RE.fullmatch(value):
            raise ValueError(
                f"source name {value!r} must match [a-z0-9][a-z0-9-]{{0,62}} "
                "(lower-case letters, digits and '-', no '/' or '.')"
            )
        return value

    @model_validator(mode="after")
    def _kind_settings(self) -> SourceConfig:
        if self.tables and self.kind != "bigtable":
            raise ValueError(f"source {self.name!r}: 'tables' is for bigtable sources; a "
                             f"{self.kind} source backs up its whole database")
        bad = [t for t in self.tables if not BIGTABLE_TABLE_RE.fullmatch(t)]
        if bad:
            raise ValueError(f"source {self.name!r}: {bad[0]!r} is not a Bigtable table id "
                             "(letters, digits, '_', '.', '-', not starting with '.' or "
                             "'-'; at most 50)")
        if self.check is not None and self.kind == "bigtable":
            raise ValueError(f"source {self.name!r}: a bigtable source has no SQL to run a "
                             "'check' query; drills compare its row counts")
        return self


class DrillConfig(_Frozen):
    """Scheduled restore drills of a domain (see ``regionvault.drill``)."""

    #: cron (UTC); weekly by default
    schedule: str = "0 4 * * 0"
    #: a DSN of the domain's scratch PostgreSQL server (its maintenance database); drills
    #: create and drop their databases there. No scratch server, no scheduled drill.
    scratch_dsn: SecretRef | None = None
    #: scratch servers of the other kinds, by kind, e.g. ``{mysql: {file: ...}}`` (a DSN of
    #: any database the user may connect to, with CREATE and DROP); bigtable sources are not
    #: drilled (an instance cannot be made per drill)
    scratch: dict[Literal["postgres", "mysql"], SecretRef] = {}
    #: drill this many sources per run (chosen in turn by date); None drills every source
    sample: int | None = Field(default=None, ge=1)

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return _cron(value)

    def scratch_for(self, kind: str) -> SecretRef | None:
        """The scratch server of ``kind`` (``scratch_dsn`` is the postgres one)."""
        if kind == "postgres" and self.scratch_dsn is not None:
            return self.scratch_dsn
        return self.scratch.get(kind)  # type: ignore[call-overload]

    @property
    def scheduled(self) -> bool:
        """Whether beat runs drills of the domain: when it has any scratch server."""
        return self.scratch_dsn is not None or bool(self.scratch)


def _cron(value: str) -> str:
    if not croniter.is_valid(value) or len(value.split()) != 5:
        raise ValueError(f"schedule {value!r} is not a 5-field cron expression")
    return value


class SwiftDomainConfig(_Frozen):
    """The domain's Rackspace Cloud Files container (the ``swift`` store).

    ``region`` is a Cloud Files region code: SYD (au), DFW, ORD, IAD (us). LON lies in the
    UK, not the EU: an eu domain may use it only with the domain's ``uk_adequacy: true``.
    The region is also checked at run time against the identity service's catalogue.
    """

    region: str
    container: str = Field(pattern=r"^[^/]{1,256}$")
    #: the Rackspace account's user name (not secret) and its API key (a secret reference)
    user: str = Field(min_length=1)
    api_key: SecretRef
    #: the tenant (account number) when the identity service needs one
    tenant: str | None = None

    @field_validator("region")
    @classmethod
    def _code(cls, value: str) -> str:
        return value.strip().upper()


class DomainConfig(_Frozen):
    aws_region: str
    s3_bucket: str
    gcp_location: str
    gcs_bucket: str
    #: Rackspace Cloud Files, for sources (or a domain) that use the ``swift`` store
    swift: SwiftDomainConfig | None = None
    #: allow the UK regions of the domain table (AWS eu-west-2, Cloud Files LON) for an eu
    #: domain: the record of a decision to rely on the EU's adequacy decision for the UK,
    #: which the platform team's data protection officer makes, never a default
    uk_adequacy: bool = False
    #: where the domain's backups go unless a source says otherwise
    stores: StorePair = StorePair()
    #: static local keys (development, small installs): read at start; rotating them is a
    #: configuration change and a restart. Exactly one of ``key`` and ``keyring``.
    key: KeyRef | None = None
    previous_keys: tuple[KeyRef, ...] = ()
    #: a managed keyring (``regionvault keys``): rotated live, optionally with AWS KMS
    keyring: KeyringConfig | None = None
    #: lock backup objects until their expiry (S3 Object Lock, GCS object retention)
    object_lock: ObjectLockConfig | None = None
    schedule: str = "0 2 * * *"
    sources: tuple[SourceConfig, ...] = ()
    drill: DrillConfig = DrillConfig()
    #: named databases a restore task may write into (a task names one, never a DSN)
    restore_targets: dict[str, SecretRef] = {}
    #: default recovery point objective of the domain's sources (a daily schedule + slack)
    rpo_hours: int = Field(default=26, ge=1)
    #: the domain's own broker: its task messages, results, progress, journal and leases live
    #: there and nowhere else, and its workers, beat and Flower connect only to it. None: the
    #: installation's shared ``broker_url``.
    broker_url: str | None = None
    #: the domain's own result backend (journal, leases, results); default: its broker
    result_backend: str | None = None
    #: where this domain's Flower is served, for the Backups page of the others (a domain
    #: with its own broker has its own Flower: ``regionvault flower --domain D``)
    flower_url: str | None = None
    #: endpoints of this domain's stores when they are not the installation's (the emulators
    #: of a development stack per domain; in production the region picks the endpoint)
    s3_endpoint_url: str | None = None
    gcs_endpoint_url: str | None = None

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return _cron(value)

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, value: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
        names = [s.name for s in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique, repeated: {', '.join(duplicates)}")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> DomainConfig:
        if (self.key is None) == (self.keyring is None):
            raise ValueError(
                "give exactly one of 'key' (static local keys) and 'keyring' (a managed "
                "keyring file, see 'regionvault keys init')")
        if self.keyring is not None and self.previous_keys:
            raise ValueError("previous_keys belongs with 'key'; a managed keyring holds its "
                             "own previous keys (import them with 'regionvault keys init')")
        ids = [ref.id for ref in self.all_keys()]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(
                f"key ids must be unique, repeated: {', '.join(repeated)} (a key id names "
                "one key in every manifest; give the new key a new id)")
        return self

    @model_validator(mode="after")
    def _backend_with_broker(self) -> DomainConfig:
        if self.result_backend is not None and self.broker_url is None:
            raise ValueError(
                "result_backend of a domain belongs with its own broker_url: a domain on the "
                "shared broker keeps its journal in the shared result backend")
        return self

    @model_validator(mode="after")
    def _stores_configured(self) -> DomainConfig:
        if self.swift is None:
            users = ["the domain"] if "swift" in self.stores.names else []
            users += [f"source {s.name!r}" for s in self.sources
                      if s.stores is not None and "swift" in s.stores.names]
            if users:
                raise ValueError(
                    f"{', '.join(users)} use(s) the swift store, but the domain has no "
                    "'swift' section (region, container, user, api_key)")
        return self

    @model_validator(mode="after")
    def _locks_where_stores_lock(self) -> DomainConfig:
        # Cloud Files cannot lock objects: with an object lock every upload to it would be
        # refused, so the combination is refused here, before a backup ever runs
        if self.object_lock is not None and self.swift is not None:
            users = {*self.stores.names, *(n for s in self.sources if s.stores
                                          for n in s.stores.names)}
            if "swift" in users:
                raise ValueError(
                    "object_lock cannot hold for the swift store: Rackspace Cloud Files "
                    "cannot lock objects; remove object_lock, or keep the locked sources "
                    "on s3 and gcs")
        return self

    def stores_for(self, source: SourceConfig) -> StorePair:
        """The primary and replica stores of ``source``'s backups."""
        return source.stores or self.stores

    def store_names(self) -> tuple[str, ...]:
        """Every store the domain has: s3 and gcs, and swift when it is configured. Loops
        over a domain's backups (expiry, integrity, reconcile) visit all of them."""
        return ("s3", "gcs", "swift") if self.swift is not None else ("s3", "gcs")

    def source(self, name: str, domain: Domain) -> SourceConfig:
        for src in self.sources:
            if src.name == name:
                return src
        configured = ", ".join(s.name for s in self.sources) or "none"
        raise UnknownSourceError(
            f"source {name!r} is not configured in domain {domain.value!r} "
            f"(configured: {configured})"
        )

    def rpo_for(self, source: SourceConfig) -> timedelta:
        return timedelta(hours=source.rpo_hours or self.rpo_hours)

    def all_keys(self) -> tuple[KeyRef, ...]:
        """The static keys, current first (none with a managed keyring)."""
        return (self.key, *self.previous_keys) if self.key is not None else ()


class RetentionConfig(_Frozen):
    """How long backups are kept, and the expiry loop that removes them (``regionvault.expiry``).

    The ceiling holds by construction: the sweep removes a pii backup once it is older than
    ``pii_cutoff()``, at most the 29-day ceiling less one sweep interval and the deletion
    allowance. A backup just younger than the cutoff at one sweep is removed by the next one,
    ``sweep_interval_seconds`` later, within ``deletion_allowance_seconds``: so no pii byte is
    older than 29 x 24 h in either store at any moment, whatever ``pii_days`` says.
    """

    #: the retention *policy* for personal data; at most 29, and the sweep trims it to the
    #: ceiling less the margin (29 means "as long as the ceiling allows")
    pii_days: int = Field(default=PII_MAX_RETENTION_DAYS, ge=1)
    metadata_days: int = Field(default=365, ge=1)
    #: how often beat runs the expiry sweep of each domain
    sweep_interval_seconds: int = Field(default=3600, ge=60)
    #: how long a sweep may take from its beat time to its last deletion (waiting in the
    #: domain's queue behind running steps included)
    deletion_allowance_seconds: int = Field(default=3600, ge=0)

    @field_validator("pii_days")
    @classmethod
    def _gdpr_ceiling(cls, value: int) -> int:
        if value > PII_MAX_RETENTION_DAYS:
            raise ValueError(
                f"pii backups may be kept at most {PII_MAX_RETENTION_DAYS} days (GDPR), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _margin_within_a_day(self) -> RetentionConfig:
        # The cutoff is min(pii_days, 29 days - interval - allowance), so the ceiling holds
        # for any margin; rejecting a margin above a day keeps pii_days honest (pii_days 29
        # is then kept for at least 28 days) and the sweep frequent.
        margin = self.sweep_interval_seconds + self.deletion_allowance_seconds
        if margin > PII_MAX_MARGIN_SECONDS:
            raise ValueError(
                f"retention.sweep_interval_seconds ({self.sweep_interval_seconds}) plus "
                f"retention.deletion_allowance_seconds ({self.deletion_allowance_seconds}) "
                f"must be at most {PII_MAX_MARGIN_SECONDS} seconds: pii backups are removed "
                f"once older than the {PII_MAX_RETENTION_DAYS}-day ceiling less both, and more "
                f"would cut retention.pii_days ({self.pii_days}) by more than a day; sweep "
                "more often"
            )
        return self

    def pii_cutoff(self) -> timedelta:
        """The age at which the expiry sweep removes a pii backup: ``pii_days``, but never
        later than the ceiling less one sweep interval and the deletion allowance."""
        margin = timedelta(seconds=self.sweep_interval_seconds + self.deletion_allowance_seconds)
        return min(timedelta(days=self.pii_days),
                   timedelta(days=PII_MAX_RETENTION_DAYS) - margin)

    def days_for(self, data_class: DataClass) -> int:
        return self.pii_days if data_class is DataClass.PII else self.metadata_days

    def period_for(self, data_class: DataClass) -> timedelta:
        return timedelta(days=self.days_for(data_class))


class S3Config(_Frozen):
    endpoint_url: str | None = None
    #: parts of a multipart upload; S3 needs at least 5 MiB
    part_size_mib: int = Field(default=16, ge=5, le=5120)
    #: pace multipart uploads to this rate; None = as fast as the link allows
    max_upload_mib_per_second: float | None = Field(default=None, gt=0)
    #: parts of one upload in flight at once (each holds a part in memory)
    upload_concurrency: int = Field(default=4, ge=1, le=32)


class GCSConfig(_Frozen):
    endpoint_url: str | None = None
    project: str = "regionvault"
    chunk_size_mib: int = Field(default=16, ge=1)


class SwiftConfig(_Frozen):
    """Rackspace Cloud Files (OpenStack Swift): the identity service every domain's
    ``swift`` store authenticates against (its catalogue names each region's endpoint)."""

    auth_url: str = "https://identity.api.rackspacecloud.com/v2.0"
    #: objects above this go up as static large objects of segments of this size
    segment_size_mib: int = Field(default=100, ge=1, le=5120)


class KMSConfig(_Frozen):
    """AWS KMS, for domains whose keyring uses the ``aws-kms`` wrapper; the region is the
    domain's own ``aws_region``."""

    endpoint_url: str | None = None
    #: seconds to connect and to read a reply; a KMS that does not answer falls back to the
    #: local escrow wrapper on restore instead of stalling it
    connect_timeout_seconds: float = Field(default=3, gt=0)
    read_timeout_seconds: float = Field(default=10, gt=0)


class TaskRetryConfig(_Frozen):
    """The one retry layer: a step that meets a transient error (network, 5xx, throttling, a
    source that is restarting) is retried by Celery with exponential backoff and jitter for at
    most ``window_seconds`` in all, then fails. Permanent errors fail at once."""

    window_seconds: int = Field(default=1800, ge=0)
    backoff_seconds: float = Field(default=5, gt=0)
    backoff_max_seconds: float = Field(default=300, gt=0)


class ReconcileConfig(_Frozen):
    """Ownership and the per-domain control loop (``regionvault.reconcile``)."""

    #: a step's lease expires this long after its last renewal: how soon a dead owner is seen
    lease_seconds: float = Field(default=60, ge=1)
    #: how often beat runs the reconciler of each domain
    interval_seconds: float = Field(default=60, ge=1)
    #: a step that was handed over (or queued) but has not started after this long is sent
    #: again; its old message, if it ever runs, is stale and exits
    handoff_grace_seconds: float = Field(default=300, ge=1)
    #: a spool directory, open upload or manifest-less object that no live backup owns is
    #: removed once it is this old
    orphan_after_seconds: float = Field(default=6 * 3600, ge=1)
    #: automatic resumptions of one backup before it is left failed for a person
    max_resumes: int = Field(default=5, ge=0)


class IntegrityConfig(_Frozen):
    """Integrity over time (``regionvault.integrity``): a rotating sample of stored bytes is
    read back from both clouds, so every copy of every backup is read within the period."""

    #: every copy of every verified backup is read back whole at least once in this many days
    period_days: int = Field(default=30, ge=1)
    #: cron (UTC) of the per-domain sample; daily by default
    schedule: str = "30 3 * * *"

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return _cron(value)


class Config(_Frozen):
    version: Literal[1] = 1
    #: allows http:// endpoints and anonymous GCS access; never set in production
    development: bool = False
    #: moves the workers' clock by this many seconds (tests of expiry); honoured only with
    #: ``development: true``: a configuration that sets one without it is rejected
    development_clock_offset_seconds: int = 0
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None
    spool_dir: Path = Path("/var/lib/regionvault/spool")
    #: longest a single step may take; the broker's visibility timeout is set above it
    step_timeout_seconds: int = Field(default=4 * 3600, ge=60)
    s3: S3Config = S3Config()
    gcs: GCSConfig = GCSConfig()
    swift: SwiftConfig = SwiftConfig()
    kms: KMSConfig = KMSConfig()
    retention: RetentionConfig = RetentionConfig()
    retries: TaskRetryConfig = TaskRetryConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    integrity: IntegrityConfig = IntegrityConfig()
    domains: dict[Domain, DomainConfig]

    @model_validator(mode="after")
    def _checks(self) -> Config:
        for domain, dcfg in self.domains.items():
            _check_regions(domain, dcfg)
        if not self.development and self.development_clock_offset_seconds:
            raise ValueError(
                f"development_clock_offset_seconds is {self.development_clock_offset_seconds}: "
                "a moved clock moves expiry, so it is allowed only with 'development: true'; "
                "remove it from this configuration"
            )
        if not self.development:
            endpoints = [("s3.endpoint_url", self.s3.endpoint_url),
                         ("gcs.endpoint_url", self.gcs.endpoint_url),
                         ("kms.endpoint_url", self.kms.endpoint_url),
                         ("swift.auth_url", self.swift.auth_url)]
            for domain, dcfg in self.domains.items():
                endpoints += [(f"domains.{domain.value}.s3_endpoint_url", dcfg.s3_endpoint_url),
                              (f"domains.{domain.value}.gcs_endpoint_url",
                               dcfg.gcs_endpoint_url)]
            for field, url in endpoints:
                if url is not None and not url.startswith("https://"):
                    raise ValueError(
                        f"{field} must be an https:// URL (got {url!r}); "
                        "plain http is allowed only with 'development: true'"
                    )
        return self

    def domain(self, name: str | Domain) -> DomainConfig:
        domain = parse_domain(name) if isinstance(name, str) else name
        try:
            return self.domains[domain]
        except KeyError:
            configured = ", ".join(d.value for d in self.domains) or "none"
            raise ConfigError(
                f"domain {domain.value!r} is not configured (configured: {configured})"
            ) from None

    def source(self, domain: str | Domain, source: str) -> SourceConfig:
        d = parse_domain(domain) if isinstance(domain, str) else domain
        return self.domain(d).source(source, d)

    def spool_for(self, domain: Domain) -> Path:
        return self.spool_dir / domain.value

    def has_own_broker(self, domain: Domain) -> bool:
        """Whether ``domain`` has a broker of its own (else it shares ``broker_url``)."""
        return self.domain(domain).broker_url is not None

    def broker_for(self, domain: Domain | None) -> str:
        """The broker of ``domain``'s tasks; the shared one for None (a process of no
        domain: the CLI, a shared beat or Flower)."""
        own = self.domain(domain).broker_url if domain is not None else None
        return own or self.broker_url

    def backend_for(self, domain: Domain | None) -> str:
        """The result backend of ``domain`` (its journal and leases live there too)."""
        dcfg = self.domain(domain) if domain is not None else None
        if dcfg is not None and dcfg.broker_url is not None:
            return dcfg.result_backend or dcfg.broker_url
        return self.result_backend or self.broker_url

    def shared_broker_domains(self) -> list[Domain]:
        """The domains whose tasks go through the shared broker."""
        return [d for d in self.domains if not self.has_own_broker(d)]

    def s3_endpoint_for(self, domain: Domain) -> str | None:
        return self.domain(domain).s3_endpoint_url or self.s3.endpoint_url

    def gcs_endpoint_for(self, domain: Domain) -> str | None:
        return self.domain(domain).gcs_endpoint_url or self.gcs.endpoint_url


def _check_regions(domain: Domain, dcfg: DomainConfig) -> None:
    table = DOMAIN_TABLE[domain]
    _check_region(domain, "aws_region", dcfg.aws_region, table.allowed_aws_regions,
                  table.adequacy_aws_regions, dcfg.uk_adequacy)
    if dcfg.gcp_location not in table.allowed_gcp_locations:
        raise ValueError(
            f"domains.{domain.value}.gcp_location {dcfg.gcp_location!r} is outside domain "
            f"{domain.value!r} (allowed: {', '.join(sorted(table.allowed_gcp_locations))})"
        )
    if dcfg.swift is not None:
        _check_region(domain, "swift.region", dcfg.swift.region,
                      table.allowed_swift_regions, table.adequacy_swift_regions,
                      dcfg.uk_adequacy)


def _check_region(domain: Domain, field: str, region: str, allowed: frozenset[str],
                  adequacy: frozenset[str], uk_adequacy: bool) -> None:
    """Refuse ``region`` unless it lies in the domain, or in the UK under ``uk_adequacy``."""
    if region.lower() in allowed or (uk_adequacy and region.lower() in adequacy):
        return
    where = f"domains.{domain.value}.{field} {region}"
    if region.lower() in adequacy:
        raise ValueError(
            f"{where} lies outside domain {domain.value!r}: it is in the UK, not the EU; set "
            f"'uk_adequacy: true' in domains.{domain.value} only if your data protection "
            "officer relies on the EU's adequacy decision for the UK")
    shown = sorted(r.upper() if field == "swift.region" else r for r in allowed) or ["none"]
    raise ValueError(f"{where} is outside domain {domain.value!r} (allowed: "
                     f"{', '.join(shown)})")


def _set_dotted(data: dict[str, Any], dotted: str, value: str) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[last] = value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def parse_config(data: Any, *, origin: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed YAML (plus environment overrides) into a Config."""
    if not isinstance(data, dict):
        raise ConfigError(f"configuration {origin} must be a mapping at the top level")
    env = os.environ if env is None else env
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            _set_dotted(data, dotted, env[var])
    domains = data.get("domains")
    for name, dcfg in domains.items() if isinstance(domains, dict) else ():
        for pattern, field in DOMAIN_ENV_OVERRIDES.items():
            value = env.get(pattern.format(D=str(name).upper()))
            if value and isinstance(dcfg, dict):  # only a domain the file configures
                dcfg[field] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(
            f"configuration {origin} is invalid: {_first_error(exc)}{extra}") from None


def config_path(explicit: str | Path | None = None) -> Path:
    """The configuration file: ``--config``, else ``REGIONVAULT_CONFIG``."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("REGIONVAULT_CONFIG")
    if from_env:
        return Path(from_env)
    raise ConfigError(
        "no configuration given: pass --config FILE or set REGIONVAULT_CONFIG"
    )


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the configuration file."""
    file = config_path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"configuration file {file} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(
            f"configuration file {file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
            f"on line {line}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"configuration file {file} is not valid YAML{where}") from None
    return parse_config(data, origin=f"file {file}", env=env)


def shown_url(url: str) -> str:
    """``url`` fit for a message or a log: without the password it may carry."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def read_source_dsn(source: SourceConfig, domain: Domain) -> str:
    """The DSN of a source, read from where the configuration points (never logged)."""
    return source.dsn.read(f"the DSN of source {source.name!r} in domain {domain.value!r}")
