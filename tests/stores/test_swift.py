"""What only the Swift store (Rackspace Cloud Files) does, against a real Swift cluster.

The conformance suite (test_conformance.py) runs the ObjectStore contract on Swift too; these
tests look behind the store with raw HTTP: large objects are Static Large Objects whose segments
Swift checks, a failed or replaced upload leaves no segment behind, tampered bytes are caught on
read, residency is the identity catalog's region, vendor errors are translated, one request is
one attempt, and the pii backstop gives an object and every segment of it one X-Delete-At, after
which Swift really answers 404 for all of them. ``FakeCloudFiles`` (an identity service and a
storage endpoint that answer what a test tells them) stands in only where a real server cannot
be made to fail on cue.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from regionvault.checksums import crc32c_of_bytes
from regionvault.devstack import swift as devstack_swift
from regionvault.devstack.services import ServiceStartError
from regionvault.devstack.swift import SwiftService, start_swift
from regionvault.errors import (
    ChecksumMismatch,
    ConfigError,
    NotFound,
    PermanentStoreError,
    ResidencyError,
    TransientStoreError,
)
from regionvault.stores import swift
from regionvault.stores.base import IncompleteUpload, ObjectStore
from regionvault.stores.swift import SwiftStore

from .conftest import (
    SWIFT_REGION,
    Interrupted,
    InterruptedStream,
    MiB,
    new_bucket_name,
    swift_store,
)

SEGMENT = 1 * MiB
LARGE = 2 * SEGMENT + 123_456  # three segments


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def put(store: ObjectStore, key: str, data: bytes, crc32c: str | None = None) -> None:
    store.put_stream(key, io.BytesIO(data), len(data), crc32c=crc32c or crc32c_of_bytes(data))


class RawSwift:
    """Plain HTTP on one region's account, with a tempauth token: what Swift really holds."""

    def __init__(self, server: SwiftService, region: str = SWIFT_REGION) -> None:
        self.url = server.storage_url(region)
        self.headers = {"X-Auth-Token": server.token()}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, f"{self.url}/{path}", headers=self.headers, timeout=10,
                                **kwargs)

    def listing(self, container: str, prefix: str = "") -> list[dict[str, Any]]:
        response = self.request("GET", container, params={"format": "json", "prefix": prefix})
        if response.status_code == 404:
            return []
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    def names(self, container: str, prefix: str = "") -> list[str]:
        return [item["name"] for item in self.listing(container, prefix)]


@pytest.fixture
def raw(swift_server: SwiftService) -> RawSwift:
    return RawSwift(swift_server)


@pytest.fixture
def container(swift_server: SwiftService) -> str:
    name = new_bucket_name()
    swift_server.create_container(SWIFT_REGION, name)
    return name


@pytest.fixture
def store(swift_server: SwiftService, container: str) -> SwiftStore:
    return swift_store(swift_server, container, segment_size=SEGMENT)


# -- large objects ---------------------------------------------------------------------------


def test_a_large_object_is_a_static_large_object_of_checked_segments(
        store: SwiftStore, raw: RawSwift) -> None:
    data = payload(LARGE, seed=1)
    put(store, "backups/big.bin", data)

    head = raw.request("HEAD", f"{store.bucket}/backups/big.bin")
    assert head.headers["X-Static-Large-Object"] == "True"
    assert head.headers["X-Object-Meta-Crc32c"] == crc32c_of_bytes(data)
    manifest = raw.request("GET", f"{store.bucket}/backups/big.bin",
                           params={"multipart-manifest": "get", "format": "raw"}).json()
    pieces = [data[i:i + SEGMENT] for i in range(0, LARGE, SEGMENT)]
    assert [(s["etag"], s["size_bytes"]) for s in manifest] == [(md5(p), len(p)) for p in pieces]
    upload_id = head.headers["X-Object-Meta-Rv-Upload"]
    assert [s["path"] for s in manifest] == [
        f"/{store.segments_container}/backups/big.bin/slo-{upload_id}/{n:08d}" for n in (1, 2, 3)]
    for segment, piece in zip(manifest, pieces, strict=True):
        stored = raw.request("HEAD", segment["path"].lstrip("/"))
        assert stored.headers["Etag"] == md5(piece)
        assert int(stored.headers["Content-Length"]) == len(piece)

    assert store.stat("backups/big.bin").crc32c == crc32c_of_bytes(data)
    assert store.get_bytes("backups/big.bin") == data
    [listed] = store.list_info("backups/")
    assert (listed.key, listed.size) == ("backups/big.bin", LARGE)
    assert store.incomplete_uploads("") == []  # a manifest names these segments


