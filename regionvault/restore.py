"""Restore a backup into a target database, streaming and verifying.

download -> (CRC32C, SHA-256) -> authenticate and decrypt chunk by chunk -> zstd -> pg_restore.

- The stages overlap: the download runs in one thread, decryption and decompression in another,
  and the calling thread feeds pg_restore (``regionvault.pipeline``). Between two stages a
  bounded queue holds a few chunks, so no plaintext touches disk and memory stays a few MiB.
  A stage that fails ends the restore at once: pg_restore is killed before the end of its
  input, and every thread is stopped and joined before ``restore`` returns or raises.
- The store's reported size and CRC32C are compared with the manifest before a byte is
  restored; the SHA-256 of ciphertext and plaintext after the last byte.
- pg_restore runs in one transaction: a copy that fails its checks half-way leaves the target
  as it was, which is what lets ``auto`` fall back from S3 to GCS safely.
- A target that already holds tables is refused unless ``clean`` is asked for.
- The manifest's MAC is checked before anything else: a forged manifest is refused (``auto``
  then tries the other store's copy). A version-1 manifest (no MAC, written before manifests
  were authenticated) is restored as unauthenticated legacy, with a warning: the data key is
  still bound to its domain and backup and the stream is still authenticated, so a tampered
  legacy manifest can make a restore fail, never restore other bytes than the backup's own.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import zstandard

from regionvault.catalogue import listing, listing_in
from regionvault.checksums import StreamDigest
from regionvault.context import DomainContext
from regionvault.errors import (
    BackupErased,
    ConfigError,
    IntegrityError,
    ManifestForged,
    NotFound,
    StoreError,
    WrongKeyError,
)
from regionvault.keyring import zeroise
from regionvault.manifest import Manifest, backup_started
from regionvault.manifest_store import (
    READ_SIZE,
    data_key_context,
    keys_of,
    read_manifest,
    resolve,
    stream_context,
)
from regionvault.pipeline import Stage
from regionvault.progress import Progress, ProgressReport, no_progress
from regionvault.sources import DumpInfo, restorer_for
from regionvault.streamformat import DecryptingReader

log = logging.getLogger(__name__)

#: chunks (of about READ_SIZE) queued between two stages: enough to ride out one stage's
#: jitter, few enough that a restore holds only a few MiB whatever the backup's size
QUEUE_DEPTH = 4


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    store: str
    bytes_read: int
    plaintext_bytes: int
    seconds: float
    #: why the first choice of store was not used (``auto`` only), else None
    fallback_reason: str | None = None
    #: set when the manifest was an unauthenticated version-1 one
    warning: str | None = None


def _download(raw: BinaryIO, digest: StreamDigest) -> Iterator[bytes]:
    """The stored bytes, READ_SIZE at a time, hashed (CRC32C, SHA-256) as they arrive."""
    while block := raw.read(READ_SIZE):
        digest.update(block)
        yield block


class _BlockReader:
    """A ``read()``-only stream over an iterator of byte blocks (what decryption reads).

    A read returns at most the rest of the current block; its callers read until they have
    what they asked for.
    """

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._pending = b""

    def read(self, n: int = -1) -> bytes:
        if not self._pending:
            self._pending = next(self._blocks, b"")
        if n < 0 or n >= len(self._pending):
            out, self._pending = self._pending, b""
        else:
            out, self._pending = self._pending[:n], self._pending[n:]
        return out


def _decode(blocks: Iterator[bytes], data_key: bytes | bytearray, context: bytes,
            digest: StreamDigest, fail: Callable[[str], IntegrityError]) -> Iterator[bytes]:
    """Authenticated, decrypted and decompressed ``blocks``: the dump, hashed as it goes.

    Errors of the stages before it (a store error while downloading) pass through here too,
    and an ``IntegrityError`` of any of them is reported as this backup's.
    """
    decrypted = DecryptingReader(_BlockReader(blocks), data_key,  # type: ignore[arg-type]
                                 context)
    try:
        for chunk in zstandard.ZstdDecompressor().read_to_iter(
                decrypted,  # type: ignore[arg-type]  # a read()-only stream is enough
                read_size=READ_SIZE, write_size=READ_SIZE):
            digest.update(chunk)
            yield chunk
    except IntegrityError as exc:
        raise fail(str(exc)) from None
    except zstandard.ZstdError:
        raise fail("the decrypted stream is not valid zstd") from None


def _fail(ctx: DomainContext, backup_id: str, role: str, problem: str) -> IntegrityError:
    return IntegrityError(
        f"backup {backup_id} cannot be restored from {role} ({ctx.url(role)}): {problem}")


def load_manifest(ctx: DomainContext, backup_id: str, role: str) -> Manifest:
    """The backup's manifest in ``role``, MAC checked (a version-1 one is accepted as legacy,
    see ``legacy_warning``); ``ManifestForged`` for one that fails its MAC."""
    ref, src = resolve(ctx, backup_id)
    _, mkey = keys_of(ref, src)
    store = ctx.store(role)
    manifest = read_manifest(ctx, store, mkey, allow_legacy=True)
    if manifest is None:
        raise NotFound(f"backup {backup_id} has no manifest in bucket {store.bucket} ({role})")
    return manifest


def legacy_warning(manifest: Manifest, role: str) -> str | None:
    """The warning a restore of an unauthenticated version-1 manifest carries (else None)."""
    if not manifest.legacy:
        return None
    return (f"the {role} manifest of backup {manifest.backup_id} is a version-1 manifest "
            "without a MAC: it is used as unauthenticated legacy (the restored bytes are still "
            "checked by their encryption and checksums); take a new backup of the source")


def select_backup(ctx: DomainContext, source: str, at: datetime, *,
                  role: str | None) -> Manifest:
    """The newest verified backup of ``source`` created at or before ``at``.

    ``role`` names the store whose catalogue is read; None reads S3, or GCS if S3 is down.
    An authenticated manifest is preferred to a legacy (version 1) one, which can only be
    older. A backup whose manifest cannot be trusted is never skipped in silence: if one
    started after the chosen backup (by the time in its id), the choice is refused, naming it.
    """
    found = listing(ctx, source) if role is None else listing_in(ctx, role, source)
    candidates = [m for m in found.manifests if m.verified and m.created_at <= at]
    authenticated = [m for m in candidates if not m.legacy]
    pool = authenticated or candidates
    chosen = pool[-1] if pool else None
    floor = backup_started(chosen.backup_id) if chosen is not None else None
    for untrusted in found.untrusted:
        started = backup_started(untrusted.backup_id)
        if started is None or started > at or (floor is not None and started <= floor):
            continue
        kind = ManifestForged if untrusted.forged else IntegrityError
        raise kind(
            f"the newest backup of source {source!r} at or before "
            f"{at.isoformat(timespec='seconds')} may be {untrusted.backup_id}, and "
            f"{untrusted.error}; to restore an older backup, name it by id "
            f"(regionvault list --domain {ctx.domain.value} --source {source})")
    if chosen is None:
        raise NotFound(
            f"source {source!r} of domain {ctx.domain.value!r} has no verified backup at or "
            f"before {at.isoformat(timespec='seconds')}"
        )
    if chosen.legacy:
        log.warning("%s", legacy_warning(chosen, found.store))
    return chosen


def erased_error(manifest: Manifest) -> BackupErased:
    assert manifest.erasure is not None
    record = manifest.erasure
    return BackupErased(
        f"backup {manifest.backup_id} was erased on "
        f"{record.erased_at.isoformat(timespec='seconds')} by {record.by} "
        f"({record.reason}): its data key is destroyed and nothing can restore it")


def restore(ctx: DomainContext, backup_id: str, target_dsn: str, *, from_store: str = "auto",
            clean: bool = False, progress: Progress = no_progress) -> RestoreResult:
    """Restore ``backup_id`` from one of the stores that hold its copies ("s3", "gcs",
    "swift"), or ``auto``: the source's primary, falling back to its replica."""
    _, src = resolve(ctx, backup_id)
    placement = ctx.placement(src)
    # any store of the domain: a backup made before its source moved (say from s3 to swift)
    # still lies where it was made
    if from_store not in (*ctx.store_names, "auto"):
        raise ConfigError(
            f"a restore in domain {ctx.domain.value!r} reads from one of its stores "
            f"({', '.join(ctx.store_names)}) or auto, not {from_store!r}")
    if from_store != "auto":
        return _restore_from(ctx, backup_id, target_dsn, from_store, clean, progress)
    try:
        return _restore_from(ctx, backup_id, target_dsn, placement.primary, clean, progress)
    except (StoreError, IntegrityError) as exc:
        if isinstance(exc, WrongKeyError):
            raise  # the other copy is sealed with the same key: falling back cannot help
        reason = f"{placement.primary} was not used: {exc}"
    result = _restore_from(ctx, backup_id, target_dsn, placement.replica, clean, progress)
    return dataclasses.replace(result, fallback_reason=reason)


