"""One conformance suite for every ObjectStore: memory, S3 (moto server), GCS (emulator),
Swift (a real Swift cluster; its own tests are in test_swift.py).

``TestObjectStoreContract`` is the contract written in ``regionvault.stores.base`` as tests; it
runs once per store through the parametrised ``backend`` fixture. ``TestResume`` runs on the
stores that resume an interrupted upload (memory and S3). The functions after them check what
only one cloud has: error translation, one attempt per request, the server-side checks.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import requests
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, EndpointConnectionError
from google.api_core import exceptions as api_exceptions

from regionvault.checksums import crc32c_of_bytes
from regionvault.errors import (
    ChecksumMismatch,
    NotFound,
    ObjectLocked,
    PermanentStoreError,
    ResidencyError,
    StoreError,
    TransientStoreError,
)
from regionvault.stores import gcs, s3, streams
from regionvault.stores.base import IncompleteUpload, ObjectInfo, ObjectStore
from regionvault.stores.memory import MemoryStore
from regionvault.stores.s3 import S3Store

from .conftest import (
    GCS_LOCATION,
    GCS_PROJECT,
    S3_PART_SIZE,
    S3_REGION,
    Backend,
    Interrupted,
    InterruptedStream,
    MiB,
    ServerProcess,
    new_bucket_name,
    start_moto,
)

SMALL = 100 * 1024
LARGE = 11 * MiB  # three S3 parts of 5 MiB, 44 GCS chunks of 256 KiB: a resumable upload
WRONG_CRC = crc32c_of_bytes(b"not these bytes")


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def write_file(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "spooled.bin"
    path.write_bytes(data)
    return str(path)


class TrickleStream(io.RawIOBase):
    """A non-seekable stream that returns short reads, like a pipe or an HTTP body."""

    def __init__(self, data: bytes, max_read: int = 64 * 1024) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._position = 0
        self._max_read = max_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._max_read, len(self._data) - self._position)
        buffer[:n] = self._data[self._position : self._position + n]
        self._position += n
        return n


def read_in_pieces(stream: Any, piece: int = 1 * MiB) -> bytes:
    chunks = []
    while chunk := stream.read(piece):
        chunks.append(chunk)
    return b"".join(chunks)


def content(info: ObjectInfo) -> ObjectInfo:
    """``info`` without its time, to compare with what a test knows."""
    assert info.modified is not None, info
    return replace(info, modified=None)


def assert_utc(moment: datetime | None) -> None:
    assert moment is not None and moment.utcoffset() == timedelta(0), moment


def assert_nothing_under(backend: Backend, key: str) -> None:
    with pytest.raises(NotFound):
        backend.store.stat(key)
    assert list(backend.store.list_keys(key)) == []
    assert backend.open_uploads(key) == 0


class TestObjectStoreContract:
    """What every ObjectStore must do (see ``regionvault.stores.base.ObjectStore``)."""

    def test_is_an_object_store(self, store: ObjectStore) -> None:
        assert isinstance(store, ObjectStore)
        assert store.name in {"s3", "gcs", "swift", "memory"}

    def test_put_file_round_trip(self, store: ObjectStore, tmp_path: Path) -> None:
        data = payload(SMALL)
        crc = crc32c_of_bytes(data)
        info = store.put_file("backups/a.bin", write_file(tmp_path, data), crc32c=crc)
        assert content(info) == ObjectInfo(key="backups/a.bin", size=len(data), crc32c=crc)
        assert store.get_bytes("backups/a.bin") == data
        with store.open_read("backups/a.bin") as stream:
            assert stream.read() == data

    def test_put_file_in_many_parts(self, store: ObjectStore, tmp_path: Path) -> None:
        data = payload(LARGE, seed=1)
        crc = crc32c_of_bytes(data)
        info = store.put_file("backups/large.bin", write_file(tmp_path, data), crc32c=crc)
        assert content(info) == ObjectInfo(key="backups/large.bin", size=LARGE, crc32c=crc)
        assert store.stat("backups/large.bin") == info
        with store.open_read("backups/large.bin") as stream:
            assert read_in_pieces(stream) == data

    @pytest.mark.parametrize("size", [0, SMALL, LARGE])
    def test_put_stream(self, store: ObjectStore, size: int) -> None:
        data = payload(size, seed=2)
        crc = crc32c_of_bytes(data)
        info = store.put_stream("copies/s.bin", TrickleStream(data), size, crc32c=crc)  # type: ignore[arg-type]
        assert content(info) == ObjectInfo(key="copies/s.bin", size=size, crc32c=crc)
        assert store.get_bytes("copies/s.bin") == data

    def test_put_bytes_and_stat(self, store: ObjectStore) -> None:
        manifest = b'{"version": 1, "backup": "b-1"}'
        info = store.put_bytes("backups/b-1.manifest.json", manifest)
        expected = ObjectInfo("backups/b-1.manifest.json", len(manifest), crc32c_of_bytes(manifest))
        assert content(info) == expected
        assert content(store.stat("backups/b-1.manifest.json")) == expected
        assert store.get_bytes("backups/b-1.manifest.json") == manifest

    def test_put_overwrites(self, store: ObjectStore) -> None:
        store.put_bytes("backups/x", b"first")
        store.put_bytes("backups/x", b"second")
        assert store.get_bytes("backups/x") == b"second"
        assert store.stat("backups/x").crc32c == crc32c_of_bytes(b"second")

    def test_list_keys_by_prefix_in_order(self, store: ObjectStore) -> None:
        for key in ["eu/b/2", "eu/a/1", "eu/b/10", "us/a/1", "eu/b/1", "eu"]:
            store.put_bytes(key, key.encode())
        assert list(store.list_keys("eu/b/")) == ["eu/b/1", "eu/b/10", "eu/b/2"]
        assert list(store.list_keys("eu/")) == ["eu/a/1", "eu/b/1", "eu/b/10", "eu/b/2"]
        assert list(store.list_keys("")) == sorted(
            ["eu", "eu/a/1", "eu/b/1", "eu/b/10", "eu/b/2", "us/a/1"]
        )
        assert list(store.list_keys("nothing/")) == []

    def test_stat_reports_when_written_in_utc(self, store: ObjectStore) -> None:
        # S3 reports whole seconds; the servers run on this machine's clock.
        before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        put = store.put_bytes("backups/t", b"data")
        after = datetime.now(UTC) + timedelta(seconds=1)
        info = store.stat("backups/t")
        assert_utc(info.modified)
        assert info.modified is not None and before <= info.modified <= after
        assert put.modified == info.modified

    def test_list_info(self, store: ObjectStore) -> None:
        objects = {"eu/b/2": b"two", "eu/a/1": b"", "eu/b/10": b"ten bytes!", "us/a/1": b"x"}
        for key, data in objects.items():
            store.put_bytes(key, data)
        listed = list(store.list_info("eu/"))
        assert [info.key for info in listed] == ["eu/a/1", "eu/b/10", "eu/b/2"]
        assert [info.key for info in listed] == list(store.list_keys("eu/"))
        for info in listed:
            assert info.size == len(objects[info.key])
            # A listing may not carry the checksum (S3's does not), but never a wrong one.
            assert info.crc32c in (None, crc32c_of_bytes(objects[info.key]))
            assert_utc(info.modified)
            assert info.modified == store.stat(info.key).modified
        assert list(store.list_info("nothing/")) == []

    def test_incomplete_uploads_and_abort_upload(self, backend: Backend) -> None:
        assert backend.leave_open_upload is not None
        backend.leave_open_upload("backups/crashed.bin")
        backend.leave_open_upload("other/crashed.bin")
        store = backend.store
        uploads = store.incomplete_uploads("backups/")
        if not backend.lists_uploads:
            assert uploads == []
            gone = IncompleteUpload("backups/crashed.bin", "no-such-upload", None)
            assert store.abort_upload(gone) is False
            return
        [upload] = uploads
        assert upload.key == "backups/crashed.bin"
        assert upload.upload_id
        # moto reports a fixed Initiated time (2010-11-10), so only its form is checked here.
        assert_utc(upload.initiated)
        assert store.abort_upload(upload) is True
        assert store.abort_upload(upload) is False
        assert store.incomplete_uploads("backups/") == []
        assert [u.key for u in store.incomplete_uploads("")] == ["other/crashed.bin"]
        assert_nothing_under(backend, "backups/crashed.bin")

    def test_missing_object_is_not_found(self, store: ObjectStore) -> None:
        with pytest.raises(NotFound, match=r"missing\.bin"):
            store.stat("backups/missing.bin")
        with pytest.raises(NotFound, match=r"missing\.bin"):
            store.get_bytes("backups/missing.bin")
        with pytest.raises(NotFound, match=r"missing\.bin"):
            store.open_read("backups/missing.bin")

    @pytest.mark.parametrize("size", [SMALL, LARGE])
    def test_wrong_checksum_is_rejected_and_nothing_stored(
        self, backend: Backend, tmp_path: Path, size: int
    ) -> None:
        path = write_file(tmp_path, payload(size, seed=3))
        with pytest.raises(ChecksumMismatch, match=r"bad\.bin"):
            backend.store.put_file("backups/bad.bin", path, crc32c=WRONG_CRC)
        assert_nothing_under(backend, "backups/bad.bin")

    @pytest.mark.parametrize(
        ("stated", "actual"), [(SMALL, SMALL - 1), (SMALL, SMALL + 1), (LARGE, LARGE - 1)]
    )
    def test_stream_of_other_length_is_rejected(
        self, backend: Backend, stated: int, actual: int
    ) -> None:
        data = payload(actual, seed=4)
        stream = TrickleStream(data)
        with pytest.raises(ChecksumMismatch, match=r"short\.bin"):
            backend.store.put_stream(
                "copies/short.bin",
                stream,  # type: ignore[arg-type]
                stated,
                crc32c=crc32c_of_bytes(data[:stated]),
            )
        assert_nothing_under(backend, "copies/short.bin")

    def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        store.put_bytes("backups/gone", b"data")
        store.delete("backups/gone")
        store.delete("backups/gone")
        store.delete("backups/never-there")
        with pytest.raises(NotFound):
            store.stat("backups/gone")

    def test_residency(self, backend: Backend) -> None:
        backend.store.check_residency(frozenset({backend.region}))
        backend.store.check_residency(frozenset({"us-east-2", backend.region}))
        with pytest.raises(ResidencyError, match=backend.region) as caught:
            backend.store.check_residency(frozenset({"us-east-2", "us-central1"}))
        assert backend.store.bucket in str(caught.value)
        assert "us-east-2" in str(caught.value)

    def test_residency_of_missing_bucket_is_not_found(self, backend: Backend) -> None:
        assert backend.missing_bucket_store is not None
        with pytest.raises(NotFound):
            backend.missing_bucket_store.check_residency(frozenset({backend.region}))

    def test_abort_incomplete_uploads(self, backend: Backend) -> None:
        if backend.leave_open_upload is not None:
            backend.leave_open_upload("backups/crashed.bin")
        open_before = backend.open_uploads("backups/")
        if backend.lists_uploads:
            assert open_before == 1
        assert backend.store.abort_incomplete_uploads("backups/") == open_before
        assert backend.store.abort_incomplete_uploads("backups/") == 0
        assert_nothing_under(backend, "backups/crashed.bin")


def interrupt_upload(store: ObjectStore, key: str, data: bytes, parts: int) -> None:
    """Upload ``data`` to ``key`` and stop while reading the part after ``parts`` parts."""
    stream = InterruptedStream(data, stop_at=parts * S3_PART_SIZE)
    with pytest.raises(Interrupted):
        store.put_stream(key, stream, len(data), crc32c=crc32c_of_bytes(data))  # type: ignore[arg-type]


PARTS = 3  # LARGE is two whole parts of S3_PART_SIZE and a short last one


class TestResume:
    """A retried upload resumes from the parts already stored (memory and S3)."""

    @pytest.mark.parametrize("stored", [1, 2])
    def test_interrupted_upload_is_resumed(
        self, resumable_backend: Backend, tmp_path: Path, stored: int
    ) -> None:
        store, sent = resumable_backend.store, resumable_backend.requests
        data = payload(LARGE, seed=10)
        interrupt_upload(store, "backups/r.bin", data, stored)
        assert sent == Counter(create_upload=1, upload_part=stored)
        assert [u.key for u in store.incomplete_uploads("backups/")] == ["backups/r.bin"]
        with pytest.raises(NotFound):
            store.stat("backups/r.bin")

        sent.clear()
        path = write_file(tmp_path, data)
        info = store.put_file("backups/r.bin", path, crc32c=crc32c_of_bytes(data))
        assert sent == Counter(upload_part=PARTS - stored)  # and no second CreateMultipartUpload
        assert content(info) == ObjectInfo("backups/r.bin", LARGE, crc32c_of_bytes(data))
        assert store.get_bytes("backups/r.bin") == data
        assert store.incomplete_uploads("backups/") == []

    @pytest.mark.parametrize("stored", [0, 2])
    def test_transient_error_on_a_part_is_resumed_by_the_retry(
        self, resumable_backend: Backend, tmp_path: Path, stored: int
    ) -> None:
        store, sent = resumable_backend.store, resumable_backend.requests
        assert resumable_backend.fail_part_after is not None
        if isinstance(store, S3Store):
            # one part at a time, so that the requests say exactly what was sent; parts in
            # flight together have their own test below
            store.upload_concurrency = 1
        data = payload(LARGE, seed=11)
        path = write_file(tmp_path, data)
        resumable_backend.fail_part_after(stored)
        with pytest.raises(TransientStoreError, match=r"r\.bin"):
            store.put_file("backups/r.bin", path, crc32c=crc32c_of_bytes(data))
        # No retry inside the store: the failing part was tried once, and the upload waits.
        assert sent == Counter(create_upload=1, upload_part=stored + 1)
        assert len(store.incomplete_uploads("backups/r.bin")) == 1

        sent.clear()
        store.put_file("backups/r.bin", path, crc32c=crc32c_of_bytes(data))  # Celery's retry
        # An upload that holds no part yet is resumed too: no second upload is started.
        assert sent == Counter(upload_part=PARTS - stored)
        assert store.get_bytes("backups/r.bin") == data
        assert store.incomplete_uploads("backups/") == []

    @pytest.mark.parametrize("let_through", [0, 1, 2])
    def test_a_part_failing_while_others_are_in_flight_leaves_the_upload_to_resume(
        self, s3_backend: Backend, tmp_path: Path, let_through: int
    ) -> None:
        """Parts go out side by side, so the one that fails may leave a hole before parts that
        were stored (part 1 failing while 2 and 3 landed): the retry still resumes the same
        upload, never starts a second one."""
        store, sent = s3_backend.store, s3_backend.requests
        assert isinstance(store, S3Store) and store.upload_concurrency >= PARTS
        assert s3_backend.fail_part_after is not None
        data = payload(LARGE, seed=21)
        path = write_file(tmp_path, data)
        s3_backend.fail_part_after(let_through)  # the part after these fails
        with pytest.raises(TransientStoreError, match=r"r\.bin"):
            store.put_file("backups/r.bin", path, crc32c=crc32c_of_bytes(data))
        # No retry inside the store: the failing part was tried once; the parts after it were
        # sent beside it or, not started yet when it failed, cancelled.
        assert sent["create_upload"] == 1
        assert let_through + 1 <= sent["upload_part"] <= PARTS, sent
        assert len(store.incomplete_uploads("backups/r.bin")) == 1  # not completed, kept
        with pytest.raises(NotFound):
            store.stat("backups/r.bin")

        sent.clear()
        store.put_file("backups/r.bin", path, crc32c=crc32c_of_bytes(data))  # Celery's retry
        assert sent["create_upload"] == 0, sent  # the same upload, resumed
        assert 1 <= sent["upload_part"] <= PARTS, sent
        assert store.get_bytes("backups/r.bin") == data
        assert store.incomplete_uploads("backups/") == []

    def test_upload_of_other_bytes_is_aborted_and_started_afresh(
        self, resumable_backend: Backend, tmp_path: Path
    ) -> None:
        store, sent = resumable_backend.store, resumable_backend.requests
        interrupt_upload(store, "backups/r.bin", payload(LARGE, seed=12), 2)
        sent.clear()
        data = payload(LARGE, seed=13)  # the same size, other bytes from part 1 on
        store.put_file("backups/r.bin", write_file(tmp_path, data), crc32c=crc32c_of_bytes(data))
        assert sent == Counter(create_upload=1, upload_part=PARTS)
        assert store.get_bytes("backups/r.bin") == data
        assert store.incomplete_uploads("backups/") == []  # the old upload was aborted

    def test_parts_after_the_first_difference_are_sent_again(
        self, resumable_backend: Backend, tmp_path: Path
    ) -> None:
        store, sent = resumable_backend.store, resumable_backend.requests
        old = payload(LARGE, seed=14)
        interrupt_upload(store, "backups/r.bin", old, 2)
        sent.clear()
        data = bytearray(old)
        data[S3_PART_SIZE + 7] ^= 0xFF  # part 1 is the same, part 2 differs in one byte
        new = bytes(data)
        store.put_file("backups/r.bin", write_file(tmp_path, new), crc32c=crc32c_of_bytes(new))
        assert sent == Counter(upload_part=PARTS - 1)
        assert store.get_bytes("backups/r.bin") == new

    def test_upload_in_parts_of_another_size_is_started_afresh(
        self, resumable_backend: Backend, tmp_path: Path
    ) -> None:
        store, sent = resumable_backend.store, resumable_backend.requests
        data = payload(LARGE, seed=15)
        interrupt_upload(store, "backups/r.bin", data, 1)
        sent.clear()
        store.part_size = S3_PART_SIZE + 1 * MiB  # type: ignore[attr-defined]  # a reconfiguration
        store.put_file("backups/r.bin", write_file(tmp_path, data), crc32c=crc32c_of_bytes(data))
        assert sent == Counter(create_upload=1, upload_part=2)
        assert store.get_bytes("backups/r.bin") == data
        assert store.incomplete_uploads("backups/") == []

    def test_wrong_checksum_after_a_resume_leaves_nothing(
        self, resumable_backend: Backend, tmp_path: Path
    ) -> None:
        store = resumable_backend.store
        data = payload(LARGE, seed=16)
        interrupt_upload(store, "backups/r.bin", data, 2)
        with pytest.raises(ChecksumMismatch, match=r"r\.bin"):
            store.put_file("backups/r.bin", write_file(tmp_path, data), crc32c=WRONG_CRC)
        assert_nothing_under(resumable_backend, "backups/r.bin")
        assert store.incomplete_uploads("backups/") == []

    def test_only_uploads_of_exactly_the_key_are_resumed(
        self, resumable_backend: Backend, tmp_path: Path
    ) -> None:
        store, sent = resumable_backend.store, resumable_backend.requests
        data = payload(LARGE, seed=17)
        interrupt_upload(store, "backups/r.bin.old", data, 2)
        sent.clear()
        store.put_file("backups/r.bin", write_file(tmp_path, data), crc32c=crc32c_of_bytes(data))
        assert sent == Counter(create_upload=1, upload_part=PARTS)
        assert [u.key for u in store.incomplete_uploads("backups/")] == ["backups/r.bin.old"]


# -- S3 only ---------------------------------------------------------------------------------


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"the {code} message"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("SlowDown", 503), TransientStoreError),
        (_client_error("InternalError", 500), TransientStoreError),
        (_client_error("NoSuchKey", 404), NotFound),
        (_client_error("404", 404), NotFound),
        (_client_error("NoSuchBucket", 404), NotFound),
        (_client_error("AccessDenied", 403), PermanentStoreError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientStoreError),
    ],
)
def test_s3_error_translation(exc: Exception, expected: type[StoreError]) -> None:
    translated = s3.translate_error(exc, "s3://bucket/backups/a.bin", "upload")
    assert type(translated) is expected
    assert "s3://bucket/backups/a.bin" in str(translated)


def test_s3_server_gone_midway_is_transient(tmp_path: Path) -> None:
    server: ServerProcess = start_moto(tmp_path / "moto.log")
    try:
        client = s3.make_s3_client(S3_REGION, server.url, connect_timeout=0.5, read_timeout=2.0)
        bucket = new_bucket_name()
        client.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": S3_REGION}
        )
        store = s3.S3Store(bucket, S3_REGION, client=client)
        store.put_bytes("backups/a.bin", b"data")
    finally:
        server.stop()
    with pytest.raises(TransientStoreError, match="s3://"):
        store.stat("backups/a.bin")
    with pytest.raises(TransientStoreError):
        store.put_bytes("backups/b.bin", b"data")


def test_s3_resumes_the_open_upload_holding_the_most_parts(
    s3_backend: Backend, s3_client: Any, tmp_path: Path
) -> None:
    store, sent = s3_backend.store, s3_backend.requests
    assert isinstance(store, s3.S3Store)
    data, other = payload(LARGE, seed=20), payload(LARGE, seed=21)
    key = "backups/many.bin"

    def open_upload(source: bytes, parts: int) -> None:
        upload_id = s3_client.create_multipart_upload(
            Bucket=store.bucket, Key=key, ChecksumAlgorithm="CRC32C", ChecksumType="FULL_OBJECT"
        )["UploadId"]
        for number in range(1, parts + 1):
            body = source[(number - 1) * S3_PART_SIZE : number * S3_PART_SIZE]
            s3_client.upload_part(
                Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                ChecksumAlgorithm="CRC32C", ChecksumCRC32C=crc32c_of_bytes(body),
            )

    open_upload(data, 1)
    open_upload(data, 2)
    open_upload(other, 2)
    assert s3_backend.leave_open_upload is not None
    s3_backend.leave_open_upload(key)  # started without a full-object CRC32C: never resumed
    assert len(store.incomplete_uploads(key)) == 4

    store.put_file(key, write_file(tmp_path, data), crc32c=crc32c_of_bytes(data))
    # Only part 3 was sent: only the second upload holds parts 1 and 2 of these bytes.
    assert sent == Counter(upload_part=PARTS - 2)
    assert store.get_bytes(key) == data
    assert store.incomplete_uploads("backups/") == []  # the others were aborted


def test_s3_upload_holding_every_part_is_only_completed(
    s3_backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, sent = s3_backend.store, s3_backend.requests
    assert isinstance(store, s3.S3Store)
    data = payload(LARGE, seed=22)
    path = write_file(tmp_path, data)

    def unavailable(**kwargs: Any) -> Any:
        raise _client_error("ServiceUnavailable", 503)

    monkeypatch.setattr(store._client, "complete_multipart_upload", unavailable)
    with pytest.raises(TransientStoreError):
        store.put_file("backups/c.bin", path, crc32c=crc32c_of_bytes(data))
    monkeypatch.undo()
    assert sent == Counter(create_upload=1, upload_part=PARTS)

    sent.clear()
    store.put_file("backups/c.bin", path, crc32c=crc32c_of_bytes(data))
    assert sent == Counter()
    assert store.get_bytes("backups/c.bin") == data


class _Body:
    """The raw body botocore reads a response from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def test_s3_client_makes_one_attempt() -> None:
    # Nothing listens on the endpoint: every request is answered by the before-send hook, after
    # botocore has signed it and before it would go out (retries happen around this point).
    client = s3.make_s3_client(S3_REGION, "http://127.0.0.1:9")
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}
    sent: list[str] = []

    def throttled(request: Any, **_: Any) -> AWSResponse:
        sent.append(request.method)
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))

    # (With botocore's default retries the same hook sees three requests per call.)
    client.meta.events.register("before-send.s3", throttled)
    store = s3.S3Store("rv-test-bucket", S3_REGION, client=client)
    with pytest.raises(TransientStoreError, match="SlowDown"):
        store.get_bytes("backups/a.bin")
    assert sent == ["GET"]
    sent.clear()
    with pytest.raises(TransientStoreError, match="SlowDown"):
        store.put_bytes("backups/a.bin", b"data")
    assert sent == ["PUT"]