def test_a_segment_altered_on_the_way_is_refused_by_swift_and_nothing_is_left(
        store: SwiftStore, raw: RawSwift, monkeypatch: pytest.MonkeyPatch) -> None:
    real_put_object = swift.swiftclient.put_object

    def altered(url: str, token: str, container: str, name: str, contents: bytes,
                **kwargs: Any) -> str:
        if name.endswith("/00000002"):  # the ETag stays that of the bytes meant
            contents = b"\xff" + contents[1:]
        result: str = real_put_object(url, token, container, name, contents, **kwargs)
        return result

    monkeypatch.setattr(swift.swiftclient, "put_object", altered)
    with pytest.raises(ChecksumMismatch, match=r"swift://.*big\.bin.*ETag sent"):
        put(store, "backups/big.bin", payload(LARGE, seed=2))
    assert raw.names(store.bucket) == []
    assert raw.names(store.segments_container) == []


def test_a_wrong_crc32c_leaves_no_object_and_no_segment(store: SwiftStore,
                                                        raw: RawSwift) -> None:
    with pytest.raises(ChecksumMismatch, match=r"big\.bin"):
        put(store, "backups/big.bin", payload(LARGE, seed=3), crc32c_of_bytes(b"other"))
    assert raw.names(store.bucket) == []
    assert raw.names(store.segments_container) == []  # the first two were sent, then deleted


def test_delete_removes_the_segments(store: SwiftStore, raw: RawSwift) -> None:
    put(store, "backups/big.bin", payload(LARGE, seed=4))
    assert len(raw.names(store.segments_container)) == 3
    store.delete("backups/big.bin")
    store.delete("backups/big.bin")
    assert raw.names(store.bucket) == []
    assert raw.names(store.segments_container) == []


def test_an_overwrite_deletes_the_segments_it_replaced(store: SwiftStore, raw: RawSwift) -> None:
    put(store, "backups/big.bin", payload(LARGE, seed=5))
    first = raw.names(store.segments_container)
    data = payload(LARGE, seed=6)
    put(store, "backups/big.bin", data)
    second = raw.names(store.segments_container)
    assert len(second) == 3 and not set(first) & set(second)
    assert store.get_bytes("backups/big.bin") == data
    put(store, "backups/big.bin", b"small now")
    assert raw.names(store.segments_container) == []
    assert store.get_bytes("backups/big.bin") == b"small now"


def test_segments_grow_past_the_most_a_manifest_takes(store: SwiftStore) -> None:
    assert store._segment_size_for(LARGE) == SEGMENT
    assert store._segment_size_for(swift.MAX_SEGMENTS * SEGMENT + 1) == 2 * SEGMENT


# -- what a failed upload leaves -------------------------------------------------------------


def test_an_interrupted_upload_deletes_its_segments(store: SwiftStore, raw: RawSwift) -> None:
    data = payload(LARGE, seed=7)
    with pytest.raises(Interrupted):
        store.put_stream("backups/big.bin", InterruptedStream(data, 2 * SEGMENT),  # type: ignore[arg-type]
                         LARGE, crc32c=crc32c_of_bytes(data))
    assert raw.names(store.segments_container) == []
    assert store.incomplete_uploads("") == []


def test_segments_a_crash_left_are_listed_and_aborted(store: SwiftStore, raw: RawSwift) -> None:
    data = payload(LARGE, seed=8)
    put(store, "backups/big.bin", data)
    complete = raw.request("HEAD", f"{store.bucket}/backups/big.bin").headers[
        "X-Object-Meta-Rv-Upload"]
    crashed = "0123456789abcdef01234567"
    for name in ("backups/big.bin", "backups/other.bin"):  # segments of two crashed writers
        for number in (1, 2):
            response = raw.request("PUT", f"{store.segments_container}/{name}/slo-{crashed}/"
                                          f"{number:08d}", data=b"partial")
            assert response.status_code == 201

    uploads = store.incomplete_uploads("backups/big")
    assert [(u.key, u.upload_id) for u in uploads] == [("backups/big.bin", crashed)]
    assert uploads[0].initiated is not None and uploads[0].initiated.tzinfo == UTC
    # A manifest names the complete upload's segments: never aborted, even if asked.
    assert store.abort_upload(IncompleteUpload("backups/big.bin", complete, None)) is False
    assert store.abort_upload(uploads[0]) is True
    assert store.abort_upload(uploads[0]) is False
    assert store.abort_incomplete_uploads("backups/") == 1  # other.bin's
    assert store.incomplete_uploads("") == []
    assert store.get_bytes("backups/big.bin") == data
    assert {n.split("/")[2] for n in raw.names(store.segments_container)} == {f"slo-{complete}"}


