"""What the stores share for moving bytes: checked uploads, translated downloads, the
choice of which interrupted multipart upload to resume, the lock date a write carries, and
the order in which the versions of a key are deleted."""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, BinaryIO, TypeVar

import google_crc32c

from regionvault.checksums import crc32c_b64
from regionvault.errors import ChecksumMismatch, ObjectLocked, StoreError

#: one version of a key as a store lists it (an S3 version entry, a GCS generation)
V = TypeVar("V")

#: the lock modes a store is built with (``DomainConfig.object_lock.mode``)
LOCK_MODES = frozenset({"governance", "compliance"})


def connection_failure(exc: BaseException) -> str:
    """What a client's connection error says, with the reason the operating system gave
    when one is inside it (``EndpointConnectionError: Network is unreachable``): a fenced
    network, a refused port and a DNS failure need different people at 3 a.m."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return f"{type(exc).__name__}: {current.strerror}"
        # botocore keeps the urllib3 error it wraps in kwargs["error"], not as a cause
        wrapped = getattr(current, "kwargs", {}).get("error") if isinstance(
            getattr(current, "kwargs", None), dict) else None
        pending += [e for e in (wrapped, current.__cause__, current.__context__, *(
            a for a in current.args if isinstance(a, BaseException)))
            if isinstance(e, BaseException)]
    return type(exc).__name__


def check_lock_mode(lock_mode: str | None, bucket: str) -> str | None:
    """``lock_mode`` if it is one a store knows (or None); a ``ValueError`` naming it if not."""
    if lock_mode is not None and lock_mode not in LOCK_MODES:
        raise ValueError(f"lock mode {lock_mode!r} for bucket '{bucket}' is not one of "
                         "governance, compliance")
    return lock_mode


def lock_date(lock_mode: str | None, retain_until: datetime | None,
              now: datetime) -> datetime | None:
    """The retain-until date a write carries, in UTC and whole seconds, or None for no lock.

    None when the store locks nothing (no ``lock_mode``) or was given no date. The date is cut
    to the whole second at or before ``retain_until`` (S3 keeps no finer), so the lock never
    ends later than asked. A date not after ``now`` needs no lock: a retried write of a backup
    already due for expiry stores it unlocked rather than failing (S3 refuses a past date)."""
    if lock_mode is None or retain_until is None:
        return None
    if retain_until.tzinfo is None or retain_until.utcoffset() is None:
        raise ValueError(f"retain_until {retain_until.isoformat()} has no time zone; give an "
                         "aware (UTC) time")
    until = retain_until.astimezone(UTC).replace(microsecond=0)
    return until if until > now else None


def delete_every_version(versions: Iterable[V], *, is_current: Callable[[V], bool],
                         delete: Callable[[V], str | None], where: str, lock_note: str) -> None:
    """Delete every version of a key as the ``ObjectStore.delete`` contract orders it:
    noncurrent versions first, the current one last and only if no version was refused, so
    that a refused delete leaves the key listed for the next attempt.

    ``delete`` removes one version and returns None, or the sentence saying why its lock
    refused it. The first refusal is raised as ``ObjectLocked`` naming ``where``, after the
    other noncurrent versions are gone; ``lock_note`` says what cannot override the lock."""
    locked: list[str] = []
    for version in sorted(versions, key=is_current):  # stable: noncurrent first
        if is_current(version) and locked:
            break
        refusal = delete(version)
        if refusal is not None:
            locked.append(refusal)
    if locked:
        raise ObjectLocked(f"cannot delete {where}: {locked[0]}; it can be deleted after that "
                           f"({lock_note})")


def delete_noncurrent(versions: Iterable[V], *, is_current: Callable[[V], bool],
                      delete: Callable[[V], str | None], what: str) -> int:
    """Delete every version but the current one (``ObjectStore.delete_noncurrent_versions``)
    and return how many went; ``delete`` as for ``delete_every_version``. The first refusal
    is raised as ``ObjectLocked`` naming ``what`` once the others are deleted."""
    removed, locked = 0, []
    for version in versions:
        if is_current(version):
            continue
        refusal = delete(version)
        if refusal is None:
            removed += 1
        else:
            locked.append(refusal)
    if locked:
        raise ObjectLocked(f"cannot delete {what}: {locked[0]}; it can be deleted after that")
    return removed


class CheckedReader:
    """What an upload reads: exactly ``size`` bytes of ``stream``, CRC32C computed on the way.

    The read that reaches the end (or finds the stream short or long) raises
    ``ChecksumMismatch`` before returning its bytes, so the uploader never sends the last of
    a wrong upload and nothing gets committed. ``tell`` is all a resumable upload needs
    besides ``read``.
    """

    def __init__(self, stream: BinaryIO, size: int, crc32c: str, where: str) -> None:
        self._stream = stream
        self._size = size
        self._expected = crc32c
        self._where = where
        self._crc = google_crc32c.Checksum()
        self.position = 0

    @property
    def remaining(self) -> int:
        return self._size - self.position

    def tell(self) -> int:
        return self.position

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (fewer only at the end); the last call checks the whole."""
        want = self.remaining if n is None or n < 0 else min(n, self.remaining)
        chunks: list[bytes] = []
        got = 0
        # Pipes and HTTP bodies may return short reads; a part or chunk must be whole.
        while got < want:
            chunk = self._stream.read(want - got)
            if not chunk:
                raise ChecksumMismatch(
                    f"refusing to store {self._where}: the stream ended after "
                    f"{self.position + got} of {self._size} bytes"
                )
            chunks.append(chunk)
            got += len(chunk)
        data = b"".join(chunks)
        self._crc.update(data)
        self.position += len(data)
        if self.remaining == 0:
            self._check_end()
        return data

    def _check_end(self) -> None:
        if self._stream.read(1):
            raise ChecksumMismatch(
                f"refusing to store {self._where}: the stream is longer than {self._size} bytes"
            )
        actual = crc32c_b64(self._crc.digest())
        if actual != self._expected:
            raise ChecksumMismatch(
                f"refusing to store {self._where}: its bytes have CRC32C {actual}, "
                f"not the expected {self._expected}"
            )


