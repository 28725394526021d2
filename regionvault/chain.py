"""The six steps of a backup chain, as plain functions over a ``DomainContext``.

    dump -> encrypt -> upload (S3) -> replicate (GCS) -> verify -> expire

Each step is idempotent: it reads what the earlier steps left (spool files, objects,
manifests), finishes its own work or notices it is already done, and otherwise raises
``StepOrderError`` naming the step that must run again. Steps never take secrets or data as
arguments: only the backup id, from which domain and source follow.

Manifests are read and written through ``regionvault.manifest_store``: signed with the
domain's current key, and trusted only once their MAC checks out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime

from regionvault import spool as sp
from regionvault.backup_stream import (
    COMPRESSION,
    STREAM_FORMAT,
    BackupWriter,
    StreamFacts,
    authenticate,
)
from regionvault.config import SourceConfig, StorePair
from regionvault.context import DomainContext
from regionvault.errors import (
    ChecksumMismatch,
    IntegrityError,
    ManifestForged,
    NotFound,
    ObjectLocked,
    SpoolFull,
    StepOrderError,
    TransientStoreError,
    WrongKeyError,
)
from regionvault.expiry import sweep_domain
from regionvault.keyring import Wrapping, new_data_key, zeroise
from regionvault.lease import UNOWNED, Ownership
from regionvault.manifest import (
    BackupRef,
    Manifest,
    Step,
    expiry_for,
    new_backup_id,
    parse_manifest,
)
from regionvault.manifest_store import (
    check_copy,
    data_key_context,
    keys_of,
    read_manifest,
    resolve,
    sign,
    stream_context,
    write_manifest,
)
from regionvault.object_lock import retain_until
from regionvault.progress import Progress, ProgressReport, no_progress
from regionvault.sources import open_source
from regionvault.stores.base import ObjectStore

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StepOutcome:
    """What a step did; small and safe to return through the result backend."""

    backup_id: str
    step: Step
    detail: str
    skipped: bool = False
    #: bytes the step moved (read from the source, written, sent, or read back)
    bytes: int = 0
    #: set by verify: when the verified backup's snapshot was taken (its data age)
    backup_created_at: datetime | None = None

    def as_dict(self) -> dict[str, object]:
        created = self.backup_created_at.isoformat() if self.backup_created_at else None
        return {"backup_id": self.backup_id, "step": self.step.value, "detail": self.detail,
                "skipped": self.skipped, "bytes": self.bytes, "backup_created_at": created}


def new_backup(ctx: DomainContext, source: str) -> str:
    """A fresh backup id for a configured source (raises for an unknown one)."""
    ctx.config.source(ctx.domain, source)
    return new_backup_id(ctx.domain, source, ctx.clock())


def _object_matches(store: ObjectStore, key: str, manifest: Manifest) -> bool:
    try:
        info = store.stat(key)
    except NotFound:
        return False
    return info.size == manifest.ciphertext_size and info.crc32c == manifest.ciphertext_crc32c


# --- 1. dump ---------------------------------------------------------------------------------


def dump(ctx: DomainContext, backup_id: str, progress: Progress = no_progress,
         owner: Ownership = UNOWNED) -> StepOutcome:
    """Stream a consistent snapshot of the source into the spool as the finished object.

    One pass (``BackupWriter``): the dump is compressed with zstd and sealed under the
    backup's own data key as it streams, and its digests are taken on the way, so the spool
    only ever holds the compressed ciphertext (about C bytes, never the P bytes of the dump)
    and never a readable byte of the source. ``dump.json`` (the wrapped data key, the digests,
    the row counts) is written last: its presence marks the dump complete.
    """
    ref, src = resolve(ctx, backup_id)
    spool = ctx.spool
    if spool.has_dump(backup_id) or spool.exists(backup_id, sp.MANIFEST_FILE):
        return StepOutcome(backup_id, Step.DUMP, "already dumped", skipped=True)
    # After verify the spool is empty again: the stores tell whether this backup went further.
    # S3 being down does not stop a dump: upload waits for it, and the snapshot is taken now.
    try:
        if read_manifest(ctx, ctx.primary(src), keys_of(ref, src)[1]) is not None:
            return StepOutcome(backup_id, Step.DUMP, "already uploaded", skipped=True)
    except TransientStoreError:
        pass
    started = ctx.clock()
    data_key = new_data_key()
    try:
        # wrapped by every key-encryption key of the domain (KMS and the local escrow)
        wrappings = ctx.keyring.wrap(data_key, data_key_context(ref))
        source = open_source(ref.domain, src)
        spool.drop_stale_partials(backup_id, owner.token)

        with spool.atomic_write(backup_id, sp.BACKUP_FILE, owner.token) as fh:
            writer = BackupWriter(fh, data_key, stream_context(ref, "backup-stream"))

            def write(chunk: bytes) -> None:
                writer.write(chunk)
                progress(ProgressReport(backup_id, Step.DUMP.value, writer.plaintext_size))

            info = source.dump(write)
            facts = writer.close()
    except SpoolFull as exc:
        raise exc.during(Step.DUMP.value) from None
    finally:
        zeroise(data_key)
    meta = DumpMeta(wrappings=wrappings, started_at=started, facts=facts,
                    row_counts=dict(info.row_counts), server_version=info.server_version,
                    tool_version=info.tool_version)
    spool.write_bytes(backup_id, sp.DUMP_META, meta.to_json(), owner.token)
    return StepOutcome(backup_id, Step.DUMP,
                       f"{facts.plaintext_size} bytes dumped, {facts.ciphertext_size} bytes "
                       "compressed and encrypted", bytes=facts.plaintext_size)


@dataclass(frozen=True)
class DumpMeta:
    """What ``dump`` leaves beside the object for ``encrypt`` (``dump.json``; no secret: the
    data key is only there wrapped by the domain's keys)."""

    wrappings: tuple[Wrapping, ...]
    started_at: datetime
    facts: StreamFacts
    row_counts: dict[str, int]
    server_version: str = ""
    tool_version: str = ""

    def to_json(self) -> bytes:
        return json.dumps({
            "wrappings": [w.model_dump() for w in self.wrappings],
            "started_at": self.started_at.isoformat(),
            "facts": dataclasses.asdict(self.facts), "row_counts": self.row_counts,
            "server_version": self.server_version, "tool_version": self.tool_version,
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DumpMeta:
        raw = json.loads(data)
        return cls(wrappings=tuple(Wrapping.model_validate(w) for w in raw["wrappings"]),
                   started_at=datetime.fromisoformat(raw["started_at"]),
                   facts=StreamFacts(**raw["facts"]),
                   row_counts={str(k): int(v) for k, v in raw["row_counts"].items()},
                   # absent from a dump.json written before the versions were recorded
                   server_version=str(raw.get("server_version", "")),
                   tool_version=str(raw.get("tool_version", "")))


# --- 2. encrypt ------------------------------------------------------------------------------


def encrypt(ctx: DomainContext, backup_id: str, progress: Progress = no_progress,
            owner: Ownership = UNOWNED) -> StepOutcome:
    """Seal the backup: prove its encryption, then write the signed manifest.

    ``dump`` already compressed and encrypted the stream in its single pass; this step checks
    that what will leave the domain is exactly that. It unwraps the data key through the
    domain's keyring (the wrapped key the manifest will carry really opens the object),
    authenticates every chunk of the spool's object under it, and compares the ciphertext's
    size, SHA-256 and CRC32C with what ``dump`` measured. Only then is the manifest built
    and signed. Work: one read of C bytes and AES-GCM over them; nothing is written twice.

    A spool object that fails these checks (a torn or corrupted disk) is removed, and the
    step asks for ``dump`` again: a new snapshot, rather than uploading what cannot restore.
    """
    ref, src = resolve(ctx, backup_id)
    spool = ctx.spool
    if spool.exists(backup_id, sp.BACKUP_FILE) and spool.exists(backup_id, sp.MANIFEST_FILE):
        spool.remove_fenced(backup_id, sp.DUMP_META, owner.token)
        return StepOutcome(backup_id, Step.ENCRYPT, "already encrypted", skipped=True)
    if not spool.has_dump(backup_id):
        okey, mkey = keys_of(ref, src)
        if read_manifest(ctx, ctx.primary(src), mkey) is not None:
            return StepOutcome(backup_id, Step.ENCRYPT, "already uploaded", skipped=True)
        raise StepOrderError(
            f"backup {backup_id} has no complete dump in the spool of domain "
            f"{ref.domain.value!r}; run step 'dump' again",
            rerun_step=Step.DUMP.value,
        )
    try:
        meta = DumpMeta.from_json(spool.read_bytes(backup_id, sp.DUMP_META))
    except (ValueError, KeyError, TypeError) as exc:  # not JSON, or another version's
        raise _dump_again(ctx, ref, owner, f"its dump.json cannot be read ({exc!r})") from None
    try:
        # every wrapping must open to the same key: the escrow is proven before it is relied on
        data_key = ctx.keyring.open_all(meta.wrappings, data_key_context(ref))
    except WrongKeyError as exc:  # e.g. its key was retired while the dump waited
        raise _dump_again(ctx, ref, owner, f"its data key cannot be opened ({exc})") from None
    facts = meta.facts
    try:
        with spool.path(backup_id, sp.BACKUP_FILE).open("rb") as fh:
            seen = authenticate(
                fh, data_key, stream_context(ref, "backup-stream"),
                lambda done: progress(ProgressReport(backup_id, Step.ENCRYPT.value, done,
                                                     facts.ciphertext_size)))
        if (seen.size, seen.sha256, seen.crc32c) != (
                facts.ciphertext_size, facts.ciphertext_sha256, facts.ciphertext_crc32c):
            raise IntegrityError(
                f"it has {seen.size} bytes with SHA-256 {seen.sha256[:16]}..., the dump wrote "
                f"{facts.ciphertext_size} bytes with SHA-256 {facts.ciphertext_sha256[:16]}...")
    except IntegrityError as exc:
        raise _dump_again(ctx, ref, owner, f"it failed its checks ({exc})") from None
    finally:
        zeroise(data_key)

    now = ctx.clock()
    dcfg = ctx.dcfg
    placement = ctx.placement(src)
    okey, _ = keys_of(ref, src)
    manifest = Manifest(
        backup_id=backup_id, domain=ref.domain, source=ref.source, source_kind=src.kind,
        data_class=src.data_class, created_at=meta.started_at,
        expires_at=expiry_for(meta.started_at, ctx.config.retention.period_for(src.data_class)),
        wrappings=meta.wrappings, stream_format=STREAM_FORMAT, compression=COMPRESSION,
        plaintext_size=facts.plaintext_size, plaintext_sha256=facts.plaintext_sha256,
        ciphertext_size=facts.ciphertext_size, ciphertext_sha256=facts.ciphertext_sha256,
        ciphertext_crc32c=facts.ciphertext_crc32c, object_key=okey,
        row_counts=meta.row_counts, s3_bucket=dcfg.s3_bucket, gcs_bucket=dcfg.gcs_bucket,
        swift_container=dcfg.swift.container if dcfg.swift is not None else None,
        primary_store=placement.primary, replica_store=placement.replica,
        server_version=meta.server_version, tool_version=meta.tool_version,
    ).with_step(Step.DUMP, meta.started_at, f"{facts.plaintext_size} bytes").with_step(
        Step.ENCRYPT, now, f"{facts.ciphertext_size} bytes")
    spool.write_bytes(backup_id, sp.MANIFEST_FILE, sign(ctx, manifest), owner.token)
    spool.remove_fenced(backup_id, sp.DUMP_META, owner.token)
    return StepOutcome(backup_id, Step.ENCRYPT,
                       f"{facts.plaintext_size} bytes -> {facts.ciphertext_size} bytes encrypted "
                       "and authenticated", bytes=facts.ciphertext_size)


def _dump_again(ctx: DomainContext, ref: BackupRef, owner: Ownership,
                why: str) -> StepOrderError:
    """Remove a dump that cannot be sealed and ask for ``dump`` again: a new snapshot, rather
    than uploading what cannot restore."""
    ctx.spool.remove_fenced(ref.backup_id, sp.DUMP_META, owner.token)
    ctx.spool.remove_fenced(ref.backup_id, sp.BACKUP_FILE, owner.token)
    return StepOrderError(
        f"backup {ref.backup_id}: the encrypted dump in the spool of domain "
        f"{ref.domain.value!r} was removed, {why}; run step 'dump' again",
        rerun_step=Step.DUMP.value)


def _spool_manifest(ctx: DomainContext, backup_id: str) -> Manifest | None:
    if not ctx.spool.exists(backup_id, sp.MANIFEST_FILE):
        return None
    # The spool is shared by the domain's workers: its draft manifest is checked like a stored
    # one, so upload never signs for the stores what someone else wrote into the spool.
    manifest = parse_manifest(ctx, ctx.spool.read_bytes(backup_id, sp.MANIFEST_FILE),
                              f"spool manifest of backup {backup_id}")
    if manifest.backup_id != backup_id:
        raise ManifestForged(
            f"the spool manifest of backup {backup_id} describes backup {manifest.backup_id}: "
            "it was moved outside regionvault; remove the spool directory and run step "
            "'dump' again")
    return manifest


def _earlier_step_missing(ctx: DomainContext, ref: BackupRef, wanted: str) -> StepOrderError:
    rerun = Step.ENCRYPT if ctx.spool.has_dump(ref.backup_id) else Step.DUMP
    return StepOrderError(
        f"backup {ref.backup_id} cannot {wanted}: its encrypted file is not in the spool of "
        f"domain {ref.domain.value!r}; run step '{rerun.value}' again",
        rerun_step=rerun.value,
    )


# --- 3. upload -------------------------------------------------------------------------------


def upload(ctx: DomainContext, backup_id: str, progress: Progress = no_progress,
           owner: Ownership = UNOWNED) -> StepOutcome:
    """Upload the encrypted file and its manifest to the source's primary store (S3, or
    Cloud Files for a source placed there)."""
    ref, src = resolve(ctx, backup_id)
    okey, mkey = keys_of(ref, src)
    name = ctx.placement(src).primary
    primary = ctx.store(name)
    remote = read_manifest(ctx, primary, mkey)
    if (remote is not None and Step.UPLOAD in remote.steps
            and _object_matches(primary, okey, remote)):
        return StepOutcome(backup_id, Step.UPLOAD, f"already in {ctx.url(name, okey)}",
                           skipped=True)
    local = _spool_manifest(ctx, backup_id)
    if local is None or not ctx.spool.exists(backup_id, sp.BACKUP_FILE):
        raise _earlier_step_missing(ctx, ref, "be uploaded")
    ctx.ensure_resident(name)
    if not _object_matches(primary, okey, local):
        # Only the owner of the backup's lease gets here, so an open multipart upload under
        # this key is one a dead owner left: put_file resumes it from the parts it holds.
        # Nothing here aborts uploads: a live duplicate never reaches this line.
        owner.confirm()
        primary.put_file(okey, str(ctx.spool.path(backup_id, sp.BACKUP_FILE)),
                         crc32c=local.ciphertext_crc32c, retain_until=_lock_until(ctx, local))
    progress(ProgressReport(backup_id, Step.UPLOAD.value, local.ciphertext_size,
                            local.ciphertext_size, name))
    uploaded = sign(ctx, local.with_step(Step.UPLOAD, ctx.clock(), ctx.url(name, okey)))
    owner.confirm()
    primary.put_bytes(mkey, uploaded)
    ctx.spool.write_bytes(backup_id, sp.MANIFEST_FILE, uploaded, owner.token)
    return StepOutcome(backup_id, Step.UPLOAD, ctx.url(name, okey),
                       bytes=local.ciphertext_size)


# --- 4. replicate ----------------------------------------------------------------------------


def _uploaded_manifest(ctx: DomainContext, ref: BackupRef, src: SourceConfig, mkey: str,
                       wanted: str) -> Manifest:
    name = ctx.placement(src).primary
    manifest = read_manifest(ctx, ctx.store(name), mkey)
    if manifest is None or Step.UPLOAD not in manifest.steps:
        raise StepOrderError(
            f"backup {ref.backup_id} cannot {wanted}: it has no manifest in "
            f"{ctx.url(name)}; run step 'upload' again",
            rerun_step=Step.UPLOAD.value,
        )
    return manifest


def replicate(ctx: DomainContext, backup_id: str,
              progress: Progress = no_progress, owner: Ownership = UNOWNED) -> StepOutcome:
    """Copy the object into the source's replica store (GCS), then the manifest.

    The bytes come from the spool when it still holds the object (no third transfer of C),
    otherwise they stream from the primary (no local copy); both are checked against the
    manifest."""
    ref, src = resolve(ctx, backup_id)
    okey, mkey = keys_of(ref, src)
    placement = ctx.placement(src)
    primary, replica = ctx.store(placement.primary), ctx.store(placement.replica)
    where = ctx.url(placement.replica, okey)
    copied = read_manifest(ctx, replica, mkey)
    if (copied is not None and Step.REPLICATE in copied.steps
            and _object_matches(replica, okey, copied)):
        return StepOutcome(backup_id, Step.REPLICATE, f"already in {where}", skipped=True)
    manifest = _uploaded_manifest(ctx, ref, src, mkey, "be replicated")
    if not _object_matches(primary, okey, manifest):
        raise StepOrderError(
            f"backup {backup_id}: the {placement.primary} copy "
            f"{ctx.url(placement.primary, okey)} does not match its manifest; run step "
            "'upload' again",
            rerun_step=Step.UPLOAD.value,
        )
    ctx.ensure_resident(placement.replica)
    source = "already there"
    if not _object_matches(replica, okey, manifest):
        source = _send_replica(ctx, backup_id, okey, manifest, placement)
    progress(ProgressReport(backup_id, Step.REPLICATE.value, manifest.ciphertext_size,
                            manifest.ciphertext_size, placement.replica))
    replicated = sign(ctx, manifest.with_step(Step.REPLICATE, ctx.clock(), where))
    owner.confirm()
    replica.put_bytes(mkey, replicated)
    primary.put_bytes(mkey, replicated)
    return StepOutcome(backup_id, Step.REPLICATE, f"{where} (from {source})",
                       bytes=manifest.ciphertext_size)


def _lock_until(ctx: DomainContext, manifest: Manifest) -> datetime | None:
    """Until when the domain locks the backup's objects (None: no object lock): the moment the
    expiry sweep is due to remove it, never later, so a lock never keeps a pii backup past
    29 days and erasure (which destroys keys, not bytes) works on locked objects."""
    if ctx.dcfg.object_lock is None:
        return None
    return retain_until(manifest.created_at, manifest.data_class, ctx.config.retention)


def _send_replica(ctx: DomainContext, backup_id: str, okey: str, manifest: Manifest,
                  placement: StorePair) -> str:
    """Upload the object to the replica from the spool's copy when it still holds it, else
    stream it from the primary; return which ("spool" or the primary's name).

    Either way the upload is checked against the manifest's CRC32C and nothing is committed
    if the bytes differ, so a spool copy that went bad on disk costs a second try from the
    primary, never a wrong replica."""
    replica = ctx.store(placement.replica)
    local = ctx.spool.path(backup_id, sp.BACKUP_FILE)
    if local.is_file() and local.stat().st_size == manifest.ciphertext_size:
        try:
            replica.put_file(okey, str(local), crc32c=manifest.ciphertext_crc32c,
                             retain_until=_lock_until(ctx, manifest))
            return "spool"
        except ChecksumMismatch as exc:
            log.warning("backup %s: the spool copy did not match its manifest (%s); "
                        "replicating from %s instead", backup_id, exc, placement.primary)
        except FileNotFoundError:
            pass  # the spool went away under us (a lost disk): the primary holds the same bytes
    body = ctx.store(placement.primary).open_read(okey)
    try:
        replica.put_stream(okey, body, manifest.ciphertext_size,
                           crc32c=manifest.ciphertext_crc32c,
                           retain_until=_lock_until(ctx, manifest))
    finally:
        body.close()
    return placement.primary


# --- 5. verify -------------------------------------------------------------------------------


def _failed_verification(backup_id: str, exc: IntegrityError) -> IntegrityError:
    """The same kind of error, led by the backup and "failed verification" (the words the
    verify metrics count by store)."""
    return type(exc)(f"backup {backup_id} failed verification: {exc}")


def verify(ctx: DomainContext, backup_id: str, *, deep: bool = False,
           owner: Ownership = UNOWNED) -> StepOutcome:
    """Check both manifests' MACs and both copies against the manifest; only then mark the
    backup verified."""
    ref, src = resolve(ctx, backup_id)
    okey, mkey = keys_of(ref, src)
    placement = ctx.placement(src)
    primary, replica = ctx.store(placement.primary), ctx.store(placement.replica)
    try:
        manifest = _uploaded_manifest(ctx, ref, src, mkey, "be verified")
        copied = read_manifest(ctx, replica, mkey)
    except IntegrityError as exc:  # forged, legacy or malformed: never marked verified
        raise _failed_verification(backup_id, exc) from None
    if Step.REPLICATE not in manifest.steps:
        raise StepOrderError(
            f"backup {backup_id} cannot be verified: it has not been replicated to "
            f"{placement.replica}; run step 'replicate' again",
            rerun_step=Step.REPLICATE.value,
        )
    problems = check_copy(ctx, placement.primary, okey, manifest, deep=deep)
    problems += check_copy(ctx, placement.replica, okey, manifest, deep=deep)
    if copied is None or copied.ciphertext_sha256 != manifest.ciphertext_sha256:
        problems.append(f"the {placement.replica} manifest {ctx.url(placement.replica, mkey)} "
                        "is missing or differs")
    if problems:
        raise IntegrityError(f"backup {backup_id} failed verification: " + "; ".join(problems))
    how = "deep (SHA-256 of both copies)" if deep else "store checksums of both copies"
    verified = sign(ctx, manifest.with_step(Step.VERIFY, ctx.clock(), how))
    owner.confirm()
    replica.put_bytes(mkey, verified)
    primary.put_bytes(mkey, verified)
    ctx.spool.clean(backup_id)
    return StepOutcome(backup_id, Step.VERIFY, how,
                       bytes=2 * manifest.ciphertext_size if deep else 0,
                       backup_created_at=manifest.created_at)


# --- 6. expire -------------------------------------------------------------------------------


def expire(ctx: DomainContext, backup_id: str, owner: Ownership = UNOWNED) -> StepOutcome:
    """Expire the source's backups in every store of the domain, then record the step on
    this backup.

    The same sweep as the domain's own expiry loop (``regionvault.expiry``, on beat), limited
    to this source's prefixes: expiry never depends on this step, the step only hurries it."""
    ref, src = resolve(ctx, backup_id)
    placement = ctx.placement(src)
    now = ctx.clock()
    report = sweep_domain(ctx, now, source=ref.source)
    # counted in the primary copy (the replica's counts say the same of the same backups);
    # in the replica when the primary could not be listed
    first = report.stores[placement.primary]
    counted = first if first.listed else report.stores[placement.replica]
    detail = f"removed {counted.removed_total}, kept {counted.kept}"
    if not report.complete:  # a store that is down is the loop's to catch up on
        detail += f" ({report.summary()})"
    _, mkey = keys_of(ref, src)
    for name in (placement.replica, placement.primary):
        store = ctx.store(name)
        manifest = read_manifest(ctx, store, mkey)
        if manifest is not None:
            owner.confirm()
            write_manifest(ctx, store, mkey, manifest.with_step(Step.EXPIRE, now, detail))
    return StepOutcome(backup_id, Step.EXPIRE, detail)


# --- discard (after a cancel) ----------------------------------------------------------------


def discard(ctx: DomainContext, backup_id: str) -> StepOutcome:
    """Remove everything an unfinished backup left: open multipart uploads, objects and
    manifests in both stores, and its spool directory. A verified backup is never discarded
    here (expiry removes backups)."""
    ref, src = resolve(ctx, backup_id)
    okey, mkey = keys_of(ref, src)
    stores = ctx.stores()
    for store in stores:
        manifest = read_manifest(ctx, store, mkey)
        if manifest is not None and manifest.verified:
            raise StepOrderError(
                f"backup {backup_id} is already verified: it is not discarded (expiry removes "
                "verified backups)", rerun_step="")
    aborted = sum(store.abort_incomplete_uploads(okey) for store in stores)
    locked = []
    for store in stores:
        try:
            store.delete(okey)
        except ObjectLocked as exc:  # its lock ends when expiry is due: expiry removes it
            locked.append(str(exc))
        store.delete(mkey)
    spool_files = len(list(ctx.spool.dir_for(backup_id).rglob("*")))
    ctx.spool.clean(backup_id)
    kept = f"; kept until their lock ends: {'; '.join(locked)}" if locked else ""
    return StepOutcome(backup_id, Step.EXPIRE,
                       f"discarded: {aborted} open uploads aborted, {spool_files} spool files "
                       f"removed, objects and manifests deleted{kept}")
