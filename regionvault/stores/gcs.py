"""The Google Cloud Storage object store: one bucket in one location, via google-cloud-storage.

Uploads: a resumable session is started (its metadata carries the expected CRC32C), then ONE
request streams the whole object to it, a block at a time, so memory stays bounded whatever the
size. Sending it in ``chunk_size`` requests instead, as ``Blob.upload_from_file`` does, buys
nothing here: with retries off no chunk is ever sent again, and a retried step starts a new
session (from byte 0, chunked or not). It costs a request and a buffered chunk per chunk, and
the emulator (gcp-storage-emulator) copies everything received so far on every chunk, so its
time grows with the square of the number of chunks. Measured for 150 MB on the 2-core dev
machine: 5.3 s in 1 MiB chunks, 1.1 s in 16 MiB chunks, 0.3-0.4 s in one request, against
0.5-0.7 s for a bare ``upload_from_filename`` (the library's 100 MiB chunks). ``chunk_size`` is
now only the size of each ranged read of ``open_read``.

Integrity: the expected CRC32C travels with every upload (in the session's metadata) so GCS
refuses an object whose bytes differ; the bytes are also checksummed here as the upload reads
them, and the read that reaches the end raises before the last block is sent if they are wrong,
so the request ends short and nothing is committed. After the upload the object's CRC32C as GCS
reports it is compared once more, and a mismatch deletes what was stored.

Retries: every call passes ``retry=None``, the resumable upload's included, so the library makes
one attempt per request. Celery's step retry, with backoff, is the one retry layer; the library's
own retry under it would multiply the waiting and hide how often GCS fails.

Locks (GCS object retention, with a store built with ``lock_mode``): a write given a
``retain_until`` carries the object's ``retention`` (``Unlocked`` for governance, ``Locked`` for
compliance) in the session's metadata, so GCS creates the object locked; a bucket without
object retention enabled refuses the upload. A retention GCS reports other than asked fails
the write; one it does not report at all is logged (gcp-storage-emulator ignores object
retention, so the tests check the request against the API's schema instead). A delete removes
every generation of the name (a versioned bucket keeps noncurrent ones), the live one last,
and a generation GCS refuses to delete for its retention or a hold raises ``ObjectLocked``.

Vendor errors (google-api-core, google-auth, requests, the storage media layer) are translated
in ``translate_error`` and nowhere else.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, BinaryIO

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import exceptions as media_exceptions

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
from regionvault.stores.base import IncompleteUpload, LockSettings, ObjectInfo
from regionvault.stores.streams import (
    CheckedReader,
    TranslatingReader,
    check_lock_mode,
    connection_failure,
    delete_every_version,
    delete_noncurrent,
    lock_date,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
#: GCS resumable uploads send chunks in multiples of 256 KiB.
CHUNK_QUANTUM = 256 * 1024

#: (connect, read) seconds for each HTTP request.
TIMEOUT = (10.0, 60.0)

#: an object's ``retention.mode`` for each lock mode: an Unlocked retention can be shortened
#: or removed only with storage.objects.overrideUnlockedRetention (as S3 governance mode can be
#: bypassed), a Locked one by nobody (as S3 compliance mode)
RETENTION_MODES = {"governance": "Unlocked", "compliance": "Locked"}

_DATA_CORRUPTION: tuple[type[BaseException], ...] = (media_exceptions.DataCorruption,)
_INVALID_RESPONSE: tuple[type[BaseException], ...] = (media_exceptions.InvalidResponse,)
try:  # google-cloud-storage < 3 raised these from google-resumable-media
    from google import resumable_media

    _DATA_CORRUPTION += (resumable_media.DataCorruption,)
    _INVALID_RESPONSE += (resumable_media.InvalidResponse,)
except ImportError:  # pragma: no cover - depends on what is installed
    pass

_TRANSIENT_API_ERRORS = (
    api_exceptions.TooManyRequests,
    api_exceptions.ServerError,  # InternalServerError, BadGateway, ServiceUnavailable, ...
    api_exceptions.RetryError,  # the library's own retries ran out of time
)
_CONNECTION_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exceptions.TransportError,
)
_VENDOR_ERRORS: tuple[type[BaseException], ...] = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    requests.RequestException,
    *_DATA_CORRUPTION,
    *_INVALID_RESPONSE,
)


def make_gcs_client(
    project: str, endpoint_url: str | None = None, *, anonymous: bool = False
) -> storage.Client:
    """A storage client; credentials come from Application Default Credentials unless
    ``anonymous`` (for the emulator)."""
    return storage.Client(
        project=project,
        credentials=AnonymousCredentials() if anonymous else None,
        client_options={"api_endpoint": endpoint_url} if endpoint_url else None,
    )


def _status_of(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def translate_error(exc: BaseException, where: str, action: str) -> StoreError:
    """The project's error for a Google client exception raised while doing ``action``."""
    if isinstance(exc, _DATA_CORRUPTION):
        return ChecksumMismatch(
            f"cannot {action} {where}: the bytes GCS holds do not match their checksum"
        )
    if isinstance(exc, api_exceptions.BadRequest) and "crc32c" in str(exc.message).lower():
        # GCS refuses an upload whose bytes do not match the CRC32C sent with it with a plain
        # 400 ("Provided CRC32C ... doesn't match calculated CRC32C ..."); nothing is stored.
        return ChecksumMismatch(
            f"cannot {action} {where}: GCS refused the bytes, their CRC32C is not the one sent"
        )
    status = _status_of(exc) if isinstance(exc, _INVALID_RESPONSE) else 0
    if isinstance(exc, api_exceptions.NotFound) or status == 404:
        return NotFound(f"cannot {action} {where}: it does not exist")
    if isinstance(exc, _TRANSIENT_API_ERRORS) or status == 429 or status >= 500:
        return TransientStoreError(
            f"cannot {action} {where}: GCS is throttling or unavailable ({_describe(exc)}); "
            "retry later"
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return TransientStoreError(
            f"cannot {action} {where}: the connection to GCS failed "
            f"({connection_failure(exc)}); "
            "retry later"
        )
    return PermanentStoreError(
        f"cannot {action} {where}: GCS refused ({_describe(exc)}); "
        "check the bucket, the object name and the permissions"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"{exc.code} {exc.message}"
    return type(exc).__name__


class GCSStore:
    """An ``ObjectStore`` on one GCS bucket (see ``regionvault.stores.base`` for the contract)."""

    name = "gcs"

    def __init__(
        self,
        bucket: str,
        location: str,
        *,
        project: str,
        endpoint_url: str | None = None,
        anonymous: bool = False,
        chunk_size: int = 8 * MiB,
        client: storage.Client | None = None,
        lock_mode: str | None = None,
    ) -> None:
        if chunk_size <= 0 or chunk_size % CHUNK_QUANTUM:
            raise ConfigError(
                f"GCS chunk size {chunk_size} for bucket '{bucket}' is not a multiple of "
                "256 KiB; configure one that is"
            )
        self.bucket = bucket
        self.location = location
        self.chunk_size = chunk_size
        #: "governance" or "compliance": the retention mode of writes given a retain_until
        self.lock_mode = check_lock_mode(lock_mode, bucket)
        self._client = client or make_gcs_client(project, endpoint_url, anonymous=anonymous)
        self._bucket = self._client.bucket(bucket)
        self._unreported_lock_logged = False

    # -- naming and error translation -------------------------------------------------------

    def _where(self, key: str | None = None) -> str:
        return f"gs://{self.bucket}" if key is None else f"gs://{self.bucket}/{key}"

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
        with self._translated("find the location of"):
            self._bucket.reload(timeout=TIMEOUT, retry=None)
        location = (self._bucket.location or "").lower()
        permitted = {name.lower() for name in allowed}
        if location not in permitted:
            raise ResidencyError(
                f"bucket {self._where()} is in {location or 'an unreported location'}, outside "
                f"the allowed locations ({', '.join(sorted(permitted)) or 'none'}); "
                "use a bucket in one of those"
            )

    def put_file(self, key: str, path: str, *, crc32c: str,
                 retain_until: datetime | None = None) -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, os.fstat(f.fileno()).st_size, crc32c=crc32c,
                                   retain_until=retain_until)

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str,
                   retain_until: datetime | None = None) -> ObjectInfo:
        until = lock_date(self.lock_mode, retain_until, datetime.now(UTC))
        reader = CheckedReader(stream, size, crc32c, self._where(key))
        with self._translated("upload", key):
            session = self._start_upload(key, size, crc32c, self._retention(until))
            self._send(key, session, reader)
        return self._verify_stored(key, size, crc32c, until)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        with self._translated("read", key):
            data: bytes = self._bucket.blob(key).download_as_bytes(
                checksum="crc32c", timeout=TIMEOUT, retry=None
            )
        return data

    def open_read(self, key: str) -> BinaryIO:
        blob = self._reload(key, "open")  # NotFound now, not at the first read
        with self._translated("open", key):
            # The reloaded blob carries its generation, so an overwrite while we read does not
            # mix two objects; the reader fetches one chunk at a time (bounded memory).
            reader = blob.open("rb", chunk_size=self.chunk_size, timeout=TIMEOUT, retry=None)
        return io.BufferedReader(TranslatingReader(
            reader, self._where(key), _VENDOR_ERRORS, translate_error), 1 * MiB)

    def stat(self, key: str) -> ObjectInfo:
        return _info(self._reload(key, "stat"))

    def list_keys(self, prefix: str) -> Iterator[str]:
        for info in self.list_info(prefix):
            yield info.key

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        # GCS lists names in lexicographic order, page by page, with each object's metadata.
        with self._translated("list", f"{prefix}*"):
            for blob in self._client.list_blobs(
                self._bucket, prefix=prefix, timeout=TIMEOUT, retry=None
            ):
                yield _info(blob)

    def delete(self, key: str) -> None:
        """Delete every generation of ``key``, noncurrent ones first and the live one last.

        A generation refused for its retention (or a hold) stops the delete before the live
        one, so the name stays listed for the next attempt, and raises ``ObjectLocked``."""
        delete_every_version(
            self._generations_of(key), is_current=_live,
            delete=lambda blob: self._delete_generation(key, blob),
            where=self._where(key), lock_note="nothing overrides the retention")

    def delete_noncurrent_versions(self, key: str) -> int:
        """Delete every generation of ``key`` but the live one."""
        return delete_noncurrent(
            self._generations_of(key), is_current=_live,
            delete=lambda blob: self._delete_generation(key, blob),
            what=f"the older generations of {self._where(key)}")

    def lock_settings(self) -> LockSettings:
        with self._translated("read the settings of"):
            self._bucket.reload(timeout=TIMEOUT, retry=None)
        retention = self._bucket._properties.get("objectRetention") or {}
        return LockSettings(store=self.name, bucket=self.bucket,
                            versioned=bool(self._bucket.versioning_enabled),
                            lock_enabled=retention.get("mode") == "Enabled")

    def incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        """Always ``[]``: GCS resumable sessions cannot be listed.

        An unfinished session stores nothing under its name, only its session URL can address
        it, and GCS drops it by itself a week after it started. So there is nothing for the
        reconciler to find or to sweep here.
        """
        return []

    def abort_upload(self, upload: IncompleteUpload) -> bool:
        return False  # no GCS upload is ever listed (see incomplete_uploads), so none is open

    def abort_incomplete_uploads(self, prefix: str) -> int:
        return sum(self.abort_upload(upload) for upload in self.incomplete_uploads(prefix))

    # -- helpers ----------------------------------------------------------------------------

    def _reload(self, key: str, action: str) -> Any:
        blob = self._bucket.blob(key)
        with self._translated(action, key):
            blob.reload(timeout=TIMEOUT, retry=None)
        return blob

    def _generations_of(self, key: str) -> list[Any]:
        """Every generation GCS keeps of exactly ``key``, live and noncurrent."""
        with self._translated("list the generations of", key):
            return [blob for blob in self._client.list_blobs(
                self._bucket, prefix=key, versions=True, timeout=TIMEOUT, retry=None)
                if blob.name == key]  # by prefix: "a.bin" also lists "a.bin.1"

    def _retention(self, until: datetime | None) -> dict[str, str] | None:
        """The object's ``retention`` (the JSON API's form) for a lock until ``until``."""
        if until is None or self.lock_mode is None:
            return None
        return {"mode": RETENTION_MODES[self.lock_mode],
                "retainUntilTime": until.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _start_upload(self, key: str, size: int, crc32c: str,
                      retention: dict[str, str] | None = None) -> str:
        """The URL of a new resumable session for ``size`` bytes under ``key``."""
        blob = self._bucket.blob(key)
        # In the session's metadata: GCS refuses to create the object if its bytes have another
        # CRC32C.
        blob.crc32c = crc32c
        if retention is not None:
            # Only these two fields: the library's Retention would also send the server-set
            # retentionExpirationTime (as null).
            blob._patch_property("retention", retention)
        url: str = blob.create_resumable_upload_session(size=size, timeout=TIMEOUT, retry=None)
        return url

    def _delete_generation(self, key: str, blob: Any) -> str | None:
        """Delete one listed generation; None when it is gone, or what keeps it (its
        retention or a hold) when GCS refused."""
        try:
            with self._translated(f"delete generation {blob.generation} of", key):
                blob.delete(timeout=TIMEOUT, retry=None)
        except NotFound:
            return None  # already gone: deleting is idempotent
        except PermanentStoreError as exc:
            if not isinstance(exc.__cause__, api_exceptions.Forbidden):
                raise
            lock = _lock_of(blob)
            if lock is None:  # a Forbidden of the credential's own
                raise
            return f"generation {blob.generation} is {lock}"
        return None

    def _send(self, key: str, session: str, reader: CheckedReader) -> None:
        """All of ``reader`` to the session in one request; raises unless GCS committed it."""
        size = reader.remaining
        # An empty object is checked now (the read runs the end checks) and sent as b"".
        body: _UploadBody | bytes = _UploadBody(reader) if size else reader.read()
        content_range = f"bytes 0-{size - 1}/{size}" if size else "bytes */0"
        # The client's own session: its authentication and transport, not the library's
        # chunking. A read that raises (the reader's checks) aborts the request part-way.
        response = self._client._http.request(
            "PUT", session, data=body, headers={"Content-Range": content_range},
            timeout=TIMEOUT, allow_redirects=False)
        if response.status_code in (200, 201):
            return
        if response.status_code == 308:  # "resume incomplete": not every byte arrived
            raise TransientStoreError(
                f"cannot upload {self._where(key)}: GCS received only part of the bytes; "
                "retry later")
        raise api_exceptions.from_http_response(response)

    def _verify_stored(self, key: str, size: int, crc32c: str,
                       until: datetime | None = None) -> ObjectInfo:
        blob = self._reload(key, "check")
        if blob.size != size or blob.crc32c != crc32c:
            with self._translated("delete", key):
                blob.delete(timeout=TIMEOUT, retry=None)  # this generation only
            raise ChecksumMismatch(
                f"deleted {self._where(key)} after writing it: GCS reports {blob.size} bytes with "
                f"CRC32C {blob.crc32c}, expected {size} bytes with {crc32c}"
            )
        info = _info(blob)
        if until is None:
            return info
        wanted = self._retention(until)
        assert wanted is not None
        reported = blob._properties.get("retention")
        if not reported:
            # Real GCS either stores the retention or refuses the upload (a bucket without
            # object retention); only an emulator drops it silently.
            if not self._unreported_lock_logged:
                self._unreported_lock_logged = True
                log.warning("%s: GCS reports no retention on objects written with one (as "
                            "gcp-storage-emulator does); they are not locked",
                            self._where())
            return info
        if reported.get("mode") != wanted["mode"] or info.retain_until is None \
                or info.retain_until < until:
            raise PermanentStoreError(
                f"cannot lock {self._where(key)}: GCS reports its retention as "
                f"{reported.get('mode')} until {reported.get('retainUntilTime')}, not "
                f"{wanted['mode']} until {wanted['retainUntilTime']}; check the bucket's "
                "object retention")
        return info


class _UploadBody:
    """The body of an upload request. ``requests`` streams an object that has ``read`` and a
    length, a block (16 KiB) at a time, with that length as Content-Length.

    The length is what is left to read: should the request be sent again (the credentials'
    refresh after a 401 does that) it finds nothing left, so GCS gets a short upload and
    commits nothing.
    """

    def __init__(self, reader: CheckedReader) -> None:
        self._reader = reader

    def __len__(self) -> int:
        return self._reader.remaining

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)