def test_s3_object_with_other_reported_checksum_is_deleted(
    s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto does not check checksums itself; pretend S3 stored other bytes than were sent.
    store = s3_backend.store
    assert isinstance(store, s3.S3Store)
    real_head_object = store._client.head_object

    def lying_head_object(**kwargs: Any) -> Any:
        return {**real_head_object(**kwargs), "ChecksumCRC32C": WRONG_CRC}

    monkeypatch.setattr(store._client, "head_object", lying_head_object)
    with pytest.raises(ChecksumMismatch, match="deleted s3://"):
        store.put_bytes("backups/rot.bin", b"data")
    monkeypatch.undo()
    assert_nothing_under(s3_backend, "backups/rot.bin")


def test_s3_bucket_without_location_constraint_is_in_us_east_1(
    moto_server: ServerProcess,
) -> None:
    client = s3.make_s3_client("us-east-1", moto_server.url)
    bucket = new_bucket_name()
    client.create_bucket(Bucket=bucket)
    store = s3.S3Store(bucket, "us-east-1", client=client)
    store.check_residency(frozenset({"us-east-1"}))
    with pytest.raises(ResidencyError, match="us-east-1"):
        store.check_residency(frozenset({"us-east-2"}))


# -- GCS only --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_gcs_server_rejects_wrong_checksum(
    gcs_backend: Backend, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # Switch off the client-side check to prove the server-side one: the expected CRC32C
    # travels with the upload and the server refuses bytes that do not match it.
    monkeypatch.setattr(streams.CheckedReader, "_check_end", lambda self: None)
    data = payload(size, seed=6)
    with pytest.raises(ChecksumMismatch, match="gs://"):
        gcs_backend.store.put_stream("backups/bad.bin", io.BytesIO(data), size, crc32c=WRONG_CRC)
    assert_nothing_under(gcs_backend, "backups/bad.bin")


class _Recording(requests.adapters.HTTPAdapter):
    """Sends every request for real, recording (method, bytes of body) of those for objects."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, int]] = []

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        # Only object requests (".../o", ".../o/<name>"): the library also fetches the bucket's
        # metadata in a background thread, for tracing (see _Unavailable).
        if "/o" in urlsplit(str(request.url)).path:
            self.sent.append((str(request.method), int(request.headers.get("Content-Length", 0))))
        return super().send(request, *args, **kwargs)


@pytest.mark.parametrize("size", [0, SMALL, LARGE])
def test_gcs_upload_sends_the_object_in_one_request(
    gcs_backend: Backend, tmp_path: Path, size: int
) -> None:
    # Not one request per chunk (LARGE is 44 chunks of the store's 256 KiB): the session is
    # started, one PUT streams every byte, and the stored object is checked.
    store = gcs_backend.store
    assert isinstance(store, gcs.GCSStore)
    adapter = _Recording()
    store._client._http.mount("http://", adapter)
    data = payload(size, seed=24)
    path = write_file(tmp_path, data)
    info = store.put_file("backups/one.bin", path, crc32c=crc32c_of_bytes(data))
    assert info.size == size
    assert [method for method, _ in adapter.sent] == ["POST", "PUT", "GET"]
    assert adapter.sent[1] == ("PUT", size)
    assert store.get_bytes("backups/one.bin") == data


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_gcs_client_check_alone_keeps_a_wrong_upload_from_being_committed(
    gcs_backend: Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, size: int
) -> None:
    # The converse of test_gcs_server_rejects_wrong_checksum: a session without the expected
    # CRC32C, so the server would keep whatever arrives. The reader's check raises before the
    # last block is sent: the request ends short and nothing is committed.
    store = gcs_backend.store
    assert isinstance(store, gcs.GCSStore)

    def session_without_checksum(key: str, size: int, crc32c: str,
                                 retention: dict[str, str] | None = None) -> str:
        url: str = store._bucket.blob(key).create_resumable_upload_session(size=size, retry=None)
        return url

    monkeypatch.setattr(store, "_start_upload", session_without_checksum)
    path = write_file(tmp_path, payload(size, seed=26))
    with pytest.raises(ChecksumMismatch, match="refusing to store gs://"):
        store.put_file("backups/bad.bin", path, crc32c=WRONG_CRC)
    assert_nothing_under(gcs_backend, "backups/bad.bin")


def test_gcs_source_failing_mid_upload_is_raised_and_stores_nothing(
    gcs_backend: Backend,
) -> None:
    # Copying from S3: the download fails half-way through the one upload request.
    data = payload(LARGE, seed=27)

    class FailingDownload(InterruptedStream):
        def readinto(self, buffer: Any) -> int:
            try:
                return super().readinto(buffer)
            except Interrupted:
                raise TransientStoreError("cannot read s3://b/k: the connection to S3 failed; "
                                          "retry later") from None

    stream = FailingDownload(data, stop_at=LARGE // 2)
    with pytest.raises(TransientStoreError, match="connection to S3 failed"):
        gcs_backend.store.put_stream("copies/half.bin", stream,  # type: ignore[arg-type]
                                     LARGE, crc32c=crc32c_of_bytes(data))
    assert_nothing_under(gcs_backend, "copies/half.bin")


def test_gcs_upload_that_arrives_short_is_transient_and_stores_nothing(
    gcs_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GCS answers 308 ("resume incomplete") when it did not get every byte of the session.
    store = gcs_backend.store
    assert isinstance(store, gcs.GCSStore)

    def short(self: Any, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        if request.method != "PUT":
            return real_send(self, request, *args, **kwargs)
        response = requests.Response()
        response.status_code = 308
        response.headers["Range"] = "bytes=0-262143"
        response.url = str(request.url)
        response.request = request
        return response

    real_send = requests.adapters.HTTPAdapter.send
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", short)
    data = payload(LARGE, seed=25)
    with pytest.raises(TransientStoreError, match=r"gs://.*received only part"):
        store.put_stream("backups/short.bin", io.BytesIO(data), LARGE,
                         crc32c=crc32c_of_bytes(data))
    monkeypatch.undo()
    assert_nothing_under(gcs_backend, "backups/short.bin")


def test_gcs_object_with_other_reported_checksum_is_deleted(
    gcs_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last check, after the upload: pretend GCS stored other bytes than were sent.
    store = gcs_backend.store
    assert isinstance(store, gcs.GCSStore)
    real_reload = store._reload

    def lying_reload(key: str, action: str) -> Any:
        blob = real_reload(key, action)
        blob._properties["crc32c"] = WRONG_CRC
        return blob

    monkeypatch.setattr(store, "_reload", lying_reload)
    with pytest.raises(ChecksumMismatch, match="deleted gs://"):
        store.put_bytes("backups/rot.bin", b"data")
    monkeypatch.undo()
    assert_nothing_under(gcs_backend, "backups/rot.bin")


class _Unavailable(requests.adapters.BaseAdapter):
    """Answers every request with 503, counting those for objects."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def send(self, request: Any, *args: Any, **kwargs: Any) -> requests.Response:
        # google-cloud-storage (3.17) also fetches the bucket's metadata in a background
        # thread, for tracing attributes (DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA turns
        # it off); that is none of our calls, so it is not counted.
        if not urlsplit(str(request.url)).path.endswith("/b/rv-test-bucket"):
            self.sent.append(str(request.method))
        response = requests.Response()
        response.status_code = 503
        response.headers["Content-Type"] = "application/json"
        response._content = b'{"error": {"code": 503, "message": "Backend Error"}}'
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        pass


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_gcs_makes_one_attempt(size: int) -> None:
    # The library's own retry is off (retry=None everywhere, the resumable upload's too):
    # a 503 reaches the caller after one request. Nothing listens on the endpoint.
    store = gcs.GCSStore(
        "rv-test-bucket", GCS_LOCATION, project=GCS_PROJECT, endpoint_url="http://127.0.0.1:9",
        anonymous=True, chunk_size=256 * 1024,
    )
    adapter = _Unavailable()
    store._client._http.mount("http://", adapter)
    data = payload(size, seed=23)
    with pytest.raises(TransientStoreError, match="gs://"):
        store.put_stream("backups/a.bin", io.BytesIO(data), size, crc32c=crc32c_of_bytes(data))
    assert adapter.sent == ["POST"]  # the upload, or the start of the resumable session
    for read in (store.stat, store.get_bytes, lambda key: list(store.list_keys(key))):
        adapter.sent.clear()
        with pytest.raises(TransientStoreError, match="gs://"):
            read("backups/a.bin")
        assert adapter.sent == ["GET"]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (api_exceptions.TooManyRequests("slow down"), TransientStoreError),
        (api_exceptions.ServiceUnavailable("later"), TransientStoreError),
        (api_exceptions.NotFound("no such object"), NotFound),
        (api_exceptions.Forbidden("no"), PermanentStoreError),
        (api_exceptions.BadRequest("Provided CRC32C doesn't match"), ChecksumMismatch),
    ],
)
def test_gcs_error_translation(exc: Exception, expected: type[StoreError]) -> None:
    translated = gcs.translate_error(exc, "gs://bucket/backups/a.bin", "upload")
    assert type(translated) is expected
    assert "gs://bucket/backups/a.bin" in str(translated)


