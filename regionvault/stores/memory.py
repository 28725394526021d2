"""An in-process object store for unit tests: one bucket held in a dict, same contract as S3/GCS.

It passes the same conformance suite as the real stores, so code tested against it behaves the
same against them. It is not a fake of either cloud's API, and not for tests that claim the
system works end to end (those use the moto and GCS emulator servers).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import google_crc32c

from regionvault.checksums import crc32c_b64, crc32c_of_bytes
from regionvault.errors import ChecksumMismatch, NotFound, ResidencyError
from regionvault.stores.base import ObjectInfo

_READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class _StoredObject:
    data: bytes
    crc32c: str


class MemoryStore:
    """An ``ObjectStore`` in memory (see ``regionvault.stores.base`` for the contract)."""

    name = "memory"

    def __init__(self, bucket: str, location: str, *, exists: bool = True) -> None:
        self.bucket = bucket
        self.location = location
        #: False models a bucket that was never created (or was deleted)
        self.exists = exists
        self._objects: dict[str, _StoredObject] = {}
        # Celery's threads pool and tests with threads share one store.
        self._lock = threading.Lock()

    def _where(self, key: str) -> str:
        return f"memory://{self.bucket}/{key}"

    def _require_bucket(self) -> None:
        if not self.exists:
            raise NotFound(f"bucket memory://{self.bucket} does not exist")

    def check_residency(self, allowed: frozenset[str]) -> None:
        self._require_bucket()
        permitted = {name.lower() for name in allowed}
        if self.location.lower() not in permitted:
            raise ResidencyError(
                f"bucket memory://{self.bucket} is in {self.location.lower()}, outside the "
                f"allowed locations ({', '.join(sorted(permitted)) or 'none'}); "
                "use a bucket in one of those"
            )

    def put_file(self, key: str, path: str, *, crc32c: str) -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, os.fstat(f.fileno()).st_size, crc32c=crc32c)

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str) -> ObjectInfo:
        data = self._read_checked(key, stream, size, crc32c)
        with self._lock:
            self._objects[key] = _StoredObject(data, crc32c)
        return ObjectInfo(key=key, size=size, crc32c=crc32c)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        return self._get(key).data

    def open_read(self, key: str) -> BinaryIO:
        return io.BytesIO(self._get(key).data)

    def stat(self, key: str) -> ObjectInfo:
        stored = self._get(key)
        return ObjectInfo(key=key, size=len(stored.data), crc32c=stored.crc32c)

    def list_keys(self, prefix: str) -> Iterator[str]:
        self._require_bucket()
        with self._lock:
            keys = sorted(key for key in self._objects if key.startswith(prefix))
        yield from keys

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        return 0  # writes are all-or-nothing here: there is never an incomplete upload

    def corrupt(self, key: str, offset: int, *, keep_checksum: bool = False) -> None:
        """Test helper: flip every bit of the byte at ``offset`` of ``key``.

        By default the reported CRC32C follows the new bytes, as a cloud reports it for an
        object rewritten by someone else; ``keep_checksum=True`` keeps the old one, modelling
        damage that only reading the bytes reveals.
        """
        with self._lock:
            stored = self._objects.get(key)
            if stored is None:
                raise NotFound(f"cannot corrupt {self._where(key)}: it does not exist")
            if not 0 <= offset < len(stored.data):
                raise ValueError(
                    f"offset {offset} is outside {self._where(key)} ({len(stored.data)} bytes)"
                )
            data = bytearray(stored.data)
            data[offset] ^= 0xFF
            crc = stored.crc32c if keep_checksum else crc32c_of_bytes(bytes(data))
            self._objects[key] = _StoredObject(bytes(data), crc)

    def _get(self, key: str) -> _StoredObject:
        self._require_bucket()
        with self._lock:
            stored = self._objects.get(key)
        if stored is None:
            raise NotFound(f"{self._where(key)} does not exist")
        return stored

    def _read_checked(self, key: str, stream: BinaryIO, size: int, crc32c: str) -> bytes:
        crc = google_crc32c.Checksum()
        chunks: list[bytes] = []
        got = 0
        while got < size:
            chunk = stream.read(min(_READ_SIZE, size - got))
            if not chunk:
                raise ChecksumMismatch(
                    f"refusing to store {self._where(key)}: the stream ended after {got} of "
                    f"{size} bytes"
                )
            crc.update(chunk)
            chunks.append(chunk)
            got += len(chunk)
        if stream.read(1):
            raise ChecksumMismatch(
                f"refusing to store {self._where(key)}: the stream is longer than {size} bytes"
            )
        actual = crc32c_b64(crc.digest())
        if actual != crc32c:
            raise ChecksumMismatch(
                f"refusing to store {self._where(key)}: its bytes have CRC32C {actual}, "
                f"not the expected {crc32c}"
            )
        return b"".join(chunks)
