"""An in-process object store for unit tests: one bucket held in a dict, same contract as S3/GCS.

It passes the same conformance suite as the real stores, so code tested against it behaves the
same against them. It is not a fake of either cloud's API, and not for tests that claim the
system works end to end (those use the moto and GCS emulator servers).

Objects of ``part_size`` bytes or more are written as S3 writes them, in parts of an upload
that stays open (``incomplete_uploads``) until its last part is in, so an interrupted write
leaves an upload for a retry to resume or for the reconciler to sweep. ``fail_upload_after``
interrupts one, as a store that goes away mid-upload would.

Locks are emulated as S3 Object Lock behaves: a store built with ``lock_mode`` is versioned (an
overwrite keeps the older versions, a delete must remove each one) and refuses to delete a
version before its retain-until date, read from ``clock``; so the conformance suite covers the
lock contract here as on S3.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import BinaryIO

from regionvault.checksums import crc32c_of_bytes
from regionvault.errors import (
    ChecksumMismatch,
    NotFound,
    ObjectLocked,
    PermanentStoreError,
    ResidencyError,
    TransientStoreError,
)
from regionvault.stores.base import IncompleteUpload, LockSettings, ObjectInfo
from regionvault.stores.streams import CheckedReader, ResumeChooser, check_lock_mode, lock_date

MiB = 1024 * 1024


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _StoredObject:
    data: bytes
    crc32c: str
    modified: datetime
    retain_until: datetime | None = None


@dataclass
class _OpenUpload:
    key: str
    initiated: datetime
    parts: dict[int, bytes] = field(default_factory=dict)


class MemoryStore:
    """An ``ObjectStore`` in memory (see ``regionvault.stores.base`` for the contract)."""

    name = "memory"

    def __init__(
        self,
        bucket: str,
        location: str,
        *,
        exists: bool = True,
        part_size: int = 8 * MiB,
        clock: Callable[[], datetime] = _utc_now,
        lock_mode: str | None = None,
        versioned: bool | None = None,
    ) -> None:
        self.bucket = bucket
        self.location = location
        #: False models a bucket that was never created (or was deleted)
        self.exists = exists
        #: the mode objects given a ``retain_until`` are locked in; None: nothing is locked
        self.lock_mode = check_lock_mode(lock_mode, bucket)
        #: whether the bucket can lock objects (False models a bucket Object Lock was never
        #: enabled on: a locked write is refused)
        self.object_lock_enabled = lock_mode is not None
        #: an overwrite keeps older versions (as Object Lock requires); default: with a lock
        self.versioned = lock_mode is not None if versioned is None else versioned
        #: writes of this many bytes or more go in parts, as S3Store's do
        self.part_size = part_size
        #: what ``modified`` and ``initiated`` are read from (tests pass their own)
        self.clock = clock
        #: requests as S3 would count them ("create_upload", "upload_part"), for tests
        self.requests: Counter[str] = Counter()
        # Every version of a key, oldest first; the last is the current one.
        self._objects: dict[str, list[_StoredObject]] = {}
        self._uploads: dict[str, _OpenUpload] = {}
        self._upload_ids = itertools.count(1)
        self._fail_after: int | None = None
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

    def put_file(self, key: str, path: str, *, crc32c: str,
                 retain_until: datetime | None = None) -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, os.fstat(f.fileno()).st_size, crc32c=crc32c,
                                   retain_until=retain_until)

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str,
                   retain_until: datetime | None = None) -> ObjectInfo:
        until = lock_date(self.lock_mode, retain_until, self.clock())
        if until is not None and not self.object_lock_enabled:
            raise PermanentStoreError(
                f"cannot upload {self._where(key)} locked: object lock is not enabled on the "
                "bucket; run `regionvault provision`")
        reader = CheckedReader(stream, size, crc32c, self._where(key))
        # Either way the read reaching the end raises ChecksumMismatch if the bytes are wrong.
        data = reader.read(size) if size < self.part_size else self._put_multipart(key, reader)
        stored = _StoredObject(data, crc32c, self.clock(), until)
        with self._lock:
            kept = self._objects.get(key, []) if self.versioned else []
            self._objects[key] = [*kept, stored]
        return self.stat(key)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        return self._get(key).data

    def open_read(self, key: str) -> BinaryIO:
        return io.BytesIO(self._get(key).data)

    def stat(self, key: str) -> ObjectInfo:
        return self._info(key, self._get(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        for info in self.list_info(prefix):
            yield info.key

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        self._require_bucket()
        with self._lock:
            found = sorted((key, versions[-1]) for key, versions in self._objects.items()
                           if key.startswith(prefix))
        for key, stored in found:
            yield replace(self._info(key, stored), retain_until=None)  # as S3's listing

    def delete(self, key: str) -> None:
        with self._lock:
            now = self.clock()

            def locked(version: _StoredObject) -> bool:
                return version.retain_until is not None and version.retain_until > now

            versions = self._objects.get(key, [])
            noncurrent, current = versions[:-1], versions[-1:]
            # Noncurrent versions first; the current one only once they are all gone (see the
            # contract), and only if it is not locked itself.
            refused = [v for v in noncurrent if locked(v)]
            if refused or any(locked(v) for v in current):
                refused += current
                self._objects[key] = refused
            else:
                self._objects.pop(key, None)
        blocking = [v.retain_until for v in refused if locked(v) and v.retain_until is not None]
        if blocking:
            raise ObjectLocked(
                f"cannot delete {self._where(key)}: a version of it is locked "
                f"({self.lock_mode or 'governance'} mode) until {min(blocking).isoformat()}; "
                "it can be deleted after that")

    def delete_noncurrent_versions(self, key: str) -> int:
        with self._lock:
            now = self.clock()
            versions = self._objects.get(key, [])
            noncurrent, current = versions[:-1], versions[-1:]
            refused = [v for v in noncurrent
                       if v.retain_until is not None and v.retain_until > now]
            if versions:
                self._objects[key] = refused + current
        if refused:
            until = min(v.retain_until for v in refused if v.retain_until is not None)
            raise ObjectLocked(
                f"cannot delete the older versions of {self._where(key)}: one is locked "
                f"({self.lock_mode} mode) until {until.isoformat()}; it can be deleted after "
                "that")
        return len(noncurrent) - len(refused)

    def lock_settings(self) -> LockSettings:
        self._require_bucket()
        return LockSettings(store=self.name, bucket=self.bucket, versioned=self.versioned,
                            lock_enabled=self.object_lock_enabled)

    def versions(self, key: str) -> int:
        """Test helper: how many versions of ``key`` the store holds."""
        with self._lock:
            return len(self._objects.get(key, []))

    def incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        self._require_bucket()
        with self._lock:
            found = [
                IncompleteUpload(key=upload.key, upload_id=upload_id, initiated=upload.initiated)
                for upload_id, upload in self._uploads.items()
                if upload.key.startswith(prefix)
            ]
        return sorted(found, key=lambda upload: (upload.key, upload.upload_id))

    def abort_upload(self, upload: IncompleteUpload) -> bool:
        with self._lock:
            return self._uploads.pop(upload.upload_id, None) is not None

    def abort_incomplete_uploads(self, prefix: str) -> int:
        return sum(self.abort_upload(upload) for upload in self.incomplete_uploads(prefix))

    # -- test helpers -----------------------------------------------------------------------

    def fail_upload_after(self, parts: int) -> None:
        """Let ``parts`` more parts be stored, then fail the next with ``TransientStoreError``.

        The upload stays open with what it had, as one does when S3 goes away mid-upload.
        """
        with self._lock:
            self._fail_after = parts

    def corrupt(self, key: str, offset: int, *, keep_checksum: bool = False) -> None:
        """Test helper: flip every bit of the byte at ``offset`` of ``key``.

        By default the reported CRC32C follows the new bytes, as a cloud reports it for an
        object rewritten by someone else; ``keep_checksum=True`` keeps the old one, modelling
        damage that only reading the bytes reveals.
        """
        with self._lock:
            versions = self._objects.get(key)
            if not versions:
                raise NotFound(f"cannot corrupt {self._where(key)}: it does not exist")
            stored = versions[-1]
            if not 0 <= offset < len(stored.data):
                raise ValueError(
                    f"offset {offset} is outside {self._where(key)} ({len(stored.data)} bytes)"
                )
            data = bytearray(stored.data)
            data[offset] ^= 0xFF
            crc = stored.crc32c if keep_checksum else crc32c_of_bytes(bytes(data))
            versions[-1] = replace(stored, data=bytes(data), crc32c=crc)

    # -- internals --------------------------------------------------------------------------

    def _info(self, key: str, stored: _StoredObject) -> ObjectInfo:
        return ObjectInfo(
            key=key, size=len(stored.data), crc32c=stored.crc32c, modified=stored.modified,
            retain_until=stored.retain_until,
        )

    def _get(self, key: str) -> _StoredObject:
        self._require_bucket()
        with self._lock:
            versions = self._objects.get(key)
        if not versions:
            raise NotFound(f"{self._where(key)} does not exist")
        return versions[-1]

    def _put_multipart(self, key: str, reader: CheckedReader) -> bytes:
        """The object's bytes, sent in parts of an upload that resumes as S3Store's does."""
        self._require_bucket()
        with self._lock:
            open_parts = {
                upload_id: dict(upload.parts)
                for upload_id, upload in self._uploads.items()
                if upload.key == key
            }
        chooser = ResumeChooser({u: partial(_holds, held) for u, held in open_parts.items()},
                                empty={u for u, held in open_parts.items() if not held})
        upload_id: str | None = None
        number = 0
        try:
            while reader.remaining:
                number += 1
                data = reader.read(self.part_size)  # the last read checks the whole object
                if chooser.already_stored(number, data, crc32c_of_bytes(data)):
                    continue
                if upload_id is None:
                    upload_id = self._start_or_resume(key, chooser)
                self._upload_part(key, upload_id, number, data)
            if upload_id is None:
                chooser.finish()
                upload_id = self._start_or_resume(key, chooser)
        except ChecksumMismatch:
            with self._lock:
                for stale in [upload_id] if upload_id is not None else list(open_parts):
                    self._uploads.pop(stale, None)
            raise
        with self._lock:
            upload = self._uploads.pop(upload_id, None)
        if upload is None:
            raise NotFound(f"cannot complete the upload of {self._where(key)}: it was aborted")
        return b"".join(upload.parts[n] for n in range(1, number + 1))

    def _start_or_resume(self, key: str, chooser: ResumeChooser) -> str:
        with self._lock:
            for stale in chooser.superseded:
                self._uploads.pop(stale, None)
            if chooser.resumed is not None:
                return chooser.resumed
            self.requests["create_upload"] += 1
            upload_id = f"upload-{next(self._upload_ids)}"
            self._uploads[upload_id] = _OpenUpload(key, self.clock())
        return upload_id

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        with self._lock:
            self.requests["upload_part"] += 1
            if self._fail_after is not None:
                if self._fail_after == 0:
                    self._fail_after = None
                    raise TransientStoreError(
                        f"cannot upload part {number} of {self._where(key)}: the memory store "
                        "was told to fail here; retry later"
                    )
                self._fail_after -= 1
            upload = self._uploads.get(upload_id)
            if upload is None:
                raise NotFound(f"cannot upload part {number} of {self._where(key)}: the upload "
                               "was aborted")
            upload.parts[number] = data


def _holds(parts: dict[int, bytes], number: int, data: bytes, crc32c: str) -> bool:
    return parts.get(number) == data
