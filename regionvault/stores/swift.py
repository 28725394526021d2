"""The Swift object store: one Rackspace Cloud Files container in one region, via swiftclient.

Authentication: Cloud Files authenticates against Rackspace Identity (Keystone v2.0,
``POST <auth_url>/tokens`` with the user's API key). The answer carries a token, when it expires,
and the service catalog, whose ``object-store`` endpoint for the configured region is the storage
URL every other request goes to. The token is kept and asked for again shortly before it
expires. The catalog is also what ``check_residency`` asks: the region is the one the identity
service lists for the storage URL in use, not the one in our configuration.

Integrity: every write is read once, a segment at a time (at most ``segment_size`` bytes in
memory), with its CRC32C computed here: the read reaching the end raises ``ChecksumMismatch``
before the last bytes are sent, so a wrong upload is never committed. Each PUT carries the MD5
of its bytes as its ``ETag``, which Swift checks (422 when they differ); the ETag Swift answers
is compared again. Swift reports no CRC32C, so the object's is stored as its metadata
(``X-Object-Meta-Crc32c``) and reported from there by ``stat`` (listings carry no metadata:
their ``crc32c`` is None); after every write the size and CRC32C Swift reports are compared.
Reads are checked too: ``get_bytes`` and the stream of ``open_read`` compare the size and
CRC32C of what arrived with what Swift reports, and raise ``ChecksumMismatch`` if they differ.
Swift checks an SLO's segments against its manifest as it serves them: a first segment that
differs is refused (409, ``ChecksumMismatch``), a later one ends the response early, which is
then told apart from a dropped connection by comparing the segments with the manifest.

Large objects: an object of more than ``segment_size`` bytes is a Static Large Object. Its
segments go to the container ``<container>_segments`` (created on first use, in the same account
and so the same region), named ``<key>/slo-<upload id>/<number, 8 digits>``; a new upload id for
every write, so a rewrite never touches the segments of the object it replaces. (Those 38
characters count against Swift's 1024-byte object names: keys are at most 986 bytes.) The manifest
(``?multipart-manifest=put``) lists each segment's path, ETag and size, which Swift checks
against the stored segments, and sends the ETag the whole must have. A manifest names its
upload id in ``X-Object-Meta-Rv-Upload``; the segments of the object it replaces are deleted
once it is in place (unless the container is versioned: an older version still needs them).
Deleting an SLO deletes its segments (``?multipart-manifest=delete``).

Resuming: none. A write that fails deletes the segments it stored, unless it cannot tell
whether its manifest was committed (then it leaves them). What a crash or an unreachable Swift
leaves behind, segments no manifest names, is listed by ``incomplete_uploads`` (one per upload
id) and removed by ``abort_upload``, so the reconciler sweeps it as it sweeps S3's multipart
uploads.

The backstop for personal data: S3 and GCS buckets carry lifecycle rules that delete a domain's
personal data ``backstop_pii_days`` after it was written even if regionvault's own expiry sweep
never runs (``regionvault.provision``). Swift has no bucket lifecycle rules, only an expiry per
object, so a store given ``delete_after`` (``pii_backstop(pii_prefix(domain), days)``) writes
every object whose key that function gives seconds for with an ``X-Delete-At`` that many
seconds after the second the write began (by this machine's clock, whose skew shifts it; the
day the ceiling keeps in hand covers that). It is one absolute instant per object, sent with
the manifest and every segment of a large object alike (``X-Delete-After`` would give each
request its own): segments are the data, and none may outlive the manifest. From that second
Swift answers 404 for each of them; its object-expirer removes the bytes later, which is why
the days stay under the ceiling here too. A write whose object Swift reports without the
``X-Delete-At`` sent is deleted again (``PermanentStoreError``): personal data is never
silently stored without its backstop. This is not the expiry policy: the sweep removes backups
on time; the backstop only guarantees that nothing outlives the ceiling when the sweep cannot
run. Covered too: the segments a failed write leaves, and those of an object a write replaced
(each carries the instant of its own write), and the older version a versioned container
archives (Swift copies ``X-Delete-At`` with it). Not covered: a rewrite of a key starts its
clock again (as a lifecycle rule's age counts from the last write), and an object written
without a backstop keeps none (``expires_at`` finds it; ``stat`` reports no expiry,
``ObjectInfo`` has no place for it). A listing still shows an expired object until the expirer
has removed it.

Locks: Swift cannot lock objects. A store built with a ``lock_mode`` refuses a write that
should be locked (``PermanentStoreError``): a configured lock is never silently dropped.

Versioning: a container versioned the way Cloud Files versions (``X-Versions-Location``, older
versions kept in another container, or ``X-History-Location``) is reported as versioned, and
``delete``/``delete_noncurrent_versions`` remove the older versions there too. Swift's newer
object versioning (``X-Versions-Enabled``), which Cloud Files does not offer, is refused with an
error saying so, since a delete there would leave the bytes behind.

Retries: one attempt per request (swiftclient's module functions never retry; its
``Connection`` wrapper, which does, is not used). Celery's step retry is the one retry layer.
A token the storage refuses (401) is dropped, so the next attempt authenticates again; a key
the identity service refuses is a ``PermanentStoreError``.

Vendor errors (swiftclient, requests, urllib3) are translated in ``translate_error`` and nowhere
else. The key is never logged nor put in an error or a repr.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import google_crc32c
import requests
import urllib3.exceptions
from swiftclient import client as swiftclient
from swiftclient.exceptions import ClientException

from regionvault.checksums import crc32c_b64, crc32c_of_bytes
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
from regionvault.stores.streams import CheckedReader, check_lock_mode, lock_date

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_SEGMENT_SIZE = 100 * MiB
#: Swift's default ``max_manifest_segments`` (Cloud Files keeps it): past it the segments grow
MAX_SEGMENTS = 1000
#: (connect, read) seconds for each HTTP request
TIMEOUT = (10.0, 60.0)
#: a token this close to its expiry is asked for again before it is used
TOKEN_MARGIN = timedelta(minutes=5)

SEGMENTS_SUFFIX = "_segments"
#: the metadata holding the object's CRC32C, and the upload id of an SLO's segments
CRC_HEADER = "X-Object-Meta-Crc32c"
UPLOAD_HEADER = "X-Object-Meta-Rv-Upload"
#: the epoch second from which Swift answers 404 for an object (the pii backstop)
DELETE_AT_HEADER = "X-Delete-At"
#: ``<key>/slo-<upload id>/<number>``: the key is all before the last "/slo-<id>/<number>"
_SEGMENT_NAME = re.compile(r"(?P<key>.+)/slo-(?P<upload>[0-9a-f]{24})/(?P<number>\d{8})",
                           re.DOTALL)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,  # ProtocolError, ReadTimeoutError while a body streams
    http.client.HTTPException,  # IncompleteRead
    OSError,  # sockets; requests' own errors are OSErrors too, sorted in translate_error
)
#: what a response that ends before its Content-Length raises (the connection errors that
#: come up while reading a body rather than while connecting, which requests wraps itself)
_BROKEN_BODY: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    requests.exceptions.ChunkedEncodingError,
)
_VENDOR_ERRORS: tuple[type[BaseException], ...] = (
    ClientException, requests.RequestException, *_CONNECTION_ERRORS)


def translate_error(exc: BaseException, where: str, action: str) -> StoreError:
    """The project's error for a swiftclient/requests exception raised while doing ``action``."""
    if isinstance(exc, ClientException) and exc.http_status:
        status = int(exc.http_status)
        reason = f"{status} {exc.http_reason}".strip()
        if status == 404:
            return NotFound(f"cannot {action} {where}: it does not exist ({reason})")
        if status == 422:
            return ChecksumMismatch(
                f"cannot {action} {where}: Cloud Files refused the bytes, their MD5 is not the "
                f"ETag sent ({reason})")
        if status == 409 and action in ("read", "open"):
            # What Swift answers when a segment of a large object no longer matches its manifest.
            return ChecksumMismatch(
                f"cannot {action} {where}: a segment no longer matches the object's manifest "
                f"({reason})")
        if status == 401:
            return TransientStoreError(
                f"cannot {action} {where}: Cloud Files refused the token ({reason}); the next "
                "attempt authenticates again")
        if status in (408, 429, 498) or status >= 500:
            return TransientStoreError(
                f"cannot {action} {where}: Cloud Files is throttling or unavailable ({reason}); "
                "retry later")
        return PermanentStoreError(
            f"cannot {action} {where}: Cloud Files refused ({reason}); check the container, "
            "the object name and the user's permissions")
    if isinstance(exc, requests.exceptions.SSLError):
        return PermanentStoreError(
            f"cannot {action} {where}: the TLS connection failed ({exc}); check the endpoint's "
            "certificate")
    # requests' errors are OSErrors too, but only these are worth another attempt.
    transient = _CONNECTION_ERRORS if not isinstance(exc, requests.RequestException) else (
        requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    if isinstance(exc, transient):
        return TransientStoreError(
            f"cannot {action} {where}: the connection to Cloud Files failed "
            f"({type(exc).__name__}); retry later")
    return PermanentStoreError(
        f"cannot {action} {where}: {type(exc).__name__} ({exc}); check the Cloud Files "
        "configuration")


def pii_backstop(domain_prefix_pii: str, days: int) -> Callable[[str], int | None]:
    """The ``delete_after`` of a store holding a domain's backups: ``days`` (in seconds) for the
    keys under ``domain_prefix_pii`` (``provision.pii_prefix(domain)``), None for every other
    key. Pure; ``days`` is ``provision.backstop_pii_days``, the days S3's and GCS's lifecycle
    rules give the same keys."""
    if not domain_prefix_pii:
        # An empty prefix would give every key, metadata backups too, the pii ceiling.
        raise ValueError("the pii prefix of a backstop is empty; give the domain's pii prefix "
                         "(provision.pii_prefix)")
    if days < 1:
        raise ValueError(f"the backstop for {domain_prefix_pii} is {days} days; it must be at "
                         "least 1")
    seconds = days * 86400

    def delete_after(key: str) -> int | None:
        return seconds if key.startswith(domain_prefix_pii) else None

    return delete_after


@dataclass(frozen=True)
class _Session:
    """What the identity service answered: a token and where and what it opens."""

    token: str
    expires: datetime
    #: the configured region's object-store endpoint
    storage_url: str
    #: every region the catalog lists ``storage_url`` under (lower-case)
    regions: frozenset[str]


@dataclass(frozen=True)
class _Versioning:
    """How a container keeps older versions: ``mode`` "stack" (X-Versions-Location: a delete
    restores the previous version) or "history" (X-History-Location: a delete archives the
    current one), in the container ``archive``."""

    mode: str
    archive: str


class SwiftStore:
    """An ``ObjectStore`` on one Cloud Files container (see ``regionvault.stores.base``).

    ``delete_after`` (keyword; None: no object expires) is the backstop for personal data that
    Cloud Files lacks as bucket lifecycle rules: a pure function from an object's key to
    seconds, or None for a key that must not expire. Every write of a key it gives seconds for
    (``put_file``, ``put_stream``, ``put_bytes``: a manifest under the pii prefix is personal
    data too) stores the object, and every segment of it, with ``X-Delete-At`` = the second the
    write began + those seconds, after which Swift answers 404 for all of them. It is the
    ceiling nothing may outlive, not the expiry policy: regionvault's sweep deletes on time,
    this deletes when the sweep never runs. ``pii_backstop`` builds the function;
    ``expires_at`` reports an object's expiry.
    """

    name = "swift"

    def __init__(
        self,
        container: str,
        region: str,
        *,
        auth_url: str,
        user: str,
        key: str,
        tenant: str | None = None,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        lock_mode: str | None = None,
        insecure_http_ok: bool = False,
        delete_after: Callable[[str], int | None] | None = None,
    ) -> None:
        if urlsplit(auth_url).scheme != "https" and not insecure_http_ok:
            raise ConfigError(
                f"the Cloud Files identity URL {auth_url} for container '{container}' is not "
                "https; the API key and tokens must not travel in clear text (only a "
                "development configuration may use http)")
        if segment_size < 1 * MiB:
            raise ConfigError(
                f"Cloud Files segment size {segment_size} for container '{container}' is below "
                "1 MiB; configure a larger one")
        self.bucket = container
        #: the Cloud Files region code (SYD, DFW, LON, ...) whose catalog endpoint is used
        self.region = region
        #: the identity service (Keystone v2.0), e.g. https://identity.api.rackspacecloud.com/v2.0
        self.auth_url = auth_url.rstrip("/")
        self.user = user
        self._key = key  # the API key: never logged, never in an error or the repr
        #: the account number the token is scoped to, when the identity service needs one
        self.tenant = tenant
        #: objects above this many bytes are SLOs of segments this size (one in memory at once)
        self.segment_size = segment_size
        #: http:// identity and storage URLs allowed (a development stack only)
        self.insecure_http_ok = insecure_http_ok
        #: "governance"/"compliance": then a write given a retain_until is refused (no locks)
        self.lock_mode = check_lock_mode(lock_mode, container)
        #: key -> seconds an object written there lives at most (None: for ever); see above
        self.delete_after = delete_after
        self.segments_container = f"{container}{SEGMENTS_SUFFIX}"
        self._session: _Session | None = None
        self._session_lock = threading.Lock()
        # swiftclient's HTTPConnection keeps the last response on itself: one per thread.
        self._local = threading.local()

    def __repr__(self) -> str:
        return (f"SwiftStore(container={self.bucket!r}, region={self.region!r}, "
                f"auth_url={self.auth_url!r}, user={self.user!r})")

    # -- naming and error translation -------------------------------------------------------

    def _where(self, key: str | None = None, container: str | None = None) -> str:
        container = container or self.bucket
        return f"swift://{container}" if key is None else f"swift://{container}/{key}"

    @contextmanager
    def _translated(self, action: str, key: str | None = None,
                    container: str | None = None) -> Iterator[None]:
        try:
            yield
        except RegionvaultError:
            raise
        except _VENDOR_ERRORS as exc:
            if isinstance(exc, ClientException) and exc.http_status == 401:
                self._forget_session()
            raise translate_error(exc, self._where(key, container), action) from exc

    # -- authentication ---------------------------------------------------------------------

    def _current(self) -> _Session:
        with self._session_lock:
            session = self._session
            if session is None or session.expires - TOKEN_MARGIN <= datetime.now(UTC):
                session = self._session = self._authenticate()
            return session

    def _forget_session(self) -> None:
        with self._session_lock:
            self._session = None

    def _authenticate(self) -> _Session:
        """Ask the identity service for a token and the region's storage URL (one request)."""
        credentials: dict[str, Any] = {
            "RAX-KSKEY:apiKeyCredentials": {"username": self.user, "apiKey": self._key}}
        if self.tenant:  # Rackspace's account number scopes the token to that account
            credentials["tenantId"] = self.tenant
        where = f"the identity service {self.auth_url} (user {self.user})"
        try:
            response = requests.post(f"{self.auth_url}/tokens", json={"auth": credentials},
                                     headers={"Accept": "application/json"}, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise translate_error(exc, where, "authenticate with") from exc
        status = response.status_code
        if status in (401, 403):
            raise PermanentStoreError(
                f"cannot authenticate with {where}: it refused the API key ({status}); check "
                "the user and key configured for container "
                f"'{self.bucket}'")
        if status in (408, 429) or status >= 500:
            raise TransientStoreError(
                f"cannot authenticate with {where}: it is throttling or unavailable "
                f"({status}); retry later")
        if status != 200:
            raise PermanentStoreError(
                f"cannot authenticate with {where}: it answered {status}; check the identity "
                "URL")
        try:
            access = response.json()["access"]
            token = str(access["token"]["id"])
            expires = datetime.fromisoformat(str(access["token"]["expires"]))
            endpoints = [endpoint for service in access.get("serviceCatalog", [])
                         if service.get("type") == "object-store"
                         for endpoint in service.get("endpoints", [])]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentStoreError(
                f"cannot authenticate with {where}: its answer is not a Keystone v2.0 access "
                f"document ({type(exc).__name__}: {exc}); check the identity URL") from exc
        if expires.tzinfo is None:  # Keystone v2 times are UTC, with or without the "Z"
            expires = expires.replace(tzinfo=UTC)
        wanted = self.region.lower()
        urls = [str(e["publicURL"]) for e in endpoints
                if str(e.get("region", "")).lower() == wanted and e.get("publicURL")]
        if not urls:
            listed = sorted({str(e.get("region", "?")) for e in endpoints})
            raise PermanentStoreError(
                f"{where} lists no object-store endpoint in region {self.region} (it lists "
                f"{', '.join(listed) or 'none'}); configure one of those for container "
                f"'{self.bucket}'")
        storage_url = urls[0].rstrip("/")
        if urlsplit(storage_url).scheme != "https" and not self.insecure_http_ok:
            raise PermanentStoreError(
                f"{where} gives the storage URL {storage_url} for region {self.region}, which "
                "is not https; refusing to send the token in clear text")
        regions = frozenset(str(e.get("region", "")).lower() for e in endpoints
                            if str(e.get("publicURL", "")).rstrip("/") == storage_url
                            or str(e.get("internalURL", "")).rstrip("/") == storage_url)
        return _Session(token=token, expires=expires.astimezone(UTC),
                        storage_url=storage_url, regions=regions)

    def _conn(self, storage_url: str) -> tuple[Any, Any]:
        """This thread's connection to ``storage_url`` (swiftclient's ``http_conn``)."""
        conn: tuple[Any, Any] | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "url", None) != storage_url:
            conn = swiftclient.http_connection(storage_url, timeout=TIMEOUT)
            self._local.conn, self._local.url = conn, storage_url
        return conn

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """``function(storage_url, token, *args, http_conn=..., **kwargs)``: one request."""
        session = self._current()
        return function(session.storage_url, session.token, *args,
                        http_conn=self._conn(session.storage_url), **kwargs)

    def _head(self, key: str) -> dict[str, str]:
        """The headers of the object at ``key`` (one HEAD); ``NotFound`` if it is missing."""
        with self._translated("stat", key):
            headers: dict[str, str] = self._call(swiftclient.head_object, self.bucket, key)
        return headers

    # -- the contract -----------------------------------------------------------------------

    def check_residency(self, allowed: frozenset[str]) -> None:
        # Asked afresh: the catalog as the identity service gives it now.
        self._forget_session()
        with self._translated("find the region of"):
            self._call(swiftclient.head_container, self.bucket)
        session = self._current()
        permitted = {name.lower() for name in allowed}
        if not session.regions or not session.regions <= permitted:
            found = ", ".join(sorted(session.regions)) or "no region"
            raise ResidencyError(
                f"container {self._where()} is in {found} (the identity service's catalog "
                f"region of {session.storage_url}), outside the allowed regions "
                f"({', '.join(sorted(permitted)) or 'none'}); use a container in one of those")

    def put_file(self, key: str, path: str, *, crc32c: str,
                 retain_until: datetime | None = None) -> ObjectInfo:
        with open(path, "rb") as f:
            return self.put_stream(key, f, os.fstat(f.fileno()).st_size, crc32c=crc32c,
                                   retain_until=retain_until)

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str,
                   retain_until: datetime | None = None) -> ObjectInfo:
        if lock_date(self.lock_mode, retain_until, datetime.now(UTC)) is not None:
            raise PermanentStoreError(
                f"cannot upload {self._where(key)} locked until {retain_until}: Cloud Files "
                "cannot lock objects; configure no object lock for a domain stored there")
        reader = CheckedReader(stream, size, crc32c, self._where(key))
        # Once per object: the manifest and every segment expire at the same second.
        delete_at = self._delete_at(key)
        expiry = {} if delete_at is None else {DELETE_AT_HEADER: str(delete_at)}
        replaced = self._upload_of(key)
        if size <= self.segment_size:
            self._put_single(key, reader, crc32c, expiry)
        else:
            self._put_large(key, reader, size, crc32c, expiry)
        info = self._verify_stored(key, size, crc32c, delete_at)
        if replaced is not None:
            self._drop_replaced_segments(key, replaced)
        return info

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            with self._translated("read", key):
                headers, data = self._call(swiftclient.get_object, self.bucket, key)
        except TransientStoreError as exc:
            if not isinstance(exc.__cause__, _BROKEN_BODY):
                raise
            raise self._diagnosed(exc, key) from exc.__cause__
        _check_read(self._where(key), headers, len(data), crc32c_of_bytes(data),
                    hashlib.md5(data, usedforsecurity=False).hexdigest())
        return bytes(data)

    def open_read(self, key: str) -> BinaryIO:
        session = self._current()
        # A connection of its own: swiftclient's connection reads a streamed body through the
        # response it holds last, so no other request may use it until the stream is closed.
        conn = swiftclient.http_connection(session.storage_url, timeout=TIMEOUT)
        try:
            with self._translated("open", key):
                headers, body = swiftclient.get_object(
                    session.storage_url, session.token, self.bucket, key, http_conn=conn,
                    resp_chunk_size=1 * MiB)
        except BaseException:
            conn[1].close()
            raise
        return io.BufferedReader(_CheckedDownload(body, conn[1], headers, self._where(key),
                                                  partial(self._diagnosed, key=key)), 1 * MiB)

    def stat(self, key: str) -> ObjectInfo:
        return _info(key, self._head(key))

    def expires_at(self, key: str) -> datetime | None:
        """When Swift starts answering 404 for ``key`` (its ``X-Delete-At``, aware UTC); None if
        the object never expires. ``NotFound`` if it is missing, or already past its expiry.

        Not part of ``ObjectStore``: for the compliance checks of a Swift store's backstop. One
        HEAD of the object; a large object's segments are not asked (they were written with
        the same instant, see ``SwiftStore``)."""
        return _expiry(self._where(key), self._head(key))

    def list_keys(self, prefix: str) -> Iterator[str]:
        for info in self.list_info(prefix):
            yield info.key

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        # Swift lists names in UTF-8 byte order, which is Python's str order. A listing carries
        # no metadata, so no CRC32C.
        for item in self._listing(self.bucket, prefix):
            yield ObjectInfo(key=item["name"], size=int(item["bytes"]), crc32c=None,
                             modified=_listed_time(item["last_modified"]))

    def delete(self, key: str) -> None:
        """Delete ``key`` and every older version a versioned container keeps of it (each SLO
        with its segments). Idempotent."""
        versioning = self._versioning()
        if versioning is not None and versioning.mode == "history":
            # Deleting the current version archives it: the archive is emptied after.
            self._delete_object(self.bucket, key)
            self._delete_archived(key, versioning)
        elif versioning is not None:
            # Deleting the current version would restore the newest archived one: those first.
            self._delete_archived(key, versioning)
            self._delete_object(self.bucket, key)
        else:
            self._delete_object(self.bucket, key)

    def delete_noncurrent_versions(self, key: str) -> int:
        """Delete the older versions a versioned container keeps of ``key``; 0 when it is not
        versioned."""
        versioning = self._versioning()
        return 0 if versioning is None else self._delete_archived(key, versioning)

    def lock_settings(self) -> LockSettings:
        with self._translated("read the settings of"):
            headers = self._call(swiftclient.head_container, self.bucket)
        versioned = bool(headers.get("x-versions-location") or headers.get("x-history-location")
                         or headers.get("x-versions-enabled", "").lower() == "true")
        return LockSettings(store=self.name, bucket=self.bucket, versioned=versioned,
                            lock_enabled=False)

    def incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        """The segment uploads under ``prefix`` that no manifest names: a write that crashed
        or could not clean up (one per upload id), or one still in progress."""
        started: dict[tuple[str, str], datetime] = {}
        for item in self._segments(prefix):
            name = _SEGMENT_NAME.fullmatch(item["name"])
            if name is None:  # not one of ours
                continue
            when = _listed_time(item["last_modified"])
            group = (name["key"], name["upload"])
            started[group] = min(when, started.get(group, when))
        in_use: dict[str, set[str]] = {}
        found = []
        for (key, upload_id), initiated in sorted(started.items()):
            if key not in in_use:
                in_use[key] = self._uploads_in_use(key)
            if upload_id not in in_use[key]:
                found.append(IncompleteUpload(key=key, upload_id=upload_id, initiated=initiated))
        return found

    def abort_upload(self, upload: IncompleteUpload) -> bool:
        """Delete the segments of ``upload``; False if none are left or a manifest names them
        (the upload was completed after it was listed)."""
        if upload.upload_id in self._uploads_in_use(upload.key):
            return False
        return self._delete_segments(upload.key, upload.upload_id) > 0

    def abort_incomplete_uploads(self, prefix: str) -> int:
        return sum(self.abort_upload(upload) for upload in self.incomplete_uploads(prefix))

    # -- writing ----------------------------------------------------------------------------

    def _delete_at(self, key: str) -> int | None:
        """The epoch second at which an object written at ``key`` now expires (None: never)."""
        seconds = None if self.delete_after is None else self.delete_after(key)
        if seconds is None:
            return None
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise ConfigError(
                f"the backstop for {self._where(key)} is {seconds!r} seconds, not a whole "
                "number of seconds of at least 1; check the delete_after the store was given")
        # Whole seconds, rounded down: the object never lives longer than it may.
        return int(time.time()) + seconds

    def _put_single(self, key: str, reader: CheckedReader, crc32c: str,
                    expiry: Mapping[str, str]) -> None:
        data = reader.read(reader.remaining)  # at most one segment; raises if the bytes are wrong
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        with self._translated("upload", key):
            etag = self._call(swiftclient.put_object, self.bucket, key, data, etag=md5,
                              content_type="application/octet-stream",
                              headers={CRC_HEADER: crc32c, **expiry})
        if etag != md5:
            raise ChecksumMismatch(
                f"refusing to trust {self._where(key)}: Cloud Files stored it with ETag {etag}, "
                f"not the MD5 {md5} of the bytes sent")

    def _segment_size_for(self, size: int) -> int:
        # Past MAX_SEGMENTS Swift refuses the manifest: grow the segments (in whole MiB).
        needed = -(-size // MAX_SEGMENTS)
        return max(self.segment_size, -(-needed // MiB) * MiB)

    def _put_large(self, key: str, reader: CheckedReader, size: int, crc32c: str,
                   expiry: Mapping[str, str]) -> None:
        """Segments, then the manifest that names them, all with ``expiry``; on failure, no
        segment left behind unless the manifest may have been committed (what is left expires
        with the rest)."""
        upload_id = secrets.token_hex(12)
        segment_size = self._segment_size_for(size)
        with self._translated("create the segments container of", container=self.bucket):
            self._call(swiftclient.put_container, self.segments_container)
        segments: list[dict[str, Any]] = []
        try:
            while reader.remaining:
                number = len(segments) + 1
                # The read reaching the end raises ChecksumMismatch if the bytes are wrong, so
                # the manifest of a wrong upload is never written.
                data = reader.read(segment_size)
                segments.append(self._put_segment(key, upload_id, number, data, expiry))
        except BaseException:
            self._delete_segments_quietly(key, upload_id)
            raise
        try:
            # Positional: tests stand in for _put_manifest with a function of *args.
            self._put_manifest(key, upload_id, segments, crc32c, expiry)
        except BaseException:
            # A manifest PUT that failed may still have been committed (a timeout after Swift
            # wrote it): its segments are deleted only once Swift says the key does not name
            # them. Otherwise the reconciler finds them (incomplete_uploads) if nothing does.
            if self._not_committed(key, upload_id):
                self._delete_segments_quietly(key, upload_id)
            raise

    def _not_committed(self, key: str, upload_id: str) -> bool:
        """Whether Swift says the object at ``key`` is not the manifest of ``upload_id``."""
        try:
            return self._upload_of(key) != upload_id
        except StoreError as exc:
            log.warning("left the segments of %s (upload %s): cannot tell whether its manifest "
                        "was written (%s)", self._where(key), upload_id, exc)
            return False

    def _put_segment(self, key: str, upload_id: str, number: int, data: bytes,
                     expiry: Mapping[str, str]) -> dict[str, Any]:
        name = _segment_name(key, upload_id, number)
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        with self._translated(f"upload segment {number} of", key):
            etag = self._call(swiftclient.put_object, self.segments_container, name, data,
                              etag=md5, content_type="application/octet-stream",
                              headers=dict(expiry))
        if etag != md5:
            raise ChecksumMismatch(
                f"refusing to store {self._where(key)}: Cloud Files stored segment {number} "
                f"with ETag {etag}, not the MD5 {md5} of the bytes sent")
        return {"path": f"/{self.segments_container}/{name}", "etag": md5,
                "size_bytes": len(data)}

    def _put_manifest(self, key: str, upload_id: str, segments: list[dict[str, Any]],
                      crc32c: str, expiry: Mapping[str, str]) -> None:
        # The ETag of an SLO is the MD5 of its segments' ETags: sent, Swift checks it too.
        expected = hashlib.md5("".join(s["etag"] for s in segments).encode(),
                               usedforsecurity=False).hexdigest()
        try:
            with self._translated("write the manifest of", key):
                etag = self._call(
                    swiftclient.put_object, self.bucket, key, json.dumps(segments).encode(),
                    etag=expected, query_string="multipart-manifest=put",
                    content_type="application/octet-stream",
                    headers={CRC_HEADER: crc32c, UPLOAD_HEADER: upload_id, **expiry})
        except PermanentStoreError as exc:
            cause = exc.__cause__
            body = getattr(cause, "http_response_content", b"") or b""
            text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            if isinstance(cause, ClientException) and cause.http_status == 400 and (
                    "Etag Mismatch" in text or "Size Mismatch" in text):
                raise ChecksumMismatch(
                    f"refusing to store {self._where(key)}: Cloud Files holds segments other "
                    f"than were sent ({text.strip()})") from exc
            raise
        if etag != expected:
            raise ChecksumMismatch(
                f"refusing to trust {self._where(key)}: Cloud Files wrote its manifest with "
                f"ETag {etag}, not {expected}")

    def _verify_stored(self, key: str, size: int, crc32c: str,
                       delete_at: int | None) -> ObjectInfo:
        headers = self._head(key)
        info = _info(key, headers)
        if info.size != size or info.crc32c != crc32c:
            reported = (f"Cloud Files reports {info.size} bytes with CRC32C {info.crc32c}, "
                        f"expected {size} bytes with {crc32c}")
            self.delete(key)
            raise ChecksumMismatch(f"deleted {self._where(key)} after writing it: {reported}")
        stored_delete_at = headers.get(DELETE_AT_HEADER.lower(), "").strip()
        if delete_at is not None and not (stored_delete_at.isdigit()
                                          and int(stored_delete_at) == delete_at):
            # Personal data without its backstop would outlive the ceiling if the sweep failed.
            self.delete(key)
            raise PermanentStoreError(
                f"deleted {self._where(key)} after writing it: Cloud Files reports its "
                f"{DELETE_AT_HEADER} as {stored_delete_at or 'none'}, not the {delete_at} sent, "
                "so it would not expire as the backstop requires; check that the cluster "
                "supports object expiry")
        return info

    def _upload_of(self, key: str) -> str | None:
        """The upload id of the SLO now at ``key`` (None: no object, or not one of our SLOs)."""
        try:
            with self._translated("stat", key):
                headers = self._call(swiftclient.head_object, self.bucket, key)
        except NotFound:
            return None
        return headers.get(UPLOAD_HEADER.lower()) if _is_slo(headers) else None

    def _drop_replaced_segments(self, key: str, upload_id: str) -> None:
        """The segments of the SLO a write replaced, unless a versioned container keeps it."""
        try:
            if self._versioning() is None:
                self._delete_segments(key, upload_id)
        except StoreError as exc:
            # The object is written; what is left is found by incomplete_uploads.
            log.warning("could not delete the segments of the object %s replaced: %s",
                        self._where(key), exc)

    # -- reading ----------------------------------------------------------------------------

    def _diagnosed(self, error: TransientStoreError, key: str) -> StoreError:
        """``error`` (a read of ``key`` broke off), or ``ChecksumMismatch`` if ``key`` is an SLO
        one of whose segments no longer matches its manifest: Swift then ends the response
        early, which looks like a dropped connection but will not pass with a retry."""
        damage = self._damaged_segment(key)
        if damage is None:
            return error
        return ChecksumMismatch(f"cannot read {self._where(key)}: {damage}")

    def _damaged_segment(self, key: str) -> str | None:
        """What is wrong with the segments of the SLO at ``key``; None if nothing is (or it is
        no SLO, or Swift cannot be asked now)."""
        try:
            with self._translated("stat", key):
                headers = self._call(swiftclient.head_object, self.bucket, key)
            if not _is_slo(headers):
                return None
            with self._translated("read the manifest of", key):
                _, body = self._call(swiftclient.get_object, self.bucket, key,
                                     query_string="multipart-manifest=get")
            manifest = json.loads(body)
            for number, segment in enumerate(manifest, 1):
                container, _, name = str(segment["name"]).lstrip("/").partition("/")
                try:
                    with self._translated(f"stat segment {number} of", key):
                        stored = self._call(swiftclient.head_object, container, name)
                except NotFound:
                    return f"its segment {number} ({name}) is missing"
                etag, size = stored["etag"].strip('"'), int(stored["content-length"])
                if (etag, size) != (segment["hash"], int(segment["bytes"])):
                    return (f"its segment {number} ({name}) holds {size} bytes with ETag "
                            f"{etag}, the manifest says {segment['bytes']} with "
                            f"{segment['hash']}")
        except (StoreError, ValueError, KeyError, TypeError):
            return None
        return None

    # -- segments ---------------------------------------------------------------------------

    def _segments(self, prefix: str) -> Iterator[dict[str, Any]]:
        """The segments container's listing under ``prefix``; nothing if it does not exist."""
        try:
            yield from self._listing(self.segments_container, prefix)
        except NotFound:
            return

    def _uploads_in_use(self, key: str) -> set[str]:
        """The upload ids whose segments a manifest names: the object at ``key`` and the older
        versions a versioned container keeps of it."""
        in_use = set()
        current = self._upload_of(key)
        if current is not None:
            in_use.add(current)
        versioning = self._versioning()
        if versioning is not None:
            for name in self._archived(key, versioning):
                try:
                    with self._translated("stat", name, versioning.archive):
                        headers = self._call(swiftclient.head_object, versioning.archive, name)
                except NotFound:
                    continue
                if _is_slo(headers) and headers.get(UPLOAD_HEADER.lower()):
                    in_use.add(headers[UPLOAD_HEADER.lower()])
        return in_use

    def _delete_segments(self, key: str, upload_id: str) -> int:
        """Delete every segment of one upload; how many were deleted."""
        deleted = 0
        prefix = f"{key}/slo-{upload_id}/"
        for item in list(self._segments(prefix)):
            try:
                with self._translated("delete a segment of", key):
                    self._call(swiftclient.delete_object, self.segments_container, item["name"])
                deleted += 1
            except NotFound:
                continue  # gone since the listing
        return deleted

    def _delete_segments_quietly(self, key: str, upload_id: str) -> None:
        # Called while another error propagates: what this leaves, incomplete_uploads finds.
        try:
            self._delete_segments(key, upload_id)
        except StoreError as exc:
            log.warning("could not delete the segments of the failed upload of %s: %s",
                        self._where(key), exc)

    # -- deleting and versions --------------------------------------------------------------

    def _delete_object(self, container: str, key: str) -> bool:
        """Delete one object (an SLO with its segments); False if it was not there."""
        try:
            with self._translated("stat", key, container):
                headers = self._call(swiftclient.head_object, container, key)
        except NotFound:
            return False
        if not _is_slo(headers):
            try:
                with self._translated("delete", key, container):
                    self._call(swiftclient.delete_object, container, key)
            except NotFound:
                return False
            return True
        # Swift deletes the segments, then the manifest, and reports how it went in the body
        # (the status is 200 whatever happened), so the request is made here to read it.
        session = self._current()
        parsed, conn = self._conn(session.storage_url)
        path = f"{parsed.path}/{swiftclient.quote(container)}/{swiftclient.quote(key)}"
        with self._translated("delete", key, container):
            conn.request("DELETE", f"{path}?multipart-manifest=delete", "",
                         {"X-Auth-Token": session.token, "Accept": "application/json"})
            response = conn.getresponse()
            body = response.read()
            if not 200 <= response.status < 300:
                raise ClientException.from_response(response, "SLO DELETE failed", body)
        try:
            outcome = json.loads(body)
            status = int(str(outcome["Response Status"]).split()[0])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise PermanentStoreError(
                f"cannot delete {self._where(key, container)}: Cloud Files answered the delete "
                f"of a large object with {body[:200]!r}") from exc
        if status == 404:
            return False
        if not 200 <= status < 300:
            errors = "; ".join(f"{name}: {error}" for name, error in outcome.get("Errors", []))
            raise translate_error(
                ClientException(f"SLO DELETE failed: {errors}", http_status=status,
                                http_reason=str(outcome["Response Status"])[4:]),
                self._where(key, container), "delete")
        return True

    def _versioning(self) -> _Versioning | None:
        with self._translated("read the versioning of"):
            headers = self._call(swiftclient.head_container, self.bucket)
        if headers.get("x-versions-enabled", "").lower() == "true":
            raise PermanentStoreError(
                f"container {self._where()} uses Swift's object versioning "
                "(X-Versions-Enabled), which regionvault does not handle: a delete would leave "
                "the bytes behind; turn it off or use X-Versions-Location")
        if headers.get("x-history-location"):
            return _Versioning("history", headers["x-history-location"])
        if headers.get("x-versions-location"):
            return _Versioning("stack", headers["x-versions-location"])
        return None

    def _archived(self, key: str, versioning: _Versioning) -> list[str]:
        """The names of the older versions of ``key`` in the archive container."""
        # Swift names them "<3 hex digits: length of the name in bytes><name>/<timestamp>".
        prefix = f"{len(key.encode()):03x}{key}/"
        try:
            return [item["name"] for item in self._listing(versioning.archive, prefix)]
        except NotFound:
            return []

    def _delete_archived(self, key: str, versioning: _Versioning) -> int:
        return sum(self._delete_object(versioning.archive, name)
                   for name in self._archived(key, versioning))

    # -- listing ----------------------------------------------------------------------------

    def _listing(self, container: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Every entry of ``container`` under ``prefix``, a page (one request) at a time."""
        marker = ""
        while True:
            with self._translated("list", f"{prefix}*", container):
                _, page = self._call(swiftclient.get_container, container, marker=marker,
                                     prefix=prefix)
            if not page:
                return
            yield from page
            marker = page[-1]["name"]


class _CheckedDownload(io.RawIOBase):
    """The body of a GET, its errors translated, its size and CRC32C checked at the end."""

    def __init__(self, body: Any, conn: Any, headers: Mapping[str, str], where: str,
                 diagnosed: Callable[[TransientStoreError], StoreError]) -> None:
        super().__init__()
        self._diagnosed = diagnosed
        self._body = body
        self._conn = conn
        self._headers = headers
        self._where = where
        self._crc = google_crc32c.Checksum()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except _VENDOR_ERRORS as exc:
            error = translate_error(exc, self._where, "read")
            if isinstance(error, TransientStoreError):
                error = self._diagnosed(error)
            raise error from exc
        if not data:
            _check_read(self._where, self._headers, self._size,
                        crc32c_b64(self._crc.digest()), self._md5.hexdigest())
            return 0
        self._crc.update(data)
        self._md5.update(data)
        self._size += len(data)
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
            self._conn.close()
        super().close()


def _check_read(where: str, headers: Mapping[str, str], size: int, crc32c: str,
                md5: str) -> None:
    """Raise ``ChecksumMismatch`` unless what was read is what Swift says the object holds:
    its size, its CRC32C (our metadata) or, without one, the MD5 a plain object's ETag is."""
    expected_size = int(headers.get("content-length", size))
    expected_crc = headers.get(CRC_HEADER.lower())
    if size != expected_size:
        raise ChecksumMismatch(f"read {size} bytes of {where}, which holds {expected_size}")
    if expected_crc is not None and crc32c != expected_crc:
        raise ChecksumMismatch(f"the bytes read of {where} have CRC32C {crc32c}, not the "
                               f"{expected_crc} it was written with")
    if expected_crc is None and not _is_slo(headers) \
            and md5 != headers.get("etag", md5).strip('"'):
        raise ChecksumMismatch(f"the bytes read of {where} have MD5 {md5}, not its ETag "
                               f"{headers.get('etag')}")


def _expiry(where: str, headers: Mapping[str, str]) -> datetime | None:
    """An object's ``X-Delete-At`` (epoch seconds) as an aware UTC time; None without one."""
    value = headers.get(DELETE_AT_HEADER.lower())
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise PermanentStoreError(
            f"Cloud Files reports {DELETE_AT_HEADER} {value!r} for {where}, not an epoch "
            "second; check the object") from exc


def _segment_name(key: str, upload_id: str, number: int) -> str:
    return f"{key}/slo-{upload_id}/{number:08d}"


def _is_slo(headers: Mapping[str, str]) -> bool:
    return headers.get("x-static-large-object", "").lower() == "true"


def _info(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    return ObjectInfo(key=key, size=int(headers["content-length"]),
                      crc32c=headers.get(CRC_HEADER.lower()),
                      modified=_timestamp(headers["x-timestamp"]))


def _timestamp(value: str) -> datetime:
    """An ``X-Timestamp`` ("1700000000.12345") as the aware UTC time listings report."""
    seconds, _, fraction = value.split("_")[0].partition(".")
    micros = int((fraction + "000000")[:6])
    return datetime.fromtimestamp(int(seconds), UTC) + timedelta(microseconds=micros)


def _listed_time(value: str) -> datetime:
    """A listing's ``last_modified`` ("2024-05-01T10:20:30.123450", UTC without a zone)."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)