# -- memory only -----------------------------------------------------------------------------


def test_memory_modified_follows_its_clock() -> None:
    now = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
    store = MemoryStore("rv-test", "europe-west4", part_size=S3_PART_SIZE, clock=lambda: now)
    store.put_bytes("backups/a.bin", b"abc")
    assert store.stat("backups/a.bin").modified == now
    assert [info.modified for info in store.list_info("backups/")] == [now]


@pytest.mark.parametrize("keep_checksum", [False, True])
def test_memory_corrupt_flips_a_byte(keep_checksum: bool) -> None:
    store = MemoryStore("rv-test", "europe-west4")
    store.put_bytes("backups/a.bin", b"abc")
    store.corrupt("backups/a.bin", 1, keep_checksum=keep_checksum)
    assert store.get_bytes("backups/a.bin") == b"a\x9dc"
    reported = store.stat("backups/a.bin").crc32c
    assert (reported == crc32c_of_bytes(b"abc")) is keep_checksum


# -- locks (every store; see "Locks" in regionvault.stores.base) ----------------------------

GCS_RETENTION_SCHEMA = json.loads(
    (Path(__file__).parents[1] / "schemas" / "gcs_object_retention.json").read_text())


def validate_gcs(instance: Any, definition: str) -> None:
    """Validate a request against one ``$defs`` entry of gcs_object_retention.json."""
    jsonschema.validate(instance, {"$schema": GCS_RETENTION_SCHEMA["$schema"],
                                   "$defs": GCS_RETENTION_SCHEMA["$defs"],
                                   "$ref": f"#/$defs/{definition}"})


