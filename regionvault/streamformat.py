"""The encrypted stream format: AES-256-GCM in authenticated chunks.

Layout (version 1)::

    header:  b"RVS1" | chunk_size: u32 | nonce_prefix: 7 bytes | context_len: u16 | context
    chunks:  AES-256-GCM(key, nonce = nonce_prefix | counter: u32 | final: u8,
                         plaintext chunk, associated data = header)

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes; the last holds 0 to
``chunk_size`` and is sealed with ``final = 1``. This is the STREAM construction (Hoang et al.):
the counter in the nonce detects reordering and dropped chunks, the final flag detects
truncation at a chunk boundary, the header as associated data binds every chunk to this
stream's context (purpose, domain, backup id). A key is used for one stream only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from regionvault.errors import IntegrityError

MAGIC = b"RVS1"
DEFAULT_CHUNK_SIZE = 1024 * 1024
TAG_BYTES = 16
_PREFIX_BYTES = 7
_FIXED = struct.Struct(">4sI7sH")
_MAX_CONTEXT = 1024


class EncryptingWriter:
    """A write-only binary stream that encrypts into ``sink``; ``close`` seals the last chunk."""

    def __init__(self, sink: BinaryIO, key: bytes | bytearray, context: bytes,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if len(context) > _MAX_CONTEXT:
            raise ValueError("stream context is too long")
        self._sink = sink
        self._aead = AESGCM(key)
        self._chunk_size = chunk_size
        self._prefix = os.urandom(_PREFIX_BYTES)
        self._header = _FIXED.pack(MAGIC, chunk_size, self._prefix, len(context)) + context
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        sink.write(self._header)

    def write(self, data: bytes) -> int:
        if self._closed:
            raise ValueError("write to a closed EncryptingWriter")
        self._buffer += data
        # Keep at least one byte back: only at close do we know which chunk is the last.
        while len(self._buffer) > self._chunk_size:
            self._seal(bytes(self._buffer[: self._chunk_size]), final=False)
            del self._buffer[: self._chunk_size]
        return len(data)

    def flush(self) -> None:
        """Nothing to do: chunks are sealed as they fill (zstandard calls this)."""

    def close(self) -> None:
        if not self._closed:
            self._seal(bytes(self._buffer), final=True)
            self._buffer.clear()
            self._closed = True

    def _seal(self, chunk: bytes, *, final: bool) -> None:
        if self._counter >= 2**32 - 1:
            raise ValueError("stream too long for one key")
        nonce = self._prefix + struct.pack(">IB", self._counter, 1 if final else 0)
        self._sink.write(self._aead.encrypt(nonce, chunk, self._header))
        self._counter += 1

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        piece = src.read(remaining)
        if not piece:
            break
        parts.append(piece)
        remaining -= len(piece)
    return b"".join(parts)


def read_header(src: BinaryIO) -> tuple[int, bytes, bytes, bytes]:
    """(chunk_size, nonce prefix, context, raw header) of a stream; IntegrityError if malformed."""
    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) != _FIXED.size:
        raise IntegrityError("the encrypted stream is truncated inside its header")
    magic, chunk_size, prefix, ctx_len = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise IntegrityError("the data is not a regionvault encrypted stream (bad magic)")
    if not 0 < chunk_size <= 64 * 1024 * 1024 or ctx_len > _MAX_CONTEXT:
        raise IntegrityError("the encrypted stream header is malformed")
    context = _read_exact(src, ctx_len)
    if len(context) != ctx_len:
        raise IntegrityError("the encrypted stream is truncated inside its header")
    return chunk_size, prefix, context, fixed + context


def decrypt_chunks(src: BinaryIO, key: bytes | bytearray,
                   expected_context: bytes) -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raise IntegrityError at the first bad byte.

    Nothing is yielded from a chunk before its tag has been checked. A stream that ends
    without its final chunk raises, so a truncated object never looks complete.
    """
    chunk_size, prefix, context, header = read_header(src)
    if context != expected_context:
        raise IntegrityError("the encrypted stream belongs to another backup, domain or purpose")
    aead = AESGCM(key)
    sealed_size = chunk_size + TAG_BYTES
    counter = 0
    pending = _read_exact(src, sealed_size)
    while True:
        if len(pending) < TAG_BYTES:
            raise IntegrityError(f"the encrypted stream is truncated (chunk {counter})")
        following = _read_exact(src, sealed_size) if len(pending) == sealed_size else b""
        final = not following
        nonce = prefix + struct.pack(">IB", counter, 1 if final else 0)
        try:
            plain = aead.decrypt(nonce, pending, header)
        except InvalidTag:
            raise IntegrityError(
                f"chunk {counter} of the encrypted stream failed authentication "
                "(tampered, truncated, reordered, or the wrong key)"
            ) from None
        yield plain
        if final:
            return
        counter += 1
        pending = following


class DecryptingReader:
    """A read-only binary stream over ``decrypt_chunks`` (for consumers that call ``read``)."""

    def __init__(self, src: BinaryIO, key: bytes | bytearray, expected_context: bytes) -> None:
        self._chunks = decrypt_chunks(src, key, expected_context)
        self._buffer = b""
        self._done = False

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buffer) < n):
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                self._done = True
        if n < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out
