"""The S3 object store: one bucket in one AWS region, spoken to with boto3.

Integrity: every write carries its CRC32C. The bytes are checksummed here as they are read
(one pass, one part in memory at a time) and the upload is abandoned before it is committed if
they do not match; S3 itself checks the ``x-amz-checksum-crc32c`` headers; and after the write
the object's checksum as S3 reports it is compared once more. Whatever fails, nothing is left
under the key; wrong bytes also leave no multipart upload open.

Retries: one attempt per request (botocore's own retries are off). Celery's step retry, with
backoff, is the one retry layer; it is cheap because a retried multipart upload resumes from the
parts S3 already holds (see ``_put_multipart``) instead of starting again at part 1.

Locks (S3 Object Lock, with a store built with ``lock_mode``): a write given a ``retain_until``
asks for the lock in the request that creates the object (PutObject, CreateMultipartUpload);
the lock S3 then reports is checked, and one it does not report (moto ignores the lock of a
multipart upload; so may S3-compatible stores) is set with PutObjectRetention and checked
again. A delete removes every version of the key (a delete marker would leave the bytes), and
a version S3 refuses to delete for its lock raises ``ObjectLocked``. No request ever bypasses
governance retention.

Vendor errors (botocore, boto3) are translated in ``translate_error`` and nowhere else.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    FlexibleChecksumError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from regionvault.checksums import crc32c_of_bytes
from regionvault.errors import (
    ChecksumMismatch,
    ConfigError,
    NotFound,
    ObjectLocked,
    PermanentStoreError,
    RegionvaultError,
    ResidencyError,
    StoreError,
    TransientStoreError,
)
from regionvault.stores.base import IncompleteUpload, LockSettings, ObjectInfo
from regionvault.stores.streams import (
    CheckedReader,
    ResumeChooser,
    TranslatingReader,
    check_lock_mode,
    connection_failure,
    delete_every_version,
    delete_noncurrent,
    lock_date,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: S3 refuses parts below 5 MiB (except the last) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "503",
    }
)
_CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ReadTimeoutError,
    ConnectTimeoutError,
    ResponseStreamingError,
    IncompleteReadError,
)
_VENDOR_ERRORS = (ClientError, BotoCoreError)


def make_s3_client(
    region: str,
    endpoint_url: str | None = None,
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Any:
    """A boto3 S3 client; credentials come from the usual boto3 environment (never from here)."""
    config = Config(
        region_name=region,
        signature_version="s3v4",
        # One attempt: a transient error goes straight to the caller, whose Celery retry (with
        # backoff) is the one retry layer; stacked retries multiply into minutes of waiting.
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # S3-compatible endpoints (moto, MinIO) rarely resolve virtual-host bucket names.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    # A session of its own: boto3's default session is not safe to share between threads.
    session = boto3.session.Session()
    return session.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


def _utc(moment: datetime | None) -> datetime | None:
    # botocore parses timestamps into aware datetimes in UTC or local time; report UTC.
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_latest(version: Mapping[str, Any]) -> bool:
    """Whether a ListObjectVersions entry is the key's current version."""
    return bool(version.get("IsLatest"))


