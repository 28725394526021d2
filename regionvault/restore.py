"""Restore a backup from one store into a target database, streaming and verifying.

download -> (CRC32C, SHA-256) -> authenticate and decrypt chunk by chunk -> zstd -> pg_restore.
No plaintext touches disk; memory is bounded by the chunk size. The store's reported checksum
is compared with the manifest before a byte is restored, and the full SHA-256 of ciphertext and
plaintext after the last byte, so a corrupted copy is named, never silently restored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from regionvault.chain import READ_SIZE, keys_of, read_manifest, resolve, stream_context
from regionvault.checksums import StreamDigest
from regionvault.context import DomainContext
from regionvault.errors import IntegrityError, NotFound, WrongKeyError
from regionvault.keyring import WrappedKey
from regionvault.manifest import Manifest
from regionvault.sources.postgres import restore_dump
from regionvault.stores.base import ObjectStore
from regionvault.streamformat import DecryptingReader

Progress = Callable[[int], None]


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    store: str
    bytes_read: int
    plaintext_bytes: int


class _DigestingReader:
    def __init__(self, raw: BinaryIO, digest: StreamDigest, progress: Progress) -> None:
        self._raw = raw
        self._digest = digest
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._digest.update(data)
        self._progress(self._digest.size)
        return data


def _fail(backup_id: str, role: str, store: ObjectStore, problem: str) -> IntegrityError:
    scheme = "gs" if role == "gcs" else role
    return IntegrityError(
        f"backup {backup_id} cannot be restored from {role} ({scheme}://{store.bucket}): {problem}"
    )


def load_manifest(ctx: DomainContext, backup_id: str, store: ObjectStore) -> Manifest:
    ref, src = resolve(ctx, backup_id)
    _, mkey = keys_of(ref, src)
    manifest = read_manifest(store, mkey)
    if manifest is None:
        raise NotFound(f"backup {backup_id} has no manifest in bucket {store.bucket}")
    return manifest


def restore(ctx: DomainContext, backup_id: str, target_dsn: str, *, from_store: str = "s3",
            progress: Progress = lambda _: None) -> RestoreResult:
    store = ctx.store(from_store)
    manifest = load_manifest(ctx, backup_id, store)
    ref, src = resolve(ctx, backup_id)
    okey, _ = keys_of(ref, src)
    try:
        info = store.stat(okey)
    except NotFound:
        raise _fail(backup_id, from_store, store, "its object is missing") from None
    if info.size != manifest.ciphertext_size or info.crc32c != manifest.ciphertext_crc32c:
        raise _fail(backup_id, from_store, store, "the stored object does not match its manifest "
                    f"(size {info.size} vs {manifest.ciphertext_size}, CRC32C {info.crc32c} "
                    f"vs {manifest.ciphertext_crc32c})")
    def fail(problem: str) -> IntegrityError:
        return _fail(backup_id, from_store, store, problem)

    try:
        data_key = ctx.keyring.unwrap(WrappedKey.decode(manifest.key_id, manifest.wrapped_data_key),
                                      stream_context(ref, "data-key"))
    except WrongKeyError as exc:
        raise WrongKeyError(f"backup {backup_id} cannot be decrypted: {exc}") from None

    cipher, plain = StreamDigest(), StreamDigest()
    raw = store.open_read(okey)
    try:
        reader = _DigestingReader(raw, cipher, progress)
        decrypted = DecryptingReader(reader, data_key, stream_context(ref, "backup-stream"))  # type: ignore[arg-type]

        def plaintext() -> Iterator[bytes]:
            try:
                for chunk in zstandard.ZstdDecompressor().read_to_iter(
                        decrypted,  # type: ignore[arg-type]  # a read()-only stream is enough
                        read_size=READ_SIZE, write_size=READ_SIZE):
                    plain.update(chunk)
                    yield chunk
            except IntegrityError as exc:
                raise fail(str(exc)) from None
            except zstandard.ZstdError:
                raise fail("the decrypted stream is not valid zstd") from None
            if cipher.sha256 != manifest.ciphertext_sha256:
                raise fail("the ciphertext SHA-256 differs from the manifest")
            if plain.sha256 != manifest.plaintext_sha256:
                raise fail("the plaintext SHA-256 differs from the manifest")

        restore_dump(plaintext(), target_dsn, label=f"backup {backup_id}")
    finally:
        raw.close()
    return RestoreResult(backup_id=backup_id, store=from_store, bytes_read=cipher.size,
                         plaintext_bytes=plain.size)