class TranslatingReader(io.RawIOBase):
    """A vendor download stream whose read errors come out as the project's errors."""

    def __init__(self, body: Any, where: str, vendor_errors: tuple[type[BaseException], ...],
                 translate: Callable[[BaseException, str, str], StoreError]) -> None:
        super().__init__()
        self._body = body
        self._where = where
        self._vendor_errors = vendor_errors
        self._translate = translate

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except self._vendor_errors as exc:
            raise self._translate(exc, self._where, "read") from exc
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


#: ``holds(number, data, crc32c)``: does an open upload already hold this part, byte for byte?
PartHeld = Callable[[int, bytes, str], bool]


class ResumeChooser:
    """Chooses, one part at a time, which open multipart upload of a key to resume.

    The uploader reads every part in order (the whole-object CRC32C needs every byte) and asks
    ``already_stored`` about each. While some open uploads hold every part so far, the part is
    not sent. At the first part that none of them holds, the choice is made: the upload that
    held the most parts is ``resumed`` (none if not even part 1 matched: start a fresh one),
    and every other open upload is ``superseded`` (the uploader aborts those). From then on
    every part is sent. Deciding as the bytes go by is what lets a non-seekable stream be
    compared with several uploads in one pass.
    """

    def __init__(self, open_uploads: Mapping[str, PartHeld],
                 empty: Collection[str] = ()) -> None:
        self._holds = open_uploads
        #: open uploads that do not hold part 1: one of them is resumed when no upload holds
        #: part 1 (an upload interrupted before its first part landed, or whose part 1 failed
        #: while later parts were sent beside it), saving a new upload; every part is sent
        self._empty = [u for u in open_uploads if u in empty]
        #: uploads that hold every part offered so far
        self._alive = list(open_uploads)
        self.decided = False
        #: the upload to resume, once decided; None means start a fresh one
        self.resumed: str | None = None
        #: how many leading parts ``resumed`` already holds (not sent again)
        self.reused = 0

    @property
    def superseded(self) -> list[str]:
        """Once decided: the open uploads that are not resumed, to be aborted."""
        return [upload for upload in self._holds if upload != self.resumed]

    def already_stored(self, number: int, data: bytes, crc32c: str) -> bool:
        """True if part ``number`` need not be sent; False decides, and means send it."""
        if not self.decided:
            holding = [u for u in self._alive if self._holds[u](number, data, crc32c)]
            if holding:
                self._alive = holding
                self.reused = number
                return True
            self.finish()
        return False

    def finish(self) -> None:
        """Decide now (every part was offered, or none is left to offer)."""
        if not self.decided:
            self.decided = True
            # The first part that none holds also ends every upload still alive; the ones
            # alive until then held the most parts, and any of them will do.
            if self.reused:
                self.resumed = self._alive[0]
            else:
                self.resumed = self._empty[0] if self._empty else None