def _info(blob: Any) -> ObjectInfo:
    # time_created is when this generation's bytes were written; updated also moves when only
    # metadata changes. The library parses both into aware UTC datetimes.
    return ObjectInfo(
        key=blob.name,
        size=int(blob.size or 0),
        crc32c=blob.crc32c,
        modified=blob.time_created or blob.updated,
        retain_until=_retained_until(blob),
    )


def _live(blob: Any) -> bool:
    """Whether a listed generation is the live one: GCS stamps a noncurrent one with when it
    stopped being live (timeDeleted), and at most one generation has no such stamp."""
    return blob._properties.get("timeDeleted") is None


def _retained_until(blob: Any) -> datetime | None:
    if not (blob._properties.get("retention") or {}).get("retainUntilTime"):
        return None
    until: datetime = blob.retention.retain_until_time
    return until.astimezone(UTC)


def _lock_of(blob: Any) -> str | None:
    """What keeps a listed generation from being deleted, or None if nothing GCS reports."""
    properties = blob._properties
    if properties.get("temporaryHold") or properties.get("eventBasedHold"):
        return "under a hold"
    retention = properties.get("retention") or {}
    until = _retained_until(blob)
    if until is not None:
        # GCS's clock decides, not ours: a retention GCS reports is what refused the delete.
        return f"under retention ({retention.get('mode')}) until {until.isoformat()}"
    return None
