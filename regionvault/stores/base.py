"""The object-store interface, with its contract.

Every implementation (``s3.S3Store``, ``gcs.GCSStore``, ``memory.MemoryStore``) passes the same
conformance suite in ``tests/stores/test_conformance.py``.

Checksums: regionvault identifies content by CRC32C (which S3 and GCS both compute and report
for whole objects) and SHA-256 (which the manifest records and a deep verify recomputes).
CRC32C values travel as the base64 of the 4-byte big-endian digest, the form both clouds use.
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

    - ``name`` is ``"s3"``, ``"gcs"`` or ``"memory"``; ``bucket`` is the bucket name. Both
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
    - ``delete(key)``: idempotent; deleting a missing key is not an error.
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
      retrying), ``ChecksumMismatch``, ``ResidencyError``. Never a vendor exception.
    - Retries: a store makes one attempt per request and raises ``TransientStoreError``; the
      caller's retry (Celery's, with backoff) is the one retry layer, and resuming makes a
      retried upload cheap.
    """

    name: str
    bucket: str

    def check_residency(self, allowed: frozenset[str]) -> None: ...

    def put_file(self, key: str, path: str, *, crc32c: str) -> ObjectInfo: ...

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str) -> ObjectInfo: ...

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