def translate_error(exc: BaseException, where: str, action: str) -> StoreError:
    """The project's error for a botocore/boto3 exception raised while doing ``action``."""
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(exc.response.get("Error", {}).get("Message", "")) or code
        if code in _NOT_FOUND_CODES or status == 404:
            what = "the bucket" if code == "NoSuchBucket" else "it"
            return NotFound(f"cannot {action} {where}: {what} does not exist ({code})")
        if code in _TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientStoreError(
                f"cannot {action} {where}: S3 is throttling or unavailable ({code}: {message}); "
                "retry later"
            )
        return PermanentStoreError(
            f"cannot {action} {where}: S3 refused ({code}: {message}); "
            "check the bucket, the key and the permissions"
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return TransientStoreError(
            f"cannot {action} {where}: the connection to S3 failed ({connection_failure(exc)}); "
            "retry later"
        )
    if isinstance(exc, FlexibleChecksumError):
        return ChecksumMismatch(f"cannot {action} {where}: the bytes S3 sent fail their checksum")
    return PermanentStoreError(
        f"cannot {action} {where}: {type(exc).__name__} ({exc}); "
        "check the S3 configuration and credentials"
    )


class S3Store:
    """An ``ObjectStore`` on one S3 bucket (see ``regionvault.stores.base`` for the contract)."""

    name = "s3"

    def __init__(
        self,
        bucket: str,
        region: str,
        *,
        endpoint_url: str | None = None,
        part_size: int = 8 * MiB,
        max_bytes_per_second: int | None = None,
        upload_concurrency: int = 4,
        client: Any = None,
        lock_mode: str | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ConfigError(
                f"S3 part size {part_size} for bucket '{bucket}' is below the 5 MiB S3 requires; "
                "configure a larger one"
            )
        self.bucket = bucket
        self.region = region
        self.part_size = part_size
        #: upload pacing, so that a large backup does not saturate the link it shares
        self.max_bytes_per_second = max_bytes_per_second
        #: parts of one upload sent at once (each holds one part in memory)
        self.upload_concurrency = max(1, upload_concurrency)
        #: "governance" or "compliance": the Object Lock mode of writes given a retain_until
        self.lock_mode = check_lock_mode(lock_mode, bucket)
        self._client = client if client is not None else make_s3_client(region, endpoint_url)

    # -- naming and error translation -------------------------------------------------------

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}" if key is None else f"s3://{self.bucket}/{key}"

    @contextmanager
    def _translated(self, action: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except RegionvaultError:
            raise
        except _VENDOR_ERRORS as exc:
            raise translate_error(exc, self._where(key), action) from exc

    # -- the contract -----------------------------------------------------------------------

    def check_residency(self, allowed: frozenset[str]) -> None:
        with self._translated("find the region of"):
            response = self._client.get_bucket_location(Bucket=self.bucket)
        # S3 reports us-east-1 as no constraint at all, and eu-west-1 by its legacy name "EU".
        region = response.get("LocationConstraint") or "us-east-1"
        region = "eu-west-1" if region == "EU" else region.lower()
        permitted = {name.lower() for name in allowed}
        if region not in permitted:
            raise ResidencyError(
                f"bucket {self._where()} is in {region}, outside the allowed regions "
                f"({', '.join(sorted(permitted)) or 'none'}); use a bucket in one of those"
            )

    def put_file(self, key: str, path: str, *, crc32c: str,
                 retain_until: datetime | None = None) -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, os.fstat(f.fileno()).st_size, crc32c=crc32c,
                                   retain_until=retain_until)

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str,
                   retain_until: datetime | None = None) -> ObjectInfo:
        until = lock_date(self.lock_mode, retain_until, datetime.now(UTC))
        lock = self._lock_args(until)
        reader = CheckedReader(stream, size, crc32c, self._where(key))
        if size < self.part_size:
            self._put_single(key, reader, crc32c, lock)
        else:
            self._put_multipart(key, reader, size, crc32c, lock)
        info = self._verify_stored(key, size, crc32c)
        return info if until is None else self._verify_locked(key, info, until)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        with self._translated("read", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            data: bytes = response["Body"].read()
        return data

    def open_read(self, key: str) -> BinaryIO:
        with self._translated("open", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        return io.BufferedReader(TranslatingReader(
            response["Body"], self._where(key), _VENDOR_ERRORS, translate_error), 1 * MiB)

    def stat(self, key: str) -> ObjectInfo:
        with self._translated("stat", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        lock_mode = response.get("ObjectLockMode")
        locked_until = _utc(response.get("ObjectLockRetainUntilDate")) if lock_mode else None
        crc = response.get("ChecksumCRC32C")
        # A composite checksum ("<crc>-<parts>") is a checksum of part checksums, not of the
        # object's bytes, so it cannot be compared with anything we know.
        if crc is not None and ("-" in crc or response.get("ChecksumType") == "COMPOSITE"):
            crc = None
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            crc32c=crc,
            modified=_utc(response.get("LastModified")),
            retain_until=locked_until,
        )

    def list_keys(self, prefix: str) -> Iterator[str]:
        for info in self.list_info(prefix):
            yield info.key

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        # S3 lists keys in UTF-8 byte order, which is Python's str order. The listing names an
        # object's checksum algorithm but not its value, so crc32c stays None here.
        with self._translated("list", f"{prefix}*"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"],
                        size=int(item["Size"]),
                        crc32c=None,
                        modified=_utc(item.get("LastModified")),
                    )

    def delete(self, key: str) -> None:
        """Delete every version of ``key`` (and its delete markers), the current one last.

        In an unversioned bucket the one version is listed as "null" and deleted so. A version
        refused for its lock stops the delete before the current version (so the key stays
        listed for the next attempt) and raises ``ObjectLocked``."""
        # (the listing gives the latest of a key first: the helper puts it last)
        delete_every_version(
            self._versions_of(key), is_current=_is_latest,
            delete=lambda version: self._delete_version(key, str(version["VersionId"])),
            where=self._where(key), lock_note="nothing bypasses the lock")

    def delete_noncurrent_versions(self, key: str) -> int:
        """Delete every version (and delete marker) of ``key`` but the current one."""
        return delete_noncurrent(
            self._versions_of(key), is_current=_is_latest,
            delete=lambda version: self._delete_version(key, str(version["VersionId"])),
            what=f"the older versions of {self._where(key)}")

    def lock_settings(self) -> LockSettings:
        with self._translated("read the versioning of"):
            versioning = self._client.get_bucket_versioning(Bucket=self.bucket)
        action = "read the object lock configuration of"
        try:
            config = self._client.get_object_lock_configuration(
                Bucket=self.bucket)["ObjectLockConfiguration"]
        except ClientError as exc:
            # what S3 answers for a bucket Object Lock was never enabled on
            if _error_code(exc) != "ObjectLockConfigurationNotFoundError":
                raise translate_error(exc, self._where(), action) from exc
            config = {}
        except BotoCoreError as exc:
            raise translate_error(exc, self._where(), action) from exc
        rule = config.get("Rule", {}).get("DefaultRetention")
        default = None
        if rule:
            length = f"{rule['Days']} days" if rule.get("Days") else f"{rule.get('Years')} years"
            default = f"{rule.get('Mode')} {length}"
        return LockSettings(store=self.name, bucket=self.bucket,
                            versioned=versioning.get("Status") in ("Enabled", "Suspended"),
                            lock_enabled=config.get("ObjectLockEnabled") == "Enabled",
                            default_retention=default)

    def incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        return [
            IncompleteUpload(
                key=upload["Key"],
                upload_id=upload["UploadId"],
                initiated=_utc(upload.get("Initiated")),
            )
            for upload in self._list_uploads(prefix)
        ]

    def abort_upload(self, upload: IncompleteUpload) -> bool:
        return self._abort(upload.key, upload.upload_id)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort every open multipart upload under ``prefix``.

        Only for uploads nobody is writing: a live upload under the same prefix is aborted too.
        A bucket lifecycle rule (AbortIncompleteMultipartUpload) is the backstop.
        """
        return sum(self.abort_upload(upload) for upload in self.incomplete_uploads(prefix))

    # -- writing ----------------------------------------------------------------------------

    def _lock_args(self, until: datetime | None) -> dict[str, Any]:
        """The Object Lock parameters of the request that creates an object ({} for none)."""
        if until is None or self.lock_mode is None:
            return {}
        return {"ObjectLockMode": self.lock_mode.upper(), "ObjectLockRetainUntilDate": until}

    def _put_single(self, key: str, reader: CheckedReader, crc32c: str,
                    lock: dict[str, Any]) -> None:
        data = reader.read(reader.remaining)  # below one part: bounded; raises if wrong
        with self._translated("upload", key):
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ChecksumAlgorithm="CRC32C",
                ChecksumCRC32C=crc32c,
                **lock,
            )

    def _part_size_for(self, size: int) -> int:
        # Past 10,000 parts S3 refuses the upload: grow the part (in whole MiB) instead.
        needed = -(-size // MAX_PARTS)
        return max(self.part_size, -(-needed // MiB) * MiB)

    def _put_multipart(self, key: str, reader: CheckedReader, size: int, crc32c: str,
                       lock: dict[str, Any]) -> None:
        """Upload in parts, resuming an open upload of ``key`` that holds the first parts.

        Every part is read (the reader checks the whole object's CRC32C at the end); a part an
        open upload already holds is not sent again, and from the first part it lacks (or holds
        with other bytes) every part is sent. Resuming another writer's upload of different
        bytes would corrupt the object, which is why the caller must own the key (the contract).

        Wrong bytes (``ChecksumMismatch``) or a refused request abort the upload: a resume
        could not help. Anything else (a transient error, a crash) leaves it open for the next
        attempt to resume; the reconciler or the bucket's lifecycle rule clears it if none does.
        """
        part_size = self._part_size_for(size)
        listed = self._open_uploads_of(key)
        open_parts = {u: held or {} for u, held in listed.items()}
        # An open upload without part 1 was interrupted before its first part landed, or lost
        # part 1 while later parts went out beside it: resumable from part 1 (every part is
        # sent again), rather than aborted for a new one.
        chooser = ResumeChooser({u: partial(_holds, held) for u, held in open_parts.items()},
                                empty={u for u, held in listed.items()
                                       if held is not None and 1 not in held})
        upload_id: str | None = None
        parts: list[dict[str, Any] | Future[dict[str, Any]]] = []
        started, sent, number = time.monotonic(), 0, 0
        # Parts go out a few at a time (one connection each), as the transfer manager sends
        # them; the parts are still read, checked and numbered here, in order, and at most
        # ``upload_concurrency`` of them are in memory at once.
        pool = ThreadPoolExecutor(max_workers=self.upload_concurrency,
                                  thread_name_prefix="s3-part")
        in_flight: set[Future[dict[str, Any]]] = set()
        try:
            try:
                while reader.remaining:
                    number += 1
                    # The read reaching the end raises ChecksumMismatch if the bytes are wrong,
                    # so a wrong upload is never completed.
                    data = reader.read(part_size)
                    part_crc = crc32c_of_bytes(data)
                    if chooser.already_stored(number, data, part_crc):
                        parts.append({"PartNumber": number, "ChecksumCRC32C": part_crc})
                        continue
                    if upload_id is None:
                        upload_id = self._start_or_resume(key, chooser, lock)
                    while len(in_flight) >= self.upload_concurrency:
                        in_flight = _settle(in_flight)
                    sending = pool.submit(self._upload_part, key, upload_id, number, data,
                                          part_crc)
                    parts.append(sending)
                    in_flight.add(sending)
                    sent += len(data)
                    self._pace(started, sent)
                while in_flight:
                    in_flight = _settle(in_flight)
            finally:
                # A failure leaves no part in flight behind it: an abort must come after them.
                pool.shutdown(wait=True, cancel_futures=True)
            completed = [p if isinstance(p, dict) else p.result() for p in parts]
            if upload_id is None:  # the open upload held every part: only completing was left
                chooser.finish()
                upload_id = self._start_or_resume(key, chooser, lock)
            # The ETags of reused parts are those the resumed upload holds (with SSE-KMS they
            # differ between uploads of the same bytes).
            for part in completed[: chooser.reused]:
                part["ETag"] = open_parts[upload_id][part["PartNumber"]]["ETag"]
            with self._translated("complete the multipart upload of", key):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    ChecksumCRC32C=crc32c,
                    ChecksumType="FULL_OBJECT",
                    MpuObjectSize=size,
                    MultipartUpload={"Parts": completed},
                )
        except (ChecksumMismatch, PermanentStoreError):
            # Before the choice was made, the open uploads hold the first parts of these wrong
            # bytes: abort them too, since the contract leaves no upload behind wrong bytes.
            for stale in [upload_id] if upload_id is not None else list(open_parts):
                self._abort_quietly(key, stale)
            raise
        except BaseException:
            if upload_id is not None:
                stored = sum(1 for p in parts if isinstance(p, dict) or (
                    p.done() and not p.cancelled() and p.exception() is None))
                log.info("left the multipart upload of %s open with %d parts stored, for the "
                         "next attempt to resume", self._where(key), stored)
            raise
        if chooser.resumed is not None:
            log.info("resumed the multipart upload of %s: reused %d of %d parts, sent %d",
                     self._where(key), chooser.reused, number, number - chooser.reused)

    def _open_uploads_of(self, key: str) -> dict[str, dict[int, dict[str, Any]] | None]:
        """The open multipart uploads of exactly ``key``, each with the parts S3 lists for it
        (None for an upload not started our way)."""
        found: dict[str, dict[int, dict[str, Any]] | None] = {}
        for upload in self._list_uploads(key):
            if upload["Key"] != key:  # the listing is by prefix: "a.bin" also lists "a.bin.1"
                continue
            # One started another way (no full-object CRC32C) cannot be completed the way we
            # complete, so none of its parts can be reused: it is only there to be aborted.
            found[upload["UploadId"]] = (self._list_parts(key, upload["UploadId"])
                                         if _ours(upload) else None)
        return found

    def _list_uploads(self, prefix: str) -> list[dict[str, Any]]:
        paginator = self._client.get_paginator("list_multipart_uploads")
        with self._translated("list the multipart uploads under", f"{prefix}*"):
            return [
                upload
                for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for upload in page.get("Uploads", [])
            ]

    def _list_parts(self, key: str, upload_id: str) -> dict[int, dict[str, Any]]:
        paginator = self._client.get_paginator("list_parts")
        try:
            with self._translated("list the stored parts of", key):
                return {
                    int(part["PartNumber"]): part
                    for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
                    for part in page.get("Parts", [])
                }
        except NotFound:  # completed or aborted since it was listed: nothing to reuse
            return {}

    def _start_or_resume(self, key: str, chooser: ResumeChooser, lock: dict[str, Any]) -> str:
        """The upload id to send the remaining parts to, once the chooser has decided.

        A resumed upload keeps the lock it was started with (none, if it was started before the
        lock was configured): the lock is checked, and set if missing, once it is complete."""
        for stale in chooser.superseded:
            self._abort_quietly(key, stale)
        if chooser.resumed is not None:
            return chooser.resumed
        with self._translated("start a multipart upload of", key):
            upload_id: str = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ChecksumAlgorithm="CRC32C",
                ChecksumType="FULL_OBJECT",
                **lock,
            )["UploadId"]
        return upload_id

    def _pace(self, started: float, sent: int) -> None:
        # Counted as parts are handed to the senders: at most ``upload_concurrency`` parts run
        # ahead of the pace.
        if self.max_bytes_per_second:
            ahead = sent / self.max_bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytes, part_crc: str
    ) -> dict[str, Any]:
        # No retry loop here: a failed part fails the step, and Celery's retry resumes the
        # upload from this part (see _put_multipart).
        with self._translated(f"upload part {number} of", key):
            response = self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumAlgorithm="CRC32C",
                ChecksumCRC32C=part_crc,
            )
        reported = response.get("ChecksumCRC32C")
        if reported is not None and reported != part_crc:
            raise ChecksumMismatch(
                f"refusing to store {self._where(key)}: S3 received part {number} with CRC32C "
                f"{reported}, not {part_crc}"
            )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumCRC32C": part_crc}

    def _abort(self, key: str, upload_id: str) -> bool:
        """Abort one multipart upload; False if it was already gone."""
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _error_code(exc) == "NoSuchUpload":
                return False
            raise translate_error(exc, self._where(key), "abort the upload of") from exc
        except BotoCoreError as exc:
            raise translate_error(exc, self._where(key), "abort the upload of") from exc
        return True

    def _abort_quietly(self, key: str, upload_id: str) -> None:
        # Called while another error propagates, or for an upload nobody will complete: the
        # reconciler (or the bucket's lifecycle rule) clears what this leaves.
        try:
            self._abort(key, upload_id)
        except StoreError as exc:
            log.warning("could not abort the multipart upload of %s: %s", self._where(key), exc)

    def _verify_stored(self, key: str, size: int, crc32c: str) -> ObjectInfo:
        info = self.stat(key)
        # A store that reports no CRC32C (some S3-compatible ones) was still checked client
        # side; a different one means S3 holds other bytes than we sent.
        if info.size != size or (info.crc32c is not None and info.crc32c != crc32c):
            reported = (f"S3 reports {info.size} bytes with CRC32C {info.crc32c}, expected "
                        f"{size} bytes with {crc32c}")
            try:
                self.delete(key)
            except ObjectLocked as exc:
                # S3 checked the bytes before committing them, so this needs S3 to have
                # stored other bytes than it checked; the lock keeps them until its date.
                raise ChecksumMismatch(
                    f"{self._where(key)} holds other bytes than were written ({reported}) and "
                    f"cannot be deleted: {exc}") from exc
            raise ChecksumMismatch(f"deleted {self._where(key)} after writing it: {reported}")
        return info

    def _verify_locked(self, key: str, info: ObjectInfo, until: datetime) -> ObjectInfo:
        """``info`` once S3 reports the object locked until at least ``until``; sets the lock
        (PutObjectRetention) where the write's own request did not."""
        if info.retain_until is not None and info.retain_until >= until:
            return info
        assert self.lock_mode is not None
        with self._translated("lock", key):
            self._client.put_object_retention(
                Bucket=self.bucket, Key=key,
                Retention={"Mode": self.lock_mode.upper(), "RetainUntilDate": until})
        info = self.stat(key)
        if info.retain_until is None or info.retain_until < until:
            raise PermanentStoreError(
                f"cannot lock {self._where(key)}: S3 reports it locked until "
                f"{info.retain_until.isoformat() if info.retain_until else 'never'} after it "
                f"was asked for {until.isoformat()}; check the bucket's Object Lock")
        return info

    # -- deleting versions ------------------------------------------------------------------

    def _versions_of(self, key: str) -> list[dict[str, Any]]:
        """Every version and delete marker of exactly ``key``."""
        paginator = self._client.get_paginator("list_object_versions")
        found: list[dict[str, Any]] = []
        with self._translated("list the versions of", key):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
                for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    if entry["Key"] == key:  # by prefix: "a.bin" also lists "a.bin.1"
                        found.append(entry)
        return found

    def _delete_version(self, key: str, version_id: str) -> str | None:
        """Delete one version; None when it is gone, or why its lock refused the delete."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except ClientError as exc:
            error = translate_error(exc, self._where(key), f"delete version {version_id} of")
            if _error_code(exc) == "AccessDenied":
                lock = self._lock_of(key, version_id)
                if lock is not None:
                    return f"version {version_id} is {lock}"
            if isinstance(error, NotFound):
                return None  # gone since the listing
            raise error from exc
        except BotoCoreError as exc:
            raise translate_error(exc, self._where(key),
                                  f"delete version {version_id} of") from exc
        return None

    def _lock_of(self, key: str, version_id: str) -> str | None:
        """What keeps a version from being deleted ("locked (GOVERNANCE mode) until ..."), or
        None when nothing does (an AccessDenied is then the credential's own)."""
        try:
            with self._translated("stat", key):
                head = self._client.head_object(Bucket=self.bucket, Key=key,
                                                VersionId=version_id)
        except StoreError:
            return None
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return "under a legal hold"
        until = _utc(head.get("ObjectLockRetainUntilDate"))
        # S3's clock decides, not ours: a retention S3 reports is what refused the delete.
        if head.get("ObjectLockMode") and until is not None:
            return f"locked ({head['ObjectLockMode']} mode) until {until.isoformat()}"
        return None


def _ours(upload: dict[str, Any]) -> bool:
    """Whether an open upload was started with a full-object CRC32C, as we complete it."""
    return bool(upload.get("ChecksumAlgorithm") == "CRC32C"
                and upload.get("ChecksumType") == "FULL_OBJECT")


def _holds(parts: dict[int, dict[str, Any]], number: int, data: bytes, crc32c: str) -> bool:
    """Whether an open upload's listed part ``number`` has exactly these bytes."""
    part = parts.get(number)
    if part is None or int(part["Size"]) != len(data):
        return False
    listed_crc = part.get("ChecksumCRC32C")
    if listed_crc is not None:
        return bool(listed_crc == crc32c)
    # moto (5.x) lists parts without their checksums, as some S3-compatible stores do. The ETag
    # is then the part's MD5, which S3 computes for parts that are not KMS-encrypted; a part
    # whose ETag is something else is simply sent again.
    md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
    return bool(str(part["ETag"]).strip('"') == md5)


def _settle(in_flight: set[Future[dict[str, Any]]]) -> set[Future[dict[str, Any]]]:
    """Wait for at least one part in flight to finish; raise the first failure; return the
    parts still in flight."""
    done, pending = wait(in_flight, return_when=FIRST_COMPLETED)
    for finished in done:
        finished.result()  # raises the part's error (translated by _upload_part)
    return pending
