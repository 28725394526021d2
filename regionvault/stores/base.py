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
from typing import BinaryIO, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """What a store reports about one object, without reading it."""

    key: str
    size: int
    #: base64 CRC32C of the whole object as the store reports it; None if it reports none
    crc32c: str | None


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
    - ``put_bytes(key, data)``: store a small object (manifests, reports) whole.
    - ``get_bytes(key)``: the whole object; ``NotFound`` if missing.
    - ``open_read(key)``: a readable binary stream of the object, read lazily (bounded memory);
      ``NotFound`` if missing. The caller closes it.
    - ``stat(key)``: ``ObjectInfo``; ``NotFound`` if missing.
    - ``list_keys(prefix)``: every key starting with ``prefix``, in lexicographic order.
    - ``delete(key)``: idempotent; deleting a missing key is not an error.
    - ``abort_incomplete_uploads(prefix)``: abort multipart/resumable uploads left under
      ``prefix`` by a crashed writer; returns how many were aborted. Stores without such
      uploads return 0.
    - Errors: only ``regionvault.errors`` types escape: ``NotFound``, ``TransientStoreError``
      (worth retrying: throttling, 5xx, connection trouble), ``PermanentStoreError`` (not worth
      retrying), ``ChecksumMismatch``, ``ResidencyError``. Never a vendor exception.
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

    def delete(self, key: str) -> None: ...

    def abort_incomplete_uploads(self, prefix: str) -> int: ...
