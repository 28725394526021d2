"""Stream wrappers shared by the cloud stores: checked uploads and translated downloads."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, BinaryIO

import google_crc32c

from regionvault.checksums import crc32c_b64
from regionvault.errors import ChecksumMismatch, StoreError


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
