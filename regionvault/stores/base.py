"""The object-store interface, with its contract.

Every implementation (``s3.S3Store``, ``gcs.GCSStore``, ``swift.SwiftStore``,
``memory.MemoryStore``) passes the same
conformance suite in ``tests/stores/test_conformance.py``.

Checksums: regionvault identifies content by CRC32C (which S3 and GCS both compute and report
for whole objects) and SHA-256 (which the manifest records and a deep verify recomputes).
CRC32C values travel as the base64 of the 4-byte big-endian digest, the form both clouds use.

Immutable copies: a store built with a lock mode (``"governance"`` or ``"compliance"``; None,
the default, is off) writes an object locked until the ``retain_until`` it is given (S3 Object
Lock, GCS object retention). ``regionvault.object_lock.retain_until`` says until when.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """What a store reports about one object, without reading it."""

    key: str
    size: int
    #: base64 CRC32C of the whole object as the store reports it; None if it reports none
    crc32c: str | None
    #: when the object was last written (timezone-aware, UTC); None if the store reports none
    modified: datetime | None = None
    #: until when the store reports the object locked (UTC); None: not locked, or not reported
    #: (listings do not carry it)
    retain_until: datetime | None = None


@dataclass(frozen=True)
class LockSettings:
    """What a bucket says about locking its objects (for ``check`` and ``compliance``)."""

    store: str
    bucket: str
    #: versioning enabled (or, on S3, suspended): deleting an object only hides it
    versioned: bool
    #: the bucket can lock objects: S3 Object Lock enabled, GCS object retention enabled
    lock_enabled: bool
    #: the bucket's own default retention (S3 "GOVERNANCE 30 days"), None without one;
    #: regionvault wants none: manifests must stay rewritable and erasable
    default_retention: str | None = None


@dataclass(frozen=True)
class IncompleteUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    #: the store's id for the upload (S3's UploadId)
    upload_id: str
    #: when it was started (timezone-aware, UTC), as the store reports it; None if it does not
    initiated: datetime | None


@runtime_checkable
class ObjectStore(Protocol):
    """A bucket in one cloud, in one region.

    Contract (every implementation MUST):

    - ``name`` is ``"s3"``, ``"gcs"``, ``"swift"`` or ``"memory"``; ``bucket`` is the bucket
      (container) name. Both
      appear in error messages so a person knows which copy is at fault.
    - ``check_residency(allowed)``: raise ``ResidencyError`` unless the bucket's real location
      (asked of the store, never assumed from configuration) is one of ``allowed``
      (lower-case region names). Raise ``NotFound`` if the bucket does not exist.
    - ``put_file(key, path, crc32c=...)``: store the file's bytes under ``key``. The store must
      check the bytes against ``crc32c`` (client side before committing and, where the cloud
      supports it, server side) and raise ``ChecksumMismatch`` leaving NOTHING under ``key``
      and no incomplete (multipart) upload behind if they differ. Overwrites an existing
      object. Returns the ``ObjectInfo`` the store reports afterwards.
    - ``put_stream(key, stream, size, crc32c=...)``: same as ``put_file`` for a readable
      stream of exactly ``size`` bytes (used to copy between clouds with no local copy).
    - Locks: ``put_file``/``put_stream`` take ``retain_until`` (an aware datetime, or None).
      A store built with a lock mode and given a ``retain_until`` in the future MUST store the
      object locked in that mode until then (to the whole second at or before it, never
      later), and report it in the ``ObjectInfo`` it returns where the cloud reports it; a
      store without a lock mode, or a ``retain_until`` already past, stores it unlocked. A
      bucket that cannot lock objects refuses such a write (``PermanentStoreError``): a
      configured lock is never silently dropped. ``put_bytes`` never locks (manifests must
      stay rewritable). Overwriting a locked object is allowed where versioning keeps the
      locked version (S3, and every lock-enabled store): the new bytes become current.
    - Resuming: ``put_file``/``put_stream`` MAY resume an incomplete upload of the same key
      whose parts match the bytes (every byte is still read and checked; matching parts are
      not sent again). An upload interrupted by anything but ``ChecksumMismatch`` (a transient
      error, a crash) MAY therefore be left open for the next attempt to resume. The caller
      MUST own the key (hold the backup's lease), because a resume by a second writer of
      different bytes would corrupt it; with identical bytes two writers are harmless.
    - ``put_bytes(key, data)``: store a small object (manifests, reports) whole.
    - ``get_bytes(key)``: the whole object; ``NotFound`` if missing.
    - ``open_read(key)``: a readable binary stream of the object, read lazily (bounded memory);
      ``NotFound`` if missing. The caller closes it.
    - ``stat(key)``: ``ObjectInfo``, with ``modified`` filled in; ``NotFound`` if missing.
    - ``list_keys(prefix)``: every key starting with ``prefix``, in lexicographic order.
    - ``list_info(prefix)``: the same objects in the same order as ``ObjectInfo`` with size and
      ``modified``; ``crc32c`` is None where the listing does not carry it (S3's does not).
    - ``delete(key)``: removes EVERY version of ``key`` (in a versioned bucket a delete
      marker alone would leave the bytes behind), noncurrent versions first and the current one
      last, so that a refused delete leaves the key listed for the next attempt. Idempotent;
      deleting a missing key is not an error. A version still locked raises ``ObjectLocked``
      naming the object and its retain-until date; the other noncurrent versions are deleted
      all the same, the current one is then kept.
    - ``delete_noncurrent_versions(key)``: remove every version of ``key`` but the current
      one (a rewritten manifest's older versions still hold what the rewrite removed); returns
      how many were removed, 0 in an unversioned bucket. A locked version raises
      ``ObjectLocked`` after the others are removed.
    - ``lock_settings()``: the bucket's ``LockSettings`` as the cloud reports them now;
      ``NotFound`` if the bucket does not exist.
    - ``incomplete_uploads(prefix)``: the multipart uploads open under ``prefix`` (for the
      reconciler, which aborts those no live backup owns). Stores whose unfinished uploads
      cannot be listed (GCS resumable sessions) or do not exist return ``[]``.
    - ``abort_upload(upload)``: abort one incomplete upload; True if it was aborted, False if
      it was already gone (completed or aborted). Idempotent.
    - ``abort_incomplete_uploads(prefix)``: abort every incomplete upload under ``prefix``
      (cancel and discard, when the caller owns every backup under it); returns how many were
      aborted. Stores without such uploads return 0.
    - Errors: only ``regionvault.errors`` types escape: ``NotFound``, ``TransientStoreError``
      (worth retrying: throttling, 5xx, connection trouble), ``PermanentStoreError`` (not worth
      retrying; ``ObjectLocked`` is one), ``ChecksumMismatch``, ``ResidencyError``. Never a
      vendor exception.
    - Retries: a store makes one attempt per request and raises ``TransientStoreError``; the
      caller's retry (Celery's, with backoff) is the one retry layer, and resuming makes a
      retried upload cheap.
    """

    name: str
    bucket: str
    #: "governance", "compliance", or None (objects are never locked)
    lock_mode: str | None

    def check_residency(self, allowed: frozenset[str]) -> None: ...

    def put_file(self, key: str, path: str, *, crc32c: str,
                 retain_until: datetime | None = None) -> ObjectInfo: ...

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str,
                   retain_until: datetime | None = None) -> ObjectInfo: ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes: ...

    def open_read(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list_keys(self, prefix: str) -> Iterator[str]: ...

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]: ...

    def abort_upload(self, upload: IncompleteUpload) -> bool: ...

    def abort_incomplete_uploads(self, prefix: str) -> int: ...

    def delete_noncurrent_versions(self, key: str) -> int: ...

    def lock_settings(self) -> LockSettings: ...
