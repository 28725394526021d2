"""Fixtures for the object-store conformance suite.

S3, GCS and Swift are real servers on real sockets: moto's HTTP server, gcp-storage-emulator and
a Swift cluster (Debian's swift packages, with the identity service that stands in for Rackspace
Identity: ``regionvault.devstack.swift``), each started once per session on free ports. Each test
gets a fresh bucket (container), so tests do not see each other's objects.

``locked_backend`` gives the memory, S3 and GCS stores built with a lock mode, on buckets able to
lock objects (S3 created with Object Lock; GCS asked for object retention, which the emulator
ignores: ``enforces_locks`` is False there and the requests are checked against the API schema).
Not Swift: Cloud Files cannot lock objects, so a Swift store is one that refuses a locked write
(``refusing_backend``).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError

from regionvault.checksums import crc32c_of_bytes
from regionvault.devstack.swift import SwiftService, start_swift
from regionvault.errors import TransientStoreError
from regionvault.stores.base import ObjectStore
from regionvault.stores.gcs import GCSStore, make_gcs_client
from regionvault.stores.memory import MemoryStore
from regionvault.stores.s3 import S3Store, make_s3_client
from regionvault.stores.swift import SwiftStore

MiB = 1024 * 1024
S3_REGION = "eu-central-1"
GCS_LOCATION = "europe-west4"
GCS_PROJECT = "regionvault-test"
S3_PART_SIZE = 5 * MiB  # the smallest S3 allows, so a multipart test needs only ~11 MiB
GCS_CHUNK_SIZE = 256 * 1024  # the smallest GCS allows
#: the Cloud Files region of the Swift backend's containers (the catalog's "SYD" endpoint)
SWIFT_REGION = "syd"
SWIFT_SEGMENT_SIZE = S3_PART_SIZE  # LARGE is then a Static Large Object of three segments

_BIN = Path(sys.executable).parent
_STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it, so never 6379 or 5432 in use)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited early:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not listen within {_STARTUP_TIMEOUT}s")


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(args: list[str], port: int, log: Path) -> ServerProcess:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(process, port)
    try:
        _wait_for_port(port, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_moto(log: Path) -> ServerProcess:
    port = free_port()
    return start_server([str(_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, log)


@contextmanager
def fake_aws_environment() -> Iterator[pytest.MonkeyPatch]:
    """Fake credentials for moto, and nothing from the developer's own AWS setup."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield mp


