"""The S3 object store: one bucket in one AWS region, spoken to with boto3.

Integrity: every write carries its CRC32C. The bytes are checksummed here as they are read
(one pass, one part in memory at a time) and the upload is abandoned before it is committed if
they do not match; S3 itself checks the ``x-amz-checksum-crc32c`` headers; and after the write
the object's checksum as S3 reports it is compared once more. Whatever fails, nothing is left
under the key and no multipart upload is left open.

Vendor errors (botocore, boto3) are translated in ``translate_error`` and nowhere else.
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    PermanentStoreError,
    RegionvaultError,
    ResidencyError,
    StoreError,
    TransientStoreError,
)
from regionvault.stores.base import ObjectInfo
from regionvault.stores.streams import CheckedReader, TranslatingReader

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: S3 refuses parts below 5 MiB (except the last) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000

#: one part is retried here on a transient error (a cheap resume: the part is in memory);
#: anything larger than a part is retried by the caller (Celery), never here.
PART_TRIES = 3
PART_RETRY_DELAY = 1.0  # seconds, times the attempt number

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
    max_attempts: int = 3,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> Any:
    """A boto3 S3 client; credentials come from the usual boto3 environment (never from here)."""
    config = Config(
        region_name=region,
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # S3-compatible endpoints (moto, MinIO) rarely resolve virtual-host bucket names.
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    # A session of its own: boto3's default session is not safe to share between threads.
    session = boto3.session.Session()
    return session.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


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
            f"cannot {action} {where}: the connection to S3 failed ({type(exc).__name__}); "
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
        client: Any = None,
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

    def put_file(self, key: str, path: str, *, crc32c: str) -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, os.fstat(f.fileno()).st_size, crc32c=crc32c)

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str) -> ObjectInfo:
        reader = CheckedReader(stream, size, crc32c, self._where(key))
        if size < self.part_size:
            self._put_single(key, reader, crc32c)
        else:
            self._put_multipart(key, reader, size, crc32c)
        return self._verify_stored(key, size, crc32c)

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
        crc = response.get("ChecksumCRC32C")
        # A composite checksum ("<crc>-<parts>") is a checksum of part checksums, not of the
        # object's bytes, so it cannot be compared with anything we know.
        if crc is not None and ("-" in crc or response.get("ChecksumType") == "COMPOSITE"):
            crc = None
        return ObjectInfo(key=key, size=int(response["ContentLength"]), crc32c=crc)

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        # S3 lists keys in UTF-8 byte order, which is Python's str order.
        with self._translated("list", f"{prefix}*"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]

    def delete(self, key: str) -> None:
        # S3 answers 204 for a missing key as well, so this is idempotent as it stands.
        with self._translated("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        """Abort every open multipart upload under ``prefix``.

        Only for uploads left by a crashed writer: a live upload under the same prefix is
        aborted too. A bucket lifecycle rule (AbortIncompleteMultipartUpload) is the backstop.
        """
        paginator = self._client.get_paginator("list_multipart_uploads")
        aborted = 0
        with self._translated("list the multipart uploads under", f"{prefix}*"):
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        for page in pages:
            for upload in page.get("Uploads", []):
                if self._abort(upload["Key"], upload["UploadId"]):
                    aborted += 1
        return aborted

    # -- writing ----------------------------------------------------------------------------

    def _put_single(self, key: str, reader: CheckedReader, crc32c: str) -> None:
        data = reader.read(reader.remaining)  # below one part: bounded; raises if wrong
        with self._translated("upload", key):
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ChecksumAlgorithm="CRC32C",
                ChecksumCRC32C=crc32c,
            )

    def _part_size_for(self, size: int) -> int:
        # Past 10,000 parts S3 refuses the upload: grow the part (in whole MiB) instead.
        needed = -(-size // MAX_PARTS)
        return max(self.part_size, -(-needed // MiB) * MiB)

    def _put_multipart(self, key: str, reader: CheckedReader, size: int, crc32c: str) -> None:
        part_size = self._part_size_for(size)
        with self._translated("start a multipart upload of", key):
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ChecksumAlgorithm="CRC32C",
                ChecksumType="FULL_OBJECT",
            )["UploadId"]
        completed = False
        started, sent = time.monotonic(), 0
        try:
            parts: list[dict[str, Any]] = []
            while reader.remaining:
                # The read reaching the end raises ChecksumMismatch if the bytes are wrong, so a
                # wrong upload is never completed.
                data = reader.read(part_size)
                parts.append(self._upload_part(key, upload_id, len(parts) + 1, data))
                sent += len(data)
                self._pace(started, sent)
            with self._translated("complete the multipart upload of", key):
                self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    ChecksumCRC32C=crc32c,
                    ChecksumType="FULL_OBJECT",
                    MpuObjectSize=size,
                    MultipartUpload={"Parts": parts},
                )
            completed = True
        finally:
            if not completed:
                self._abort_quietly(key, upload_id)

    def _pace(self, started: float, sent: int) -> None:
        if self.max_bytes_per_second:
            ahead = sent / self.max_bytes_per_second - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> dict[str, Any]:
        part_crc = crc32c_of_bytes(data)
        for attempt in range(1, PART_TRIES + 1):
            try:
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
                break
            except TransientStoreError as exc:
                if attempt == PART_TRIES:
                    raise
                log.warning("retrying part %d of %s: %s", number, self._where(key), exc)
                time.sleep(PART_RETRY_DELAY * attempt)
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
        # Called while another error propagates: that error is the one worth reporting, and
        # abort_incomplete_uploads (or the bucket's lifecycle rule) clears what this leaves.
        try:
            self._abort(key, upload_id)
        except StoreError as exc:
            log.warning("could not abort the multipart upload of %s: %s", self._where(key), exc)

    def _verify_stored(self, key: str, size: int, crc32c: str) -> ObjectInfo:
        info = self.stat(key)
        # A store that reports no CRC32C (some S3-compatible ones) was still checked client
        # side; a different one means S3 holds other bytes than we sent.
        if info.size != size or (info.crc32c is not None and info.crc32c != crc32c):
            self.delete(key)
            raise ChecksumMismatch(
                f"deleted {self._where(key)} after writing it: S3 reports {info.size} bytes with "
                f"CRC32C {info.crc32c}, expected {size} bytes with {crc32c}"
            )
        return info