def test_a_manifest_written_before_its_request_failed_keeps_its_segments(
        store: SwiftStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A timeout after Swift committed the manifest: deleting the segments would break it.
    real_put_manifest = store._put_manifest

    def committed_then_failed(*args: Any) -> None:
        real_put_manifest(*args)
        raise TransientStoreError("the answer to the manifest PUT timed out")

    monkeypatch.setattr(store, "_put_manifest", committed_then_failed)
    data = payload(LARGE, seed=9)
    with pytest.raises(TransientStoreError):
        put(store, "backups/big.bin", data)
    monkeypatch.undo()
    assert store.get_bytes("backups/big.bin") == data
    assert store.incomplete_uploads("") == []


def test_a_manifest_that_was_not_written_leaves_no_segment(
        store: SwiftStore, raw: RawSwift, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any) -> None:
        raise TransientStoreError("Cloud Files is unavailable")

    monkeypatch.setattr(store, "_put_manifest", refused)
    with pytest.raises(TransientStoreError):
        put(store, "backups/big.bin", payload(LARGE, seed=10))
    assert raw.names(store.segments_container) == []


# -- tampered bytes are caught on read -------------------------------------------------------


def read_all(store: SwiftStore, key: str, how: str) -> bytes:
    if how == "get_bytes":
        return store.get_bytes(key)
    with store.open_read(key) as stream:
        return stream.read()


@pytest.mark.parametrize("how", ["get_bytes", "open_read"])
@pytest.mark.parametrize("number", [1, 3])
def test_a_tampered_segment_is_caught_on_read(store: SwiftStore, raw: RawSwift,
                                              number: int, how: str) -> None:
    # Swift refuses the GET when the first segment differs from the manifest (409) and cuts the
    # response short when a later one does; both are told from a dropped connection.
    put(store, "backups/big.bin", payload(LARGE, seed=11))
    name = raw.names(store.segments_container)[number - 1]
    size = int(raw.request("HEAD", f"{store.segments_container}/{name}")
               .headers["Content-Length"])
    raw.request("PUT", f"{store.segments_container}/{name}", data=b"\0" * size)
    with pytest.raises(ChecksumMismatch, match=r"swift://.*big\.bin.*segment"):
        read_all(store, "backups/big.bin", how)


@pytest.mark.parametrize("how", ["get_bytes", "open_read"])
def test_bytes_rotten_on_disk_are_caught_on_read(store: SwiftStore, raw: RawSwift,
                                                 swift_server: SwiftService, how: str) -> None:
    # The object server sends what its disk holds (and quarantines it only afterwards), with
    # the Content-Length and metadata of what was written: only the CRC32C check sees it.
    data = payload(100_000, seed=12)
    put(store, "backups/small.bin", data)
    timestamp = raw.request("HEAD", f"{store.bucket}/backups/small.bin").headers["X-Timestamp"]
    [data_file] = swift_server.devices.glob(f"*/objects/*/*/*/{timestamp}.data")
    rotten = bytearray(data_file.read_bytes())
    rotten[5000] ^= 0xFF
    data_file.write_bytes(bytes(rotten))
    with pytest.raises(ChecksumMismatch, match=r"small\.bin.*CRC32C"):
        read_all(store, "backups/small.bin", how)


# -- residency -------------------------------------------------------------------------------


def test_residency_is_the_region_of_the_catalog_entry(swift_server: SwiftService) -> None:
    name = new_bucket_name()
    swift_server.create_container("DFW", name)
    store = SwiftStore(name, "DFW", auth_url=swift_server.identity_url, user=swift_server.user,
                       key=swift_server.key, insecure_http_ok=True)
    with pytest.raises(ResidencyError, match=rf"swift://{name} is in dfw.*allowed regions \(syd\)"):
        store.check_residency(frozenset({"syd"}))
    store.check_residency(frozenset({"dfw"}))
    # The same name in the SYD account is another container, which does not exist.
    with pytest.raises(NotFound):
        swift_store(swift_server, name).check_residency(frozenset({"syd"}))


# -- errors, attempts, authentication --------------------------------------------------------


def test_a_wrong_key_is_permanent_and_never_shown(swift_server: SwiftService,
                                                  container: str) -> None:
    store = SwiftStore(container, SWIFT_REGION, auth_url=swift_server.identity_url,
                       user=swift_server.user, key="not-the-key-123", insecure_http_ok=True)
    with pytest.raises(PermanentStoreError, match="refused the API key") as caught:
        store.stat("backups/a.bin")
    assert "not-the-key-123" not in str(caught.value)
    assert "not-the-key-123" not in repr(store)
    assert swift_server.key not in repr(swift_store(swift_server, container))


def test_an_http_identity_url_is_refused_outside_development() -> None:
    with pytest.raises(ConfigError, match="not https"):
        SwiftStore("c", "SYD", auth_url="http://identity.example/v2.0", user="u", key="k")


def test_a_locked_write_is_refused_and_a_past_date_is_not_a_lock(store: SwiftStore) -> None:
    store.lock_mode = "compliance"
    with pytest.raises(PermanentStoreError, match="Cloud Files cannot lock objects"):
        store.put_stream("backups/l.bin", io.BytesIO(b"data"), 4,
                         crc32c=crc32c_of_bytes(b"data"),
                         retain_until=datetime.now(UTC) + timedelta(days=1))
    info = store.put_stream("backups/l.bin", io.BytesIO(b"data"), 4,
                            crc32c=crc32c_of_bytes(b"data"),
                            retain_until=datetime.now(UTC) - timedelta(hours=1))
    assert info.retain_until is None


def test_a_stopped_proxy_is_transient(tmp_path: Path) -> None:
    server = start_swift(tmp_path / "swift")
    try:
        server.create_container(SWIFT_REGION, "c")
        store = swift_store(server, "c")
        store.put_bytes("backups/a.bin", b"data")
        server.processes[-1].stop()  # the proxy
        with pytest.raises(TransientStoreError, match=r"swift://c/backups/a\.bin.*connection"):
            store.stat("backups/a.bin")
        with pytest.raises(TransientStoreError):
            store.put_bytes("backups/b.bin", b"data")
        # A new store cannot authenticate either: the identity service cannot reach tempauth.
        with pytest.raises(TransientStoreError, match="identity service"):
            swift_store(server, "c").stat("backups/a.bin")
    finally:
        server.stop()


class FakeCloudFiles:
    """An identity service and a storage endpoint on one port.

    Token requests get a token valid for ``token_lifetime`` and a catalog of ``catalog``
    (region -> storage URL; the default lists this endpoint as SYD). Storage requests are
    answered with the statuses in ``answers``, in order, and with 503 once they run out; a 200
    carries an empty object's headers, a 201 the MD5 of what was sent as its ETag. ``sent``
    records every request.
    """

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.answers: list[int] = []
        self.identity_status = 200
        self.token_lifetime = timedelta(hours=24)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.catalog = [("SYD", f"{self.url}/v1/AUTH_au")]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def store(self, **options: Any) -> SwiftStore:
        return SwiftStore("c", "SYD", auth_url=f"{self.url}/v2.0", user="u", key="k",
                          insecure_http_ok=True, **options)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                fake.sent.append(f"{self.command} {self.path.split('?')[0]}")
                received = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v2.0/tokens":
                    expires = datetime.now(UTC) + fake.token_lifetime
                    body = json.dumps({"access": {
                        "token": {"id": "tk", "expires": expires.isoformat()},
                        "serviceCatalog": [{"type": "object-store", "endpoints": [
                            {"region": r, "publicURL": u} for r, u in fake.catalog]}]}}).encode()
                    self._send(fake.identity_status, body, "application/json")
                    return
                status = fake.answers.pop(0) if fake.answers else 503
                headers = {"Etag": md5(received)} if status == 201 else {}
                if status == 200:
                    headers = {"X-Timestamp": "1700000000.00000",
                               "X-Object-Meta-Crc32c": crc32c_of_bytes(b"")}
                self._send(status, b"", "text/plain", headers)

            def _send(self, status: int, body: bytes, content_type: str,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def fake() -> Iterator[FakeCloudFiles]:
    server = FakeCloudFiles()
    yield server
    server.stop()


TOKENS = "POST /v2.0/tokens"


def test_each_request_is_one_attempt(fake: FakeCloudFiles) -> None:
    store = fake.store(segment_size=SEGMENT)
    calls = {
        "stat": lambda: store.stat("k"),
        "get_bytes": lambda: store.get_bytes("k"),
        "list": lambda: list(store.list_keys("")),
        "delete": lambda: store.delete("k"),
        "put_bytes": lambda: store.put_bytes("k", b"data"),
    }
    for what, call in calls.items():
        fake.sent.clear()
        with pytest.raises(TransientStoreError, match="swift://c"):
            call()
        assert len([r for r in fake.sent if r != TOKENS]) == 1, (what, fake.sent)
    fake.answers = [404]  # nothing at k yet: then the PUT fails, once
    fake.sent.clear()
    with pytest.raises(TransientStoreError, match="swift://c"):
        store.put_bytes("k", b"data")
    assert fake.sent == ["HEAD /v1/AUTH_au/c/k", "PUT /v1/AUTH_au/c/k"]
    # A large upload: its second segment fails once, and is not sent again.
    fake.answers = [404, 201, 201, 503]  # HEAD k, PUT the segments container, segment 1, 2
    fake.sent.clear()
    data = payload(LARGE, seed=13)
    with pytest.raises(TransientStoreError, match="segment 2"):
        put(store, "k", data)
    segments = [r for r in fake.sent if r.startswith("PUT /v1/AUTH_au/c_segments/k/")]
    assert [r.rsplit("/", 1)[1] for r in segments] == ["00000001", "00000002"]


def test_identity_errors_are_translated(fake: FakeCloudFiles) -> None:
    fake.identity_status = 503
    with pytest.raises(TransientStoreError, match=r"identity service.*unavailable"):
        fake.store().stat("k")
    assert fake.sent == [TOKENS]
    fake.identity_status = 401
    with pytest.raises(PermanentStoreError, match="refused the API key"):
        fake.store().stat("k")


def test_a_refused_token_is_dropped_for_the_next_attempt(fake: FakeCloudFiles) -> None:
    store = fake.store()
    fake.answers = [401, 200]
    with pytest.raises(TransientStoreError, match="refused the token"):
        store.stat("k")
    assert store.stat("k").size == 0  # authenticated again
    assert fake.sent.count(TOKENS) == 2


def test_a_token_about_to_expire_is_renewed(fake: FakeCloudFiles) -> None:
    store = fake.store()
    fake.answers = [200, 200, 200]
    store.stat("k")
    store.stat("k")
    assert fake.sent.count(TOKENS) == 1
    fake.token_lifetime = swift.TOKEN_MARGIN - timedelta(seconds=30)
    store._forget_session()
    store.stat("k")
    assert fake.sent.count(TOKENS) == 2
    fake.answers = [200]
    store.stat("k")  # the token would expire within the margin: asked for again
    assert fake.sent.count(TOKENS) == 3


def test_residency_is_asked_of_the_catalog_not_the_configuration(fake: FakeCloudFiles) -> None:
    # The catalog lists the storage URL the store uses under DFW as well: the store, configured
    # for SYD, is not taken to be in SYD only.
    fake.catalog.append(("DFW", fake.catalog[0][1]))
    fake.answers = [204, 204]
    with pytest.raises(ResidencyError, match="is in dfw, syd"):
        fake.store().check_residency(frozenset({"syd"}))
    fake.store().check_residency(frozenset({"syd", "dfw"}))
    fake.answers = [404]
    with pytest.raises(NotFound):
        fake.store().check_residency(frozenset({"syd"}))


def test_a_region_missing_from_the_catalog_is_permanent(fake: FakeCloudFiles) -> None:
    store = SwiftStore("c", "LON", auth_url=f"{fake.url}/v2.0", user="u", key="k",
                       insecure_http_ok=True)
    with pytest.raises(PermanentStoreError, match="no object-store endpoint in region LON"):
        store.stat("k")


# -- versioned containers --------------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-Versions-Location", "X-History-Location"])
def test_a_versioned_container_loses_every_version_on_delete(
        swift_server: SwiftService, raw: RawSwift, header: str) -> None:
    name, archive = new_bucket_name(), new_bucket_name()
    swift_server.create_container(SWIFT_REGION, archive)
    swift_server.create_container(SWIFT_REGION, name, {header: archive})
    store = swift_store(swift_server, name, segment_size=SEGMENT)
    assert store.lock_settings().versioned is True
    versions = [payload(LARGE, seed=14), b"small", payload(LARGE, seed=15)]
    for data in versions:
        put(store, "backups/v.bin", data)
    assert len(raw.names(archive)) == 2
    assert store.incomplete_uploads("") == []  # the older large version's manifest is archived

    assert store.delete_noncurrent_versions("backups/v.bin") == 2
    assert store.delete_noncurrent_versions("backups/v.bin") == 0
    assert store.get_bytes("backups/v.bin") == versions[-1]
    assert len(raw.names(store.segments_container)) == 3  # only the current version's

    put(store, "backups/v.bin", b"once more")
    store.delete("backups/v.bin")
    assert raw.names(name) == raw.names(archive) == raw.names(store.segments_container) == []


def test_lock_settings_report_no_lock_and_the_container_versioning(
        swift_server: SwiftService, store: SwiftStore) -> None:
    settings = store.lock_settings()
    assert (settings.store, settings.bucket) == ("swift", store.bucket)
    assert (settings.versioned, settings.lock_enabled) == (False, False)
    assert store.delete_noncurrent_versions("backups/x") == 0
    with pytest.raises(NotFound):
        swift_store(swift_server, new_bucket_name()).lock_settings()


def test_object_versioning_is_refused_not_half_handled(swift_server: SwiftService) -> None:
    name = new_bucket_name()
    swift_server.create_container(SWIFT_REGION, name, {"X-Versions-Enabled": "true"})
    store = swift_store(swift_server, name)
    assert store.lock_settings().versioned is True
    store.put_bytes("backups/a.bin", b"data")
    with pytest.raises(PermanentStoreError, match="X-Versions-Enabled"):
        store.delete("backups/a.bin")


# -- the dev stack ---------------------------------------------------------------------------


def test_start_swift_names_the_packages_it_lacks(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devstack_swift, "_BIN", tmp_path)
    with pytest.raises(ServiceStartError, match=r"swift-proxy.*make test.*apt-get install -y"):
        start_swift(tmp_path / "swift")


# -- the pii backstop ------------------------------------------------------------------------

PII = "eu/pii/"
BACKSTOP_DAYS = 28
BACKSTOP = BACKSTOP_DAYS * 86400


def delete_at(raw: RawSwift, path: str) -> int | None:
    """The X-Delete-At Swift reports for ``<container>/<name>`` (it must exist)."""
    response = raw.request("HEAD", path)
    assert response.status_code == 200, (path, response.status_code)
    value = response.headers.get("X-Delete-At")
    return None if value is None else int(value)


def segment_paths(raw: RawSwift, container: str, key: str) -> list[str]:
    """The ``<container>/<name>`` of each segment the SLO manifest at ``key`` names."""
    response = raw.request("GET", f"{container}/{key}",
                           params={"multipart-manifest": "get", "format": "raw"})
    assert response.status_code == 200, response.status_code
    return [str(segment["path"]).lstrip("/") for segment in response.json()]


@pytest.fixture
def backstopped(swift_server: SwiftService, container: str) -> SwiftStore:
    return swift_store(swift_server, container, segment_size=SEGMENT,
                       delete_after=swift.pii_backstop(PII, BACKSTOP_DAYS))


def test_pii_backstop_gives_seconds_under_the_prefix_only() -> None:
    delete_after = swift.pii_backstop(PII, BACKSTOP_DAYS)
    assert delete_after("eu/pii/accounts/b1/data.bin") == 28 * 24 * 3600
    assert delete_after("eu/pii/") == BACKSTOP
    for key in ("eu/metadata/accounts/b1/data.bin", "us/pii/accounts/b1/data.bin", "eu/pii",
                "eu/piixel/a", "x/eu/pii/a"):
        assert delete_after(key) is None, key
    assert swift.pii_backstop(PII, 1)("eu/pii/a") == 86400
    with pytest.raises(ValueError, match="at least 1"):
        swift.pii_backstop(PII, 0)
    with pytest.raises(ValueError, match="prefix"):
        swift.pii_backstop("", BACKSTOP_DAYS)


def test_pii_objects_and_every_segment_carry_the_backstop_other_objects_none(
        backstopped: SwiftStore, raw: RawSwift, tmp_path: Path) -> None:
    store = backstopped
    large, small = payload(LARGE, seed=20), payload(50_000, seed=21)
    path = tmp_path / "large.bin"
    path.write_bytes(large)
    before = int(time.time())
    store.put_bytes(f"{PII}accounts/b1/manifest.json", b'{"backup": "b1"}')  # a manifest
    store.put_file(f"{PII}accounts/b1/data.bin", str(path), crc32c=crc32c_of_bytes(large))
    store.put_stream(f"{PII}accounts/b1/small.bin", io.BytesIO(small), len(small),
                     crc32c=crc32c_of_bytes(small))
    store.put_bytes("eu/metadata/accounts/b2/manifest.json", b'{"backup": "b2"}')
    put(store, "eu/metadata/accounts/b2/data.bin", large)
    after = int(time.time())

    for name in ("manifest.json", "data.bin", "small.bin"):
        expiry = delete_at(raw, f"{store.bucket}/{PII}accounts/b1/{name}")
        assert expiry is not None and before + BACKSTOP <= expiry <= after + BACKSTOP, name
    manifest_expiry = delete_at(raw, f"{store.bucket}/{PII}accounts/b1/data.bin")
    segments = segment_paths(raw, store.bucket, f"{PII}accounts/b1/data.bin")
    assert len(segments) == 3
    # The one instant of the object: no segment outlives the manifest, none goes before it.
    assert [delete_at(raw, s) for s in segments] == [manifest_expiry] * 3

    assert delete_at(raw, f"{store.bucket}/eu/metadata/accounts/b2/manifest.json") is None
    assert delete_at(raw, f"{store.bucket}/eu/metadata/accounts/b2/data.bin") is None
    other_segments = segment_paths(raw, store.bucket, "eu/metadata/accounts/b2/data.bin")
    assert len(other_segments) == 3
    assert [delete_at(raw, s) for s in other_segments] == [None] * 3
    assert store.get_bytes(f"{PII}accounts/b1/data.bin") == large


def test_expires_at_reports_the_backstop(backstopped: SwiftStore, raw: RawSwift) -> None:
    store = backstopped
    before = datetime.now(UTC).replace(microsecond=0)
    put(store, f"{PII}a/big.bin", payload(LARGE, seed=22))
    store.put_bytes(f"{PII}a/manifest.json", b"{}")
    store.put_bytes("eu/metadata/a/manifest.json", b"{}")
    after = datetime.now(UTC)

    for key in (f"{PII}a/big.bin", f"{PII}a/manifest.json"):
        expires = store.expires_at(key)
        assert expires is not None and expires.tzinfo == UTC
        assert expires == datetime.fromtimestamp(delete_at(raw, f"{store.bucket}/{key}") or 0,
                                                 UTC)
        assert before + timedelta(days=BACKSTOP_DAYS) <= expires \
            <= after + timedelta(days=BACKSTOP_DAYS)
    assert store.expires_at("eu/metadata/a/manifest.json") is None
    with pytest.raises(NotFound, match=r"swift://.*eu/pii/a/missing"):
        store.expires_at(f"{PII}a/missing")


def test_the_backstop_deletes_the_object_and_every_segment(swift_server: SwiftService,
                                                           container: str,
                                                           raw: RawSwift) -> None:
    store = swift_store(swift_server, container, segment_size=SEGMENT,
                        delete_after=lambda key: 2 if key.startswith("gone/") else None)
    large, small = payload(LARGE, seed=23), payload(10_000, seed=24)
    put(store, "gone/big.bin", large)
    put(store, "gone/small.bin", small)
    put(store, "kept/small.bin", small)
    expiry = delete_at(raw, f"{store.bucket}/gone/big.bin")
    assert expiry is not None
    segments = segment_paths(raw, store.bucket, "gone/big.bin")
    assert [delete_at(raw, s) for s in segments] == [expiry] * 3
    # Still there until the instant (written at most 2 s before it, read well before it).
    assert store.get_bytes("gone/big.bin") == large
    assert store.get_bytes("gone/small.bin") == small

    def gone(key: str) -> bool:
        try:
            store.stat(key)
        except NotFound:
            return True
        return False

    deadline = time.monotonic() + 15
    while not (gone("gone/big.bin") and gone("gone/small.bin")):
        assert time.monotonic() < deadline, "the objects outlived their X-Delete-At by 15 s"
        time.sleep(0.1)
    # Gone at the instant (Swift answers 404 from then on), not before it nor long after.
    assert expiry <= time.time() < expiry + 3

    for key in ("gone/big.bin", "gone/small.bin"):
        with pytest.raises(NotFound):
            store.get_bytes(key)
        with pytest.raises(NotFound):
            store.open_read(key)
        with pytest.raises(NotFound):
            store.expires_at(key)
        assert raw.request("GET", f"{store.bucket}/{key}").status_code == 404
    for segment in segments:  # the data itself, not only the manifest naming it
        assert raw.request("GET", segment).status_code == 404, segment
        assert raw.request("HEAD", segment).status_code == 404, segment
    assert store.get_bytes("kept/small.bin") == small
    # The sweep deleting what the backstop already removed is no error.
    store.delete("gone/big.bin")
    store.delete("gone/small.bin")


@pytest.mark.parametrize("header", ["X-Versions-Location", "X-History-Location"])
def test_an_overwritten_version_and_its_segments_keep_their_own_backstop(
        swift_server: SwiftService, raw: RawSwift, header: str) -> None:
    name, archive = new_bucket_name(), new_bucket_name()
    swift_server.create_container(SWIFT_REGION, archive)
    swift_server.create_container(SWIFT_REGION, name, {header: archive})
    key = f"{PII}accounts/b1/data.bin"
    # Two ceilings, so that the two versions' instants differ by a day.
    first = swift_store(swift_server, name, segment_size=SEGMENT,
                        delete_after=swift.pii_backstop(PII, BACKSTOP_DAYS))
    second = swift_store(swift_server, name, segment_size=SEGMENT,
                         delete_after=swift.pii_backstop(PII, BACKSTOP_DAYS - 1))
    put(first, key, payload(LARGE, seed=25))
    old_expiry = delete_at(raw, f"{name}/{key}")
    old_segments = segment_paths(raw, name, key)
    data = payload(LARGE, seed=26)
    put(second, key, data)
    new_expiry = delete_at(raw, f"{name}/{key}")
    assert old_expiry is not None and new_expiry is not None
    assert old_expiry - new_expiry >= 86400 - 60

    [archived] = raw.names(archive)
    assert delete_at(raw, f"{archive}/{archived}") == old_expiry
    assert segment_paths(raw, archive, archived) == old_segments
    assert [delete_at(raw, s) for s in old_segments] == [old_expiry] * 3
    new_segments = segment_paths(raw, name, key)
    assert not set(new_segments) & set(old_segments)
    assert [delete_at(raw, s) for s in new_segments] == [new_expiry] * 3
    assert second.get_bytes(key) == data


def test_an_overwrite_in_an_unversioned_container_gives_the_new_object_the_backstop(
        backstopped: SwiftStore, raw: RawSwift) -> None:
    key = f"{PII}accounts/b1/data.bin"
    put(backstopped, key, payload(LARGE, seed=27))
    before = int(time.time())
    put(backstopped, key, b"small now")
    after = int(time.time())
    expiry = delete_at(raw, f"{backstopped.bucket}/{key}")
    assert expiry is not None and before + BACKSTOP <= expiry <= after + BACKSTOP
    assert raw.names(backstopped.segments_container) == []  # the replaced ones, deleted


def test_segments_a_failed_write_leaves_expire_too(backstopped: SwiftStore, raw: RawSwift,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The manifest is refused and the cleanup fails as well: the segments stay behind,
    # unnamed by any manifest, until the reconciler or the backstop removes them.
    def refused(*args: Any) -> None:
        raise TransientStoreError("Cloud Files is unavailable")

    def cleanup_fails(key: str, upload_id: str) -> None:
        pass

    monkeypatch.setattr(backstopped, "_put_manifest", refused)
    monkeypatch.setattr(backstopped, "_delete_segments_quietly", cleanup_fails)
    before = int(time.time())
    with pytest.raises(TransientStoreError):
        put(backstopped, f"{PII}accounts/b1/data.bin", payload(LARGE, seed=28))
    after = int(time.time())
    left = raw.names(backstopped.segments_container)
    assert len(left) == 3
    expiries = {delete_at(raw, f"{backstopped.segments_container}/{n}") for n in left}
    assert len(expiries) == 1
    [expiry] = expiries
    assert expiry is not None and before + BACKSTOP <= expiry <= after + BACKSTOP


def test_an_object_stored_without_its_backstop_is_deleted_again(
        backstopped: SwiftStore, raw: RawSwift, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy (or middleware) that drops X-Delete-At: the pii object must not stay.
    real_put_object = swift.swiftclient.put_object

    def dropping(*args: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> str:
        kept = {k: v for k, v in (headers or {}).items() if k.lower() != "x-delete-at"}
        result: str = real_put_object(*args, headers=kept, **kwargs)
        return result

    monkeypatch.setattr(swift.swiftclient, "put_object", dropping)
    with pytest.raises(PermanentStoreError, match=r"deleted swift://.*small\.bin.*X-Delete-At"):
        backstopped.put_bytes(f"{PII}accounts/b1/small.bin", b"personal")
    with pytest.raises(PermanentStoreError, match=r"deleted swift://.*big\.bin.*X-Delete-At"):
        put(backstopped, f"{PII}accounts/b1/big.bin", payload(LARGE, seed=29))
    assert raw.names(backstopped.bucket) == []
    assert raw.names(backstopped.segments_container) == []
    backstopped.put_bytes("eu/metadata/accounts/b1/small.bin", b"no backstop wanted")


@pytest.mark.parametrize("seconds", [0, -5, 1.5])
def test_a_backstop_that_is_not_whole_positive_seconds_is_refused(
        swift_server: SwiftService, container: str, raw: RawSwift, seconds: Any) -> None:
    store = swift_store(swift_server, container, delete_after=lambda key: seconds)
    with pytest.raises(ConfigError, match=rf"backstop for swift://.*a\.bin is {seconds}"):
        store.put_bytes("eu/pii/a.bin", b"personal")
    assert raw.names(container) == []