@pytest.fixture(scope="session", autouse=True)
def _aws_test_environment() -> Iterator[None]:
    with fake_aws_environment():
        yield


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    args = [str(_BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--in-memory"]
    server = start_server(args, port, tmp_path_factory.mktemp("gcs") / "gcs.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_client(moto_server: ServerProcess) -> Any:
    return make_s3_client(S3_REGION, moto_server.url)


@pytest.fixture(scope="session")
def gcs_client(gcs_server: ServerProcess) -> Any:
    return make_gcs_client(GCS_PROJECT, gcs_server.url, anonymous=True)


def new_bucket_name() -> str:
    return f"rv-test-{uuid.uuid4().hex[:16]}"


@dataclass
class Backend:
    """One store under test, plus what a test needs to look behind it."""

    name: str
    store: ObjectStore
    #: where the store's bucket really is
    region: str
    #: a store on a bucket that does not exist (None where that cannot happen)
    missing_bucket_store: ObjectStore
    #: how many multipart uploads are open under a prefix, asked of the server directly
    #: (the memory store has no server: it is asked itself)
    open_uploads: Callable[[str], int]
    #: leaves an upload open under a key, as a crashed writer would (None: no such thing)
    leave_open_upload: Callable[[str], None] | None
    #: whether the store lists its open uploads (GCS cannot list resumable sessions)
    lists_uploads: bool = False
    #: the store's requests as S3 counts them ("create_upload", "upload_part"), where counted
    requests: Counter[str] = field(default_factory=Counter)
    #: let N more parts be stored, then fail the next with a transient error (None: not here)
    fail_part_after: Callable[[int], None] | None = None
    #: how many versions of a key the bucket holds (noncurrent ones and delete markers too)
    versions: Callable[[str], int] | None = None
    #: whether the store really refuses to delete a locked object (not the GCS emulator)
    enforces_locks: bool = True
    #: the clock the store judges locks by, where a test can move it (the memory store)
    clock: MovableClock | None = None
    #: the JSON bodies of the GCS requests that start an upload (object metadata), in order
    upload_metadata: list[dict[str, Any]] = field(default_factory=list)


class MovableClock:
    """A clock a test moves: the memory store's "now"."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@pytest.fixture
def memory_backend() -> Backend:
    # Parts of the same size as the S3 backend's, so that the same tests resume on both.
    store = MemoryStore(new_bucket_name(), GCS_LOCATION, part_size=S3_PART_SIZE)

    def leave_open_upload(key: str) -> None:
        # The way the memory store gets an open upload: a write that fails after one part.
        data = b"\0" * (2 * S3_PART_SIZE)
        store.fail_upload_after(1)
        with pytest.raises(TransientStoreError):
            store.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data))

    return Backend(
        name="memory",
        store=store,
        region=GCS_LOCATION,
        missing_bucket_store=MemoryStore("never-created", GCS_LOCATION, exists=False),
        open_uploads=lambda prefix: len(store.incomplete_uploads(prefix)),
        leave_open_upload=leave_open_upload,
        lists_uploads=True,
        requests=store.requests,
        fail_part_after=store.fail_upload_after,
    )


@pytest.fixture
def s3_backend(moto_server: ServerProcess, s3_client: Any) -> Backend:
    bucket = new_bucket_name()
    s3_client.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": S3_REGION}
    )

    def open_uploads(prefix: str) -> int:
        response = s3_client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        return len(response.get("Uploads", []))

    def leave_open_upload(key: str) -> None:
        upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key)
        s3_client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"partial"
        )

    def store_on(name: str) -> S3Store:
        return S3Store(name, S3_REGION, endpoint_url=moto_server.url, part_size=S3_PART_SIZE)

    store = store_on(bucket)
    counted: Counter[str] = Counter()
    fail_after: list[int] = []  # [n]: let n more parts through, then fail one

    # botocore's before-call hooks run once per API call, before anything is sent; a hook that
    # returns None lets the call go on, one that raises ends it as the server's error would.
    def count_create(**_: Any) -> None:
        counted["create_upload"] += 1

    # Parts of one upload go out from several threads at once: count and fail under a lock.
    lock = threading.Lock()

    def count_part(**_: Any) -> None:
        with lock:
            counted["upload_part"] += 1
            fail_now = bool(fail_after) and fail_after[0] == 0
            if fail_now:
                fail_after.clear()
            elif fail_after:
                fail_after[0] -= 1
        if fail_now:
            raise ClientError(
                {
                    "Error": {"Code": "SlowDown", "Message": "Reduce your request rate."},
                    "ResponseMetadata": {"HTTPStatusCode": 503},
                },
                "UploadPart",
            )

    def fail_part_after(parts: int) -> None:
        fail_after[:] = [parts]

    events = store._client.meta.events
    events.register("before-call.s3.CreateMultipartUpload", count_create)
    events.register("before-call.s3.UploadPart", count_part)

    return Backend(
        name="s3",
        store=store,
        region=S3_REGION,
        missing_bucket_store=store_on(new_bucket_name()),
        open_uploads=open_uploads,
        leave_open_upload=leave_open_upload,
        lists_uploads=True,
        requests=counted,
        fail_part_after=fail_part_after,
    )


@pytest.fixture
def gcs_backend(gcs_server: ServerProcess, gcs_client: Any) -> Backend:
    bucket = gcs_client.create_bucket(new_bucket_name())
    # The emulator ignores the location given at creation; set it the way GCS would report it.
    bucket._patch_property("location", GCS_LOCATION.upper())
    bucket.patch()

    def store_on(name: str) -> GCSStore:
        return GCSStore(
            name,
            GCS_LOCATION,
            project=GCS_PROJECT,
            endpoint_url=gcs_server.url,
            anonymous=True,
            chunk_size=GCS_CHUNK_SIZE,
        )

    def leave_open_upload(key: str) -> None:
        # A resumable session with its first chunk sent and never finished.
        total = 2 * GCS_CHUNK_SIZE
        session = bucket.blob(key).create_resumable_upload_session(size=total)
        response = requests.put(
            session,
            data=b"\0" * GCS_CHUNK_SIZE,
            headers={"Content-Range": f"bytes 0-{GCS_CHUNK_SIZE - 1}/{total}"},
            timeout=10,
        )
        assert response.status_code == 308, response.text

    return Backend(
        name="gcs",
        store=store_on(bucket.name),
        region=GCS_LOCATION,
        missing_bucket_store=store_on(new_bucket_name()),
        # GCS cannot list unfinished resumable sessions; they store nothing and expire.
        open_uploads=lambda prefix: 0,
        leave_open_upload=leave_open_upload,
    )


@pytest.fixture(scope="session")
def swift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftService]:
    server = start_swift(tmp_path_factory.mktemp("swift"))
    yield server
    server.stop()


def swift_store(server: SwiftService, container: str, **options: Any) -> SwiftStore:
    """A store on ``container`` in ``SWIFT_REGION``, as the dev stack configures one."""
    options.setdefault("segment_size", SWIFT_SEGMENT_SIZE)
    return SwiftStore(container, SWIFT_REGION, auth_url=server.identity_url, user=server.user,
                      key=server.key, insecure_http_ok=True, **options)


def swift_segment_uploads(server: SwiftService, container: str, prefix: str) -> set[str]:
    """The upload ids of the segments stored under ``prefix`` (``<key>/slo-<id>/<n>`` in
    ``<container>_segments``), asked of Swift directly."""
    response = requests.get(
        f"{server.storage_url(SWIFT_REGION)}/{container}_segments",
        params={"format": "json", "prefix": prefix},
        headers={"X-Auth-Token": server.token()}, timeout=10)
    if response.status_code == 404:
        return set()
    response.raise_for_status()
    return {item["name"].rsplit("/", 2)[1] for item in response.json()}


@pytest.fixture
def swift_backend(swift_server: SwiftService) -> Backend:
    container = new_bucket_name()
    swift_server.create_container(SWIFT_REGION, container)
    store = swift_store(swift_server, container)

    def leave_open_upload(key: str) -> None:
        # What a writer killed after its first segment leaves: a segment, no manifest.
        swift_server.create_container(SWIFT_REGION, store.segments_container)
        response = requests.put(
            f"{swift_server.storage_url(SWIFT_REGION)}/{store.segments_container}/"
            f"{key}/slo-{uuid.uuid4().hex[:24]}/00000001",
            data=b"partial", headers={"X-Auth-Token": swift_server.token()}, timeout=10)
        assert response.status_code == 201, response.text

    return Backend(
        name="swift",
        store=store,
        region=SWIFT_REGION,
        missing_bucket_store=swift_store(swift_server, new_bucket_name()),
        # Segments of an upload no manifest names are Swift's open uploads; in these tests no
        # object under the prefix is large, so every segment upload found is one.
        open_uploads=lambda prefix: len(swift_segment_uploads(swift_server, container, prefix)),
        leave_open_upload=leave_open_upload,
        lists_uploads=True,
    )


@pytest.fixture(params=["memory", "s3", "gcs", "swift"])
def backend(request: pytest.FixtureRequest) -> Backend:
    # Looked up by name so that the servers start only when a test needs them.
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store


@pytest.fixture(params=["memory", "s3"])
def resumable_backend(request: pytest.FixtureRequest) -> Backend:
    """The stores whose interrupted uploads a retry resumes.

    Not GCS: a resumable session can only be resumed through its session URL, which dies with
    the process that opened it, and GCS cannot list sessions, so a retry starts a new one. An
    abandoned session stores nothing and GCS drops it after a week.
    """
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


# --- stores that lock objects ----------------------------------------------------------------


def s3_versions(client: Any, bucket: str) -> Callable[[str], int]:
    def versions(key: str) -> int:
        response = client.list_object_versions(Bucket=bucket, Prefix=key)
        return sum(1 for entry in [*response.get("Versions", []),
                                   *response.get("DeleteMarkers", [])] if entry["Key"] == key)
    return versions


@pytest.fixture
def locked_memory_backend() -> Backend:
    clock = MovableClock()
    store = MemoryStore(new_bucket_name(), GCS_LOCATION, part_size=S3_PART_SIZE, clock=clock,
                        lock_mode="governance")
    return Backend(name="memory", store=store, region=GCS_LOCATION,
                   missing_bucket_store=MemoryStore("never-created", GCS_LOCATION, exists=False),
                   open_uploads=lambda prefix: len(store.incomplete_uploads(prefix)),
                   leave_open_upload=None, lists_uploads=True, requests=store.requests,
                   versions=store.versions, clock=clock)


@pytest.fixture
def locked_s3_backend(moto_server: ServerProcess, s3_client: Any) -> Backend:
    bucket = new_bucket_name()
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True,
                            CreateBucketConfiguration={"LocationConstraint": S3_REGION})
    store = S3Store(bucket, S3_REGION, endpoint_url=moto_server.url, part_size=S3_PART_SIZE,
                    lock_mode="governance")
    counted: Counter[str] = Counter()

    def count(name: str) -> Callable[..., None]:
        def hook(params: dict[str, Any], **_: Any) -> None:
            counted[name] += 1
            if "ObjectLockMode" in params:
                counted[f"{name} locked"] += 1
        return hook

    events = store._client.meta.events
    for operation in ("PutObject", "CreateMultipartUpload", "PutObjectRetention"):
        events.register(f"before-parameter-build.s3.{operation}", count(operation))
    return Backend(name="s3", store=store, region=S3_REGION,
                   missing_bucket_store=S3Store(new_bucket_name(), S3_REGION,
                                                endpoint_url=moto_server.url),
                   open_uploads=lambda prefix: len(store.incomplete_uploads(prefix)),
                   leave_open_upload=None, lists_uploads=True, requests=counted,
                   versions=s3_versions(s3_client, bucket))


class RecordingAdapter(requests.adapters.HTTPAdapter):
    """Sends every request for real, keeping the JSON body of each that starts an upload."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        super().__init__()
        self.bodies = bodies

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        if request.method == "POST" and "/upload/" in str(request.url) and request.body:
            body = request.body
            self.bodies.append(json.loads(body.decode() if isinstance(body, bytes) else body))
        return super().send(request, *args, **kwargs)


@pytest.fixture
def locked_gcs_backend(gcs_server: ServerProcess, gcs_client: Any) -> Backend:
    # What a bucket created by regionvault provision gets; the emulator ignores the flag.
    bucket = gcs_client.create_bucket(new_bucket_name(), enable_object_retention=True)
    bucket._patch_property("location", GCS_LOCATION.upper())
    bucket.patch()
    store = GCSStore(bucket.name, GCS_LOCATION, project=GCS_PROJECT,
                     endpoint_url=gcs_server.url, anonymous=True, chunk_size=GCS_CHUNK_SIZE,
                     lock_mode="governance")
    bodies: list[dict[str, Any]] = []
    store._client._http.mount("http://", RecordingAdapter(bodies))

    def versions(key: str) -> int:
        return sum(1 for blob in gcs_client.list_blobs(bucket.name, prefix=key, versions=True)
                   if blob.name == key)

    return Backend(name="gcs", store=store, region=GCS_LOCATION,
                   missing_bucket_store=GCSStore(new_bucket_name(), GCS_LOCATION,
                                                 project=GCS_PROJECT,
                                                 endpoint_url=gcs_server.url, anonymous=True),
                   open_uploads=lambda prefix: 0, leave_open_upload=None,
                   versions=versions, enforces_locks=False, upload_metadata=bodies)


@pytest.fixture(params=["memory", "s3", "gcs"])
def locked_backend(request: pytest.FixtureRequest) -> Backend:
    """The stores that lock objects. Not Swift: Cloud Files cannot lock objects, so a Swift
    store built with a lock mode refuses a locked write instead (``refusing_backend``)."""
    found: Backend = request.getfixturevalue(f"locked_{request.param}_backend")
    return found


@pytest.fixture(params=["memory", "s3"])
def enforcing_backend(request: pytest.FixtureRequest) -> Backend:
    """The locked stores whose server enforces a lock. Not GCS: gcp-storage-emulator ignores
    object retention, so there the requests are checked against the API schema instead
    (tests/schemas/README.md)."""
    found: Backend = request.getfixturevalue(f"locked_{request.param}_backend")
    return found


@pytest.fixture(params=["memory", "s3", "swift"])
def refusing_backend(request: pytest.FixtureRequest) -> Backend:
    """Unlocked stores that refuse a locked write: S3 and the memory store on a bucket without
    Object Lock, and Swift, which cannot lock at all (not gcp-storage-emulator, which accepts a
    retention on any bucket where real GCS refuses)."""
    found: Backend = request.getfixturevalue(f"{request.param}_backend")
    return found


class Interrupted(Exception):
    """What a crash looks like to the code that was reading: the read never returns."""


class InterruptedStream(io.RawIOBase):
    """A stream of ``data`` whose reads fail once ``stop_at`` bytes have been read."""

    def __init__(self, data: bytes, stop_at: int) -> None:
        super().__init__()
        self._data = data
        self._stop_at = stop_at
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._stop_at:
            raise Interrupted(f"interrupted after {self._position} bytes")
        n = min(len(buffer), self._stop_at - self._position)
        buffer[:n] = self._data[self._position : self._position + n]
        self._position += n
        return n
