"""The bytes of a backup object, made in one pass: plaintext -> zstd -> AES-256-GCM stream.

``BackupWriter`` takes the source's dump as it streams and writes the finished object: zstd
(multi-threaded where the machine has the cores) inside the authenticated chunk format of
``regionvault.streamformat``, sealed under the backup's own data key. The digests the manifest
needs (size and SHA-256 of the plaintext; size, SHA-256 and CRC32C of the ciphertext) are
taken in the same pass, so no byte of the dump is read, written or encrypted twice.

``authenticate`` reads a finished object back and checks every chunk's tag under the data key,
and the ciphertext digests on the way: what ``encrypt`` does before anything leaves the spool.

The object format is unchanged from what the older two-pass chain wrote (``STREAM_FORMAT``):
a standard zstd frame inside the RVS1 stream, so every backup restores the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from regionvault.checksums import StreamDigest
from regionvault.errors import IntegrityError
from regionvault.streamformat import MAGIC, EncryptingWriter, decrypt_chunks

STREAM_FORMAT = MAGIC.decode("ascii")
COMPRESSION = "zstd"
ZSTD_LEVEL = 3


def zstd_threads() -> int:
    """zstd worker threads: one per core this process may use, none on a single core (where
    a worker thread only adds hand-over cost)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cores or 1) < 2 else int(cores or 1)


@dataclass(frozen=True)
class StreamFacts:
    """Sizes and digests of one backup object and of the plaintext inside it."""

    plaintext_size: int
    plaintext_sha256: str
    ciphertext_size: int
    ciphertext_sha256: str
    ciphertext_crc32c: str


class _DigestingSink:
    """A write-only stream that digests what passes through to ``fh``."""

    def __init__(self, fh: BinaryIO, digest: StreamDigest) -> None:
        self._fh = fh
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self._fh.write(data)
        return len(data)


class BackupWriter:
    """Compress, encrypt and digest a plaintext stream into ``out`` in one pass.

    ``write`` the plaintext in pieces of any size, then ``close`` once to end the zstd frame,
    seal the last chunk and get the ``StreamFacts``. Memory stays bounded by zstd's window and
    one stream chunk, whatever the size of the dump.
    """

    def __init__(self, out: BinaryIO, key: bytes | bytearray, context: bytes, *,
                 threads: int | None = None) -> None:
        self._plain = StreamDigest(crc=False)
        self._cipher = StreamDigest()
        self._encryptor = EncryptingWriter(_DigestingSink(out, self._cipher),  # type: ignore[arg-type]
                                           key, context)
        workers = zstd_threads() if threads is None else threads
        self._compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, threads=workers, write_checksum=True
        ).stream_writer(self._encryptor, closefd=False)  # type: ignore[arg-type]
        self._facts: StreamFacts | None = None

    @property
    def plaintext_size(self) -> int:
        return self._plain.size

    def write(self, data: bytes) -> int:
        if self._facts is not None:
            raise ValueError("write to a closed BackupWriter")
        self._plain.update(data)
        self._compressor.write(data)
        return len(data)

    def close(self) -> StreamFacts:
        if self._facts is None:
            self._compressor.close()  # ends the zstd frame; closefd=False keeps the encryptor
            self._encryptor.close()
            self._facts = StreamFacts(
                plaintext_size=self._plain.size, plaintext_sha256=self._plain.sha256,
                ciphertext_size=self._cipher.size, ciphertext_sha256=self._cipher.sha256,
                ciphertext_crc32c=self._cipher.crc32c)
        return self._facts


class _DigestingReader:
    """A read-only stream that digests what is read from ``fh``."""

    def __init__(self, fh: BinaryIO, digest: StreamDigest) -> None:
        self._fh = fh
        self._digest = digest

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._digest.update(data)
        return data


def authenticate(fh: BinaryIO, key: bytes | bytearray, context: bytes,
                 progress: Callable[[int], None] = lambda _: None) -> StreamDigest:
    """Check every chunk of an object under ``key`` (``IntegrityError`` at the first bad one)
    and return the digest of the ciphertext read. Nothing is decompressed or kept."""
    digest = StreamDigest()
    reader = _DigestingReader(fh, digest)
    for _ in decrypt_chunks(reader, key, context):  # type: ignore[arg-type]
        progress(digest.size)
    if fh.read(1):
        raise IntegrityError("the encrypted stream has bytes after its final chunk")
    return digest