def in_a_day() -> datetime:
    # Microseconds on purpose: the lock is cut to the whole second at or before it.
    return datetime.now(UTC).replace(microsecond=654321) + timedelta(days=1)


def whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def put_locked(backend: Backend, key: str, data: bytes, until: datetime) -> ObjectInfo:
    return backend.store.put_stream(key, io.BytesIO(data), len(data),
                                    crc32c=crc32c_of_bytes(data), retain_until=until)


class TestObjectLock:
    """What every store built with a lock mode must do; GCS's emulator ignores object
    retention, so there the requests are checked against the API's schema instead."""

    @pytest.mark.parametrize("size", [SMALL, LARGE])
    def test_a_write_with_retain_until_is_locked_until_then(
            self, locked_backend: Backend, size: int) -> None:
        until = in_a_day()
        info = put_locked(locked_backend, "backups/l.bin", payload(size, seed=30), until)
        stat = locked_backend.store.stat("backups/l.bin")
        if locked_backend.enforces_locks:
            # never later than asked: the whole second at or before it
            assert info.retain_until == whole_second(until)
            assert stat.retain_until == whole_second(until)
        else:  # GCS emulator: the request carries the retention, nothing reports it
            (body,) = locked_backend.upload_metadata
            validate_gcs(body, "objectInsert")
            assert body["retention"] == {
                "mode": "Unlocked",
                "retainUntilTime": whole_second(until).strftime("%Y-%m-%dT%H:%M:%SZ")}

    def test_a_locked_object_cannot_be_deleted_before_its_date(
            self, enforcing_backend: Backend) -> None:
        locked_backend = enforcing_backend
        assert locked_backend.versions is not None
        until = in_a_day()
        put_locked(locked_backend, "backups/l.bin", b"locked bytes", until)
        with pytest.raises(ObjectLocked, match=r"backups/l\.bin") as refused:
            locked_backend.store.delete("backups/l.bin")
        assert whole_second(until).isoformat() in str(refused.value)
        assert locked_backend.store.get_bytes("backups/l.bin") == b"locked bytes"
        assert locked_backend.versions("backups/l.bin") == 1  # no delete marker either
        assert list(locked_backend.store.list_keys("backups/")) == ["backups/l.bin"]

    def test_an_overwrite_keeps_the_locked_version(self, enforcing_backend: Backend) -> None:
        locked_backend = enforcing_backend
        assert locked_backend.versions is not None
        until = in_a_day()
        put_locked(locked_backend, "backups/l.bin", b"first", until)
        put_locked(locked_backend, "backups/l.bin", b"second", until)  # a retried upload
        assert locked_backend.store.get_bytes("backups/l.bin") == b"second"
        assert locked_backend.versions("backups/l.bin") == 2
        with pytest.raises(ObjectLocked):
            locked_backend.store.delete("backups/l.bin")
        # refused on the noncurrent version: the current one is still there to find
        assert locked_backend.store.get_bytes("backups/l.bin") == b"second"

    def test_delete_removes_every_version(self, locked_backend: Backend) -> None:
        assert locked_backend.versions is not None
        for text in (b"one", b"two", b"three"):  # a manifest rewritten twice: never locked
            locked_backend.store.put_bytes("backups/m.json", text)
        locked_backend.store.delete("backups/m.json")
        locked_backend.store.delete("backups/m.json")
        assert locked_backend.versions("backups/m.json") == 0
        with pytest.raises(NotFound):
            locked_backend.store.stat("backups/m.json")

    def test_delete_noncurrent_versions_keeps_only_the_current_one(
            self, locked_backend: Backend) -> None:
        assert locked_backend.versions is not None
        for text in (b"one", b"two", b"three"):
            locked_backend.store.put_bytes("backups/m.json", text)
        expected = 2 if locked_backend.enforces_locks else 0  # the emulator keeps no versions
        assert locked_backend.store.delete_noncurrent_versions("backups/m.json") == expected
        assert locked_backend.store.delete_noncurrent_versions("backups/m.json") == 0
        assert locked_backend.store.get_bytes("backups/m.json") == b"three"
        assert locked_backend.versions("backups/m.json") == 1

    def test_manifests_are_never_locked(self, locked_backend: Backend) -> None:
        info = locked_backend.store.put_bytes("backups/m.json", b"{}")
        assert info.retain_until is None
        locked_backend.store.delete("backups/m.json")
        assert list(locked_backend.store.list_keys("backups/")) == []

    def test_a_date_already_past_stores_the_object_unlocked(self, locked_backend: Backend) -> None:
        past = datetime.now(UTC) - timedelta(hours=1)
        info = put_locked(locked_backend, "backups/late.bin", b"due already", past)
        assert info.retain_until is None
        locked_backend.store.delete("backups/late.bin")
        assert list(locked_backend.store.list_keys("backups/")) == []

    def test_a_naive_date_is_refused(self, locked_backend: Backend) -> None:
        with pytest.raises(ValueError, match="time zone"):
            put_locked(locked_backend, "backups/n.bin", b"x", datetime(2030, 1, 1))

    def test_lock_settings(self, locked_backend: Backend) -> None:
        settings = locked_backend.store.lock_settings()
        assert settings.bucket == locked_backend.store.bucket
        assert settings.default_retention is None
        if locked_backend.enforces_locks:
            assert (settings.versioned, settings.lock_enabled) == (True, True)
        else:  # the emulator never reports objectRetention
            assert settings.lock_enabled is False
        with pytest.raises(NotFound):
            locked_backend.missing_bucket_store.lock_settings()


