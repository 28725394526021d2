"""One conformance suite for every ObjectStore: memory, S3 (moto server), GCS (emulator).

``TestObjectStoreContract`` is the contract written in ``regionvault.stores.base`` as tests; it
runs once per store through the parametrised ``backend`` fixture. The functions after it check
what only one cloud has: error translation, retries of a part, the server-side checks.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from google.api_core import exceptions as api_exceptions

from regionvault.checksums import crc32c_of_bytes
from regionvault.errors import (
    ChecksumMismatch,
    NotFound,
    PermanentStoreError,
    ResidencyError,
    StoreError,
    TransientStoreError,
)
from regionvault.stores import gcs, s3, streams
from regionvault.stores.base import ObjectInfo, ObjectStore
from regionvault.stores.memory import MemoryStore

from .conftest import (
    S3_PART_SIZE,
    S3_REGION,
    Backend,
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


def assert_nothing_under(backend: Backend, key: str) -> None:
    with pytest.raises(NotFound):
        backend.store.stat(key)
    assert list(backend.store.list_keys(key)) == []
    assert backend.open_uploads(key) == 0


class TestObjectStoreContract:
    """What every ObjectStore must do (see ``regionvault.stores.base.ObjectStore``)."""

    def test_is_an_object_store(self, store: ObjectStore) -> None:
        assert isinstance(store, ObjectStore)
        assert store.name in {"s3", "gcs", "memory"}

    def test_put_file_round_trip(self, store: ObjectStore, tmp_path: Path) -> None:
        data = payload(SMALL)
        crc = crc32c_of_bytes(data)
        info = store.put_file("backups/a.bin", write_file(tmp_path, data), crc32c=crc)
        assert info == ObjectInfo(key="backups/a.bin", size=len(data), crc32c=crc)
        assert store.get_bytes("backups/a.bin") == data
        with store.open_read("backups/a.bin") as stream:
            assert stream.read() == data

    def test_put_file_in_many_parts(self, store: ObjectStore, tmp_path: Path) -> None:
        data = payload(LARGE, seed=1)
        crc = crc32c_of_bytes(data)
        info = store.put_file("backups/large.bin", write_file(tmp_path, data), crc32c=crc)
        assert info == ObjectInfo(key="backups/large.bin", size=LARGE, crc32c=crc)
        assert store.stat("backups/large.bin") == info
        with store.open_read("backups/large.bin") as stream:
            assert read_in_pieces(stream) == data

    @pytest.mark.parametrize("size", [0, SMALL, LARGE])
    def test_put_stream(self, store: ObjectStore, size: int) -> None:
        data = payload(size, seed=2)
        crc = crc32c_of_bytes(data)
        info = store.put_stream("copies/s.bin", TrickleStream(data), size, crc32c=crc)  # type: ignore[arg-type]
        assert info == ObjectInfo(key="copies/s.bin", size=size, crc32c=crc)
        assert store.get_bytes("copies/s.bin") == data

    def test_put_bytes_and_stat(self, store: ObjectStore) -> None:
        manifest = b'{"version": 1, "backup": "b-1"}'
        info = store.put_bytes("backups/b-1.manifest.json", manifest)
        expected = ObjectInfo("backups/b-1.manifest.json", len(manifest), crc32c_of_bytes(manifest))
        assert info == expected
        assert store.stat("backups/b-1.manifest.json") == expected
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
        if backend.name == "s3":
            assert open_before == 1
        assert backend.store.abort_incomplete_uploads("backups/") == open_before
        assert backend.store.abort_incomplete_uploads("backups/") == 0
        assert_nothing_under(backend, "backups/crashed.bin")


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
        client = s3.make_s3_client(
            S3_REGION, server.url, max_attempts=1, connect_timeout=0.5, read_timeout=2.0
        )
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


def test_s3_part_is_retried_after_a_transient_error(
    s3_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3_backend.store
    assert isinstance(store, s3.S3Store)
    real_upload_part = store._client.upload_part
    calls: list[int] = []

    def flaky_upload_part(**kwargs: Any) -> Any:
        calls.append(kwargs["PartNumber"])
        if len(calls) == 2:
            raise _client_error("SlowDown", 503)
        return real_upload_part(**kwargs)

    monkeypatch.setattr(s3, "PART_RETRY_DELAY", 0.0)
    monkeypatch.setattr(store._client, "upload_part", flaky_upload_part)
    data = payload(2 * S3_PART_SIZE + 1, seed=5)
    store.put_stream("backups/r.bin", io.BytesIO(data), len(data), crc32c=crc32c_of_bytes(data))
    assert calls == [1, 2, 2, 3]
    assert store.get_bytes("backups/r.bin") == data


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


@pytest.mark.parametrize("keep_checksum", [False, True])
def test_memory_corrupt_flips_a_byte(keep_checksum: bool) -> None:
    store = MemoryStore("rv-test", "europe-west4")
    store.put_bytes("backups/a.bin", b"abc")
    store.corrupt("backups/a.bin", 1, keep_checksum=keep_checksum)
    assert store.get_bytes("backups/a.bin") == b"a\x9dc"
    reported = store.stat("backups/a.bin").crc32c
    assert (reported == crc32c_of_bytes(b"abc")) is keep_checksum