def dump_info(manifest: Manifest) -> DumpInfo:
    """What the manifest says about the dump, as a restore target's check needs it."""
    return DumpInfo(row_counts=manifest.row_counts, server_version=manifest.server_version,
                    tool_version=manifest.tool_version)


def _restore_from(ctx: DomainContext, backup_id: str, target_dsn: str, role: str, clean: bool,
                  progress: Progress) -> RestoreResult:
    started = time.monotonic()
    store = ctx.store(role)
    manifest = load_manifest(ctx, backup_id, role)
    if manifest.erasure is not None:
        raise erased_error(manifest)
    warning = legacy_warning(manifest, role)
    if warning:
        log.warning("%s", warning)
    ref, src = resolve(ctx, backup_id)
    okey, _ = keys_of(ref, src)
    # the manifest, not today's configuration, says what kind of dump this is
    restorer = restorer_for(manifest.source_kind, ref.source)
    # before a byte is read or written: a target that holds data, or is too old for the dump
    restorer.check_target(target_dsn, clean=clean, dump=dump_info(manifest))

    def fail(problem: str) -> IntegrityError:
        return _fail(ctx, backup_id, role, problem)

    def report(step: str, done: int) -> None:
        progress(ProgressReport(backup_id, step, done, manifest.ciphertext_size, role))

    report("checking", 0)
    try:
        info = store.stat(okey)
    except NotFound:
        raise fail("its object is missing") from None
    if info.size != manifest.ciphertext_size or info.crc32c != manifest.ciphertext_crc32c:
        raise fail("the stored object does not match its manifest "
                   f"(size {info.size} vs {manifest.ciphertext_size}, CRC32C {info.crc32c} "
                   f"vs {manifest.ciphertext_crc32c})")
    try:
        # the first wrapping that opens: KMS, or the local escrow when KMS is away
        data_key = ctx.keyring.unwrap(manifest.wrappings, data_key_context(ref))
    except WrongKeyError as exc:
        raise WrongKeyError(
            f"backup {backup_id} from {role} cannot be decrypted: {exc}") from None

    cipher, plain = StreamDigest(), StreamDigest()

    def checked(dump: Iterator[bytes]) -> Iterator[bytes]:
        # Runs in this thread, as pg_restore takes each chunk: progress is reported from the
        # caller's thread, and the SHA-256 checks come after the last byte, before pg_restore
        # sees the end of its input (a mismatch kills it: its transaction is rolled back).
        for chunk in dump:
            report("restoring", cipher.size)
            yield chunk
        if cipher.sha256 != manifest.ciphertext_sha256:
            raise fail("the ciphertext SHA-256 differs from the manifest")
        if plain.sha256 != manifest.plaintext_sha256:
            raise fail("the plaintext SHA-256 differs from the manifest")

    raw = store.open_read(okey)
    # Closed in reverse order: each stage's thread is joined before what it reads is closed.
    with ExitStack() as stages:
        stages.callback(zeroise, data_key)
        stages.callback(raw.close)
        blocks = stages.enter_context(
            Stage(_download(raw, cipher), name=f"restore-download-{role}", depth=QUEUE_DEPTH))
        dump = stages.enter_context(
            Stage(_decode(blocks, data_key, stream_context(ref, "backup-stream"), plain, fail),
                  name=f"restore-decode-{role}", depth=QUEUE_DEPTH))
        restorer.restore(checked(dump), target_dsn, clean=clean)
    report("done", cipher.size)
    return RestoreResult(backup_id=backup_id, store=role, bytes_read=cipher.size,
                         plaintext_bytes=plain.size, seconds=time.monotonic() - started,
                         warning=warning)


__all__ = ["RestoreResult", "dump_info", "legacy_warning", "load_manifest", "restore",
           "select_backup"]