def test_a_store_without_a_lock_mode_locks_nothing(store: ObjectStore) -> None:
    # The chain may pass retain_until whatever the domain's setting: off means off.
    info = store.put_stream("backups/u.bin", io.BytesIO(b"data"), 4,
                            crc32c=crc32c_of_bytes(b"data"), retain_until=in_a_day())
    assert info.retain_until is None
    store.delete("backups/u.bin")
    assert list(store.list_keys("backups/")) == []
    assert store.lock_settings().lock_enabled is False


def test_a_bucket_that_cannot_lock_refuses_a_locked_write(refusing_backend: Backend) -> None:
    store = refusing_backend.store
    store.lock_mode = "governance"  # a domain configured with a lock its bucket lacks
    with pytest.raises(PermanentStoreError, match=r"l\.bin"):
        store.put_stream("backups/l.bin", io.BytesIO(b"data"), 4,
                         crc32c=crc32c_of_bytes(b"data"), retain_until=in_a_day())
    assert list(store.list_keys("backups/")) == []


def test_memory_lock_ends_by_its_clock(locked_memory_backend: Backend) -> None:
    clock, store = locked_memory_backend.clock, locked_memory_backend.store
    assert clock is not None and locked_memory_backend.versions is not None
    until = clock.now + timedelta(seconds=30)
    put_locked(locked_memory_backend, "backups/l.bin", b"one", until)
    put_locked(locked_memory_backend, "backups/l.bin", b"two", until)
    clock.advance(timedelta(seconds=29))
    with pytest.raises(ObjectLocked):
        store.delete("backups/l.bin")
    clock.advance(timedelta(seconds=1))  # the date itself: unlocked
    store.delete("backups/l.bin")
    assert locked_memory_backend.versions("backups/l.bin") == 0


