"""Running checksums over a byte stream: SHA-256 (hex) and CRC32C (base64, as clouds report it)."""

from __future__ import annotations

import base64
import hashlib

import google_crc32c


def crc32c_b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class StreamDigest:
    """Size, SHA-256 and CRC32C of everything passed to ``update``, in one pass.

    ``crc=False`` leaves the CRC32C out (only store copies are compared by CRC32C; the
    plaintext needs its SHA-256 only)."""

    def __init__(self, *, crc: bool = True) -> None:
        self._sha = hashlib.sha256()
        self._crc = google_crc32c.Checksum() if crc else None
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        if self._crc is not None:
            self._crc.update(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def crc32c(self) -> str:
        if self._crc is None:
            raise ValueError("this digest was taken without CRC32C")
        return crc32c_b64(self._crc.digest())


def crc32c_of_bytes(data: bytes) -> str:
    return crc32c_b64(google_crc32c.Checksum(data).digest())
