"""Everything a step needs for one domain: configuration, stores, keys, spool and clock.

Built lazily so that a worker of domain D only ever reads D's secrets and opens D's buckets.
While tracing is on (``regionvault.tracing``) the stores it builds are wrapped once here
(``stores.traced``), so every store call of every step is a span; stores given to it (unit
tests) are used as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cached_property

from regionvault.config import Config, DataClass, DomainConfig, SourceConfig, StorePair
from regionvault.domains import Domain
from regionvault.errors import ConfigError
from regionvault.keyring import Keyring, KeyringSource, KeyWrapper
from regionvault.manifest import class_prefix
from regionvault.spool import Spool
from regionvault.stores.base import ObjectStore
from regionvault.stores.traced import traced

Clock = Callable[[], datetime]

MIB = 1024 * 1024


def _rate(mib_per_second: float | None) -> int | None:
    return int(mib_per_second * MIB) if mib_per_second else None


def utc_now() -> datetime:
    return datetime.now(UTC)


def clock_for(config: Config) -> Clock:
    """The clock of a worker under ``config``: UTC now, moved by
    ``development_clock_offset_seconds`` only in a development configuration (a production
    configuration with an offset never validates, and would not be honoured here either)."""
    if not config.development or not config.development_clock_offset_seconds:
        return utc_now
    offset = timedelta(seconds=config.development_clock_offset_seconds)

    def moved() -> datetime:
        return utc_now() + offset

    return moved


# Residency is checked against the cloud once per process and bucket, before the first write.
_residency_checked: set[tuple[str, str]] = set()
_residency_lock = threading.Lock()


class DomainContext:
    def __init__(self, config: Config, domain: Domain, *, clock: Clock = utc_now,
                 s3: ObjectStore | None = None, gcs: ObjectStore | None = None,
                 keyring: Keyring | None = None) -> None:
        self.config = config
        self.domain = domain
        self.dcfg: DomainConfig = config.domain(domain)
        self.clock = clock
        if s3 is not None:
            self.__dict__["s3"] = s3
        if gcs is not None:
            self.__dict__["gcs"] = gcs
        self._fixed_keyring = keyring
        self._keyring_source = KeyringSource(config, domain, kms=self._kms_wrapper)

    @cached_property
    def s3(self) -> ObjectStore:
        from regionvault.stores.s3 import S3Store

        return traced(S3Store(self.dcfg.s3_bucket, self.dcfg.aws_region,
                       endpoint_url=self.config.s3_endpoint_for(self.domain),
                       part_size=self.config.s3.part_size_mib * MIB,
                       max_bytes_per_second=_rate(self.config.s3.max_upload_mib_per_second),
                       upload_concurrency=self.config.s3.upload_concurrency,
                       lock_mode=self.lock_mode))

    @cached_property
    def gcs(self) -> ObjectStore:
        from regionvault.stores.gcs import GCSStore

        return traced(GCSStore(self.dcfg.gcs_bucket, self.dcfg.gcp_location,
                        project=self.config.gcs.project,
                        endpoint_url=self.config.gcs_endpoint_for(self.domain),
                        anonymous=self.config.development,
                        chunk_size=self.config.gcs.chunk_size_mib * MIB,
                        lock_mode=self.lock_mode))

    @cached_property
    def swift(self) -> ObjectStore:
        from regionvault.object_lock import backstop_pii_days
        from regionvault.stores.swift import SwiftStore, pii_backstop

        swift = self.dcfg.swift
        if swift is None:
            raise ConfigError(f"domain {self.domain.value!r} has no 'swift' section: no "
                              "Cloud Files container is configured")
        # Cloud Files has no bucket lifecycle rules: each pii object carries its own expiry,
        # the same backstop the S3 and GCS rules hold (regionvault.provision)
        backstop = pii_backstop(class_prefix(self.domain, DataClass.PII),
                                backstop_pii_days(self.config.retention))
        return traced(SwiftStore(
            swift.container, swift.region, auth_url=self.config.swift.auth_url,
            user=swift.user,
            key=swift.api_key.read(f"the Cloud Files API key of domain {self.domain.value!r}"),
            tenant=swift.tenant, segment_size=self.config.swift.segment_size_mib * MIB,
            lock_mode=self.lock_mode, insecure_http_ok=self.config.development,
            delete_after=backstop))

    @property
    def store_names(self) -> tuple[str, ...]:
        """Every store of the domain (s3, gcs, and swift when configured)."""
        return self.dcfg.store_names()

    def stores(self) -> list[ObjectStore]:
        """Every store of the domain, in ``store_names`` order."""
        return [self.store(name) for name in self.store_names]

    def placement(self, source: SourceConfig) -> StorePair:
        """The names of the primary and the replica store of ``source``'s backups."""
        return self.dcfg.stores_for(source)

    def primary(self, source: SourceConfig) -> ObjectStore:
        """The store that holds the first copy of ``source``'s backups (and its manifests)."""
        return self.store(self.placement(source).primary)

    @property
    def lock_mode(self) -> str | None:
        """The domain's object lock mode ("governance", "compliance"), or None: no lock."""
        lock = self.dcfg.object_lock
        return lock.mode if lock is not None else None

    def _kms_wrapper(self, current: str, held: tuple[str, ...]) -> KeyWrapper:
        from regionvault.kms import AwsKmsWrapper

        return AwsKmsWrapper.for_domain(self.config, self.domain, current, held)

    @property
    def keyring(self) -> Keyring:
        """The domain's keyring as it is now: a managed keyring file is re-read when it
        changes (one ``stat`` per call), so a ``keys rotate`` reaches running workers on
        their next use, with no restart."""
        if self._fixed_keyring is not None:
            return self._fixed_keyring
        return self._keyring_source.current()

    @cached_property
    def spool(self) -> Spool:
        return Spool(self.config.spool_for(self.domain))

    def store(self, name: str) -> ObjectStore:
        """The store called ``name`` ("s3", "gcs", "swift")."""
        if name == "s3":
            return self.s3
        if name == "gcs":
            return self.gcs
        if name == "swift" and self.dcfg.swift is not None:
            return self.swift
        raise ConfigError(f"domain {self.domain.value!r} has no store {name!r} (stores: "
                          f"{', '.join(self.store_names)})")

    def url(self, name: str, key: str = "") -> str:
        """Where a copy lives, as people read it: ``s3://bucket/key``, ``gs://bucket/key``,
        ``swift://container/key``."""
        scheme = "gs" if name == "gcs" else name
        bucket = self.store(name).bucket
        return f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"

    def region_of(self, name: str) -> str:
        """The configured region of store ``name`` (lower-case)."""
        if name == "s3":
            return self.dcfg.aws_region.lower()
        if name == "gcs":
            return self.dcfg.gcp_location.lower()
        if name == "swift" and self.dcfg.swift is not None:
            return self.dcfg.swift.region.lower()
        raise ConfigError(f"domain {self.domain.value!r} has no store {name!r}")

    def ensure_resident(self, name: str) -> None:
        """Refuse to write unless the bucket of store ``name`` really lies in this domain's
        configured region, as the cloud itself reports it (for Cloud Files: as the identity
        service's catalogue places the endpoint)."""
        # The configured region (already validated to lie inside the domain) is the only one
        # accepted: a bucket elsewhere in the same domain still means a misconfiguration.
        store = self.store(name)
        allowed = frozenset({self.region_of(name)})
        token = (name, store.bucket)
        with _residency_lock:
            if token in _residency_checked:
                return
        store.check_residency(allowed)
        with _residency_lock:
            _residency_checked.add(token)