def test_s3_lock_is_asked_for_in_the_request_that_creates_the_object(
        locked_s3_backend: Backend) -> None:
    """PutObject and CreateMultipartUpload carry the lock. moto (5.2) ignores the lock of a
    multipart upload, so the store sets it with PutObjectRetention after checking; S3 itself
    honours it and the check finds it in place."""
    sent = locked_s3_backend.requests
    until = in_a_day()
    small = put_locked(locked_s3_backend, "backups/small.bin", payload(SMALL), until)
    assert sent == Counter({"PutObject": 1, "PutObject locked": 1})
    sent.clear()
    large = put_locked(locked_s3_backend, "backups/large.bin", payload(LARGE), until)
    assert sent == Counter({"CreateMultipartUpload": 1, "CreateMultipartUpload locked": 1,
                            "PutObjectRetention": 1})
    assert small.retain_until == large.retain_until == whole_second(until)


def test_s3_refused_delete_is_object_locked_and_a_plain_refusal_is_not(
        locked_s3_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    store = locked_s3_backend.store
    assert isinstance(store, S3Store)
    store.put_bytes("backups/m.json", b"{}")

    def denied(**kwargs: Any) -> Any:
        raise _client_error("AccessDenied", 403)

    monkeypatch.setattr(store._client, "delete_object", denied)
    with pytest.raises(PermanentStoreError) as caught:  # the credential's own refusal
        store.delete("backups/m.json")
    assert not isinstance(caught.value, ObjectLocked)


def test_gcs_refused_delete_of_a_retained_generation_is_object_locked(
        gcs_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    # What real GCS answers for a generation under retention (the emulator never refuses).
    store = gcs_backend.store
    assert isinstance(store, gcs.GCSStore)
    store.put_bytes("backups/l.bin", b"data")
    blob = store._bucket.blob("backups/l.bin")
    blob.reload()
    blob._properties["retention"] = {"mode": "Locked", "retainUntilTime": "2030-01-02T03:04:05Z"}

    def forbidden(**kwargs: Any) -> None:
        raise api_exceptions.Forbidden("Object is under active retention")

    monkeypatch.setattr(blob, "delete", forbidden)
    monkeypatch.setattr(store, "_generations_of", lambda key: [blob])
    with pytest.raises(ObjectLocked, match=r"gs://.*l\.bin.*2030-01-02T03:04:05\+00:00"):
        store.delete("backups/l.bin")
    blob._properties.pop("retention")
    with pytest.raises(PermanentStoreError) as caught:  # no retention: the credential's own
        store.delete("backups/l.bin")
    assert not isinstance(caught.value, ObjectLocked)


def test_s3_lock_settings_report_a_default_retention_rule(
        locked_s3_backend: Backend, s3_client: Any) -> None:
    bucket = locked_s3_backend.store.bucket
    s3_client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 30}}})
    assert locked_s3_backend.store.lock_settings().default_retention == "GOVERNANCE 30 days"
