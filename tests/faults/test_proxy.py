"""Unit tests for the fault-injection proxy, against real servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.faults.proxy import FaultProxy, HttpRequest, HttpRequestParser, Mode

MiB = 1024 * 1024


class _Upstream(ThreadingHTTPServer):
    """A keep-alive HTTP/1.1 server that records each request it handled completely."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._seen: list[tuple[str, str, int, int]] = []  # method, path, body size, client port

    def record(self, method: str, path: str, size: int, client_port: int) -> None:
        with self._lock:
            self._seen.append((method, path, size, client_port))

    def seen(self) -> list[tuple[str, str, int, int]]:
        with self._lock:
            return list(self._seen)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for Expect

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def handle(self) -> None:
        # The proxy resets connections on purpose; that is not an error of this server.
        with contextlib.suppress(OSError):
            super().handle()

    def do_GET(self) -> None:
        size = int(parse_qs(urlsplit(self.path).query).get("size", ["0"])[0])
        self._reply(b"x" * size if size else f"GET {self.path}".encode(), 0)

    def do_PUT(self) -> None:
        self._upload()

    def do_POST(self) -> None:
        self._upload()

    def _upload(self) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            return
        digest = hashlib.sha256(body).hexdigest()
        self._reply(f"{self.command} {self.path} {len(body)} {digest}".encode(), len(body))

    def _read_body(self) -> bytes | None:
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                parts = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()  # the blank line after the last chunk
                return b"".join(parts)
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
        except (OSError, ValueError):
            return None
        return body if len(body) == length else None

    def _reply(self, body: bytes, size: int) -> None:
        assert isinstance(self.server, _Upstream)
        self.server.record(self.command, self.path, size, self.client_address[1])
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True


@contextlib.contextmanager
def _serving(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    with _serving(server):
        yield server


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", upstream.server_port), name="http") as fault_proxy:
        yield fault_proxy


def _connect(proxy: FaultProxy, timeout: float = 5.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
) -> tuple[int, bytes]:
    conn.request(method, path, body=body)
    response = conn.getresponse()
    return response.status, response.read()


def _upload_reply(path: str, body: bytes) -> bytes:
    return f"PUT {path} {len(body)} {hashlib.sha256(body).hexdigest()}".encode()


def _read_raw_response(reader: BinaryIO) -> tuple[int, bytes]:
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, reader.read(length)


def test_pass_forwards_a_large_put_and_its_response(proxy: FaultProxy, upstream: _Upstream) -> None:
    body = os.urandom(2 * MiB)
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "PUT", "/bucket/key", body) == (
            200,
            _upload_reply("/bucket/key", body),
        )
        status, download = _exchange(conn, "GET", f"/bucket/blob?size={2 * MiB}")
    assert (status, len(download)) == (200, 2 * MiB)
    assert [(r.method, r.path, r.query, r.forwarded) for r in proxy.requests()] == [
        ("PUT", "/bucket/key", "", True),
        ("GET", "/bucket/blob", f"size={2 * MiB}", True),
    ]
    assert upstream.seen()[0][:3] == ("PUT", "/bucket/key", 2 * MiB)
    assert proxy.url() == f"http://127.0.0.1:{proxy.port}"
    assert proxy.url("https") == f"https://127.0.0.1:{proxy.port}"
    assert proxy.address == ("127.0.0.1", proxy.port)


def test_counts_each_keep_alive_request_on_one_connection(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "GET", "/a?x=1&uploads")[0] == 200
        assert _exchange(conn, "PUT", "/b/part", os.urandom(100_000))[0] == 200
        # An iterable body without Content-Length makes http.client send it chunked.
        chunks = [b"abc", os.urandom(70_000), b"\r\n0\r\n\r\n"]  # bytes that look like framing
        status, reply = _exchange(conn, "POST", "/c", iter(chunks))
        assert status == 200
        assert reply.split()[2] == str(sum(map(len, chunks))).encode()
        assert _exchange(conn, "GET", "/d")[0] == 200
    assert [r.method for r in proxy.requests()] == ["GET", "PUT", "POST", "GET"]
    assert proxy.count("GET") == 2
    assert proxy.count("get", query_contains="uploads") == 1
    assert proxy.count("PUT", path_contains="/b/") == 1
    assert proxy.count("POST", path_contains="/c") == 1
    assert proxy.count("DELETE") == 0
    assert len({port for *_, port in upstream.seen()}) == 1  # one upstream connection
    proxy.clear_requests()
    assert proxy.requests() == []


def test_expect_100_continue_passes_through(proxy: FaultProxy, upstream: _Upstream) -> None:
    with socket.create_connection(proxy.address, timeout=5) as sock, sock.makefile("rb") as reader:
        sock.sendall(
            b"PUT /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert _read_raw_response(reader) == (100, b"")
        sock.sendall(b"hello")
        assert _read_raw_response(reader) == (200, _upload_reply("/e", b"hello"))
        sock.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_raw_response(reader) == (200, b"GET /f")
    assert [(r.method, r.path) for r in proxy.requests()] == [("PUT", "/e"), ("GET", "/f")]


def test_parser_finds_request_boundaries_however_the_bytes_are_split() -> None:
    stream = (
        b"PUT /k?partNumber=1 HTTP/1.1\r\nContent-Length: 16\r\n\r\nGET /no HTTP/1.1"
        b"\r\n"  # a blank line between requests is allowed
        b"POST /c HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        b"5;ext=1\r\nGET /\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"
        b"GET http://host:9000/abs?q=1 HTTP/1.1\nHost: host\n\n"  # bare LF, absolute form
        b"HEAD /h HTTP/1.0\r\n\r\n"
    )
    expected = [
        ("PUT", "/k", "partNumber=1"),
        ("POST", "/c", ""),
        ("GET", "/abs", "q=1"),
        ("HEAD", "/h", ""),
    ]
    for size in (1, 2, 7, len(stream)):
        seen: list[HttpRequest] = []
        parser = HttpRequestParser(seen.append)
        for start in range(0, len(stream), size):
            parser.feed(stream[start : start + size])
        assert [(r.method, r.path, r.query) for r in seen] == expected
        assert parser.is_http
        assert not parser.in_head


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
        b"*1\r\n$4\r\nPING\r\n",  # Redis RESP
        b"PING\r\n",  # Redis inline command
        b"GET /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",  # length unknowable
    ],
)
def test_parser_gives_up_quietly_on_other_protocols(data: bytes) -> None:
    seen: list[HttpRequest] = []
    parser = HttpRequestParser(seen.append)
    parser.feed(data)
    parser.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert not parser.is_http
    assert seen == []


def test_http_503_answers_itself_and_sends_nothing_upstream(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    with contextlib.closing(_connect(proxy)) as live:
        assert _exchange(live, "GET", "/before")[0] == 200
        proxy.set_mode(Mode.HTTP_503)
        assert proxy.mode is Mode.HTTP_503
        conn = _connect(proxy)
        with contextlib.closing(conn):
            conn.request("GET", "/b/k")
            response = conn.getresponse()
            body = response.read()
        assert response.status == 503
        assert response.getheader("Connection") == "close"
        assert response.getheader("Content-Length") == str(len(body))
        assert b"<Error><Code>ServiceUnavailable</Code><Message>fault proxy</Message>" in body
        with contextlib.closing(_connect(proxy)) as conn:
            assert _exchange(conn, "PUT", "/b/big", os.urandom(2 * MiB))[0] == 503
        assert _exchange(live, "GET", "/live")[0] == 503  # a live connection's next request
    assert [seen[:2] for seen in upstream.seen()] == [("GET", "/before")]
    assert [(r.path, r.forwarded) for r in proxy.requests()] == [
        ("/before", True),
        ("/b/k", False),
        ("/b/big", False),
        ("/live", False),
    ]
    proxy.set_mode(Mode.PASS)
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "GET", "/after")[0] == 200


def test_refuse_closes_the_port_and_reopens_the_same_one(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    port = proxy.port
    with contextlib.closing(_connect(proxy)) as live:
        assert _exchange(live, "GET", "/before")[0] == 200
        proxy.set_mode(Mode.REFUSE)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(proxy.address, 1):
            pass
        with pytest.raises(ConnectionError):  # the live connection was reset too
            _exchange(live, "GET", "/live")
    proxy.set_mode(Mode.PASS)
    assert proxy.port == port
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "GET", "/after")[0] == 200
    assert [seen[1] for seen in upstream.seen()] == ["/before", "/after"]


def test_hang_makes_clients_time_out(proxy: FaultProxy, upstream: _Upstream) -> None:
    with contextlib.closing(_connect(proxy, timeout=0.5)) as live:
        assert _exchange(live, "GET", "/before")[0] == 200
        proxy.set_mode(Mode.HANG)
        with pytest.raises(TimeoutError):
            _exchange(live, "GET", "/live")
    with contextlib.closing(_connect(proxy, timeout=0.5)) as conn, pytest.raises(TimeoutError):
        _exchange(conn, "PUT", "/new", b"body")
    assert [seen[1] for seen in upstream.seen()] == ["/before"]
    assert [(r.path, r.forwarded) for r in proxy.requests()][1:] == [
        ("/live", False),
        ("/new", False),
    ]
    proxy.set_mode(Mode.PASS)
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "GET", "/after")[0] == 200


def test_reset_mode_resets_new_and_live_connections(proxy: FaultProxy) -> None:
    with contextlib.closing(_connect(proxy)) as live:
        assert _exchange(live, "GET", "/before")[0] == 200
        proxy.set_mode(Mode.RESET)
        with pytest.raises(ConnectionError):
            _exchange(live, "GET", "/live")
    with contextlib.closing(_connect(proxy)) as conn, pytest.raises(ConnectionError):
        _exchange(conn, "GET", "/new")
    proxy.set_mode(Mode.PASS)
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "GET", "/after")[0] == 200


def test_reset_after_breaks_one_upload_mid_body(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.reset_after(256 * 1024)
    with contextlib.closing(_connect(proxy)) as conn, pytest.raises(ConnectionError):
        _exchange(conn, "PUT", "/b/first", os.urandom(8 * MiB))
    assert upstream.seen() == []  # the body never arrived whole
    body = os.urandom(2 * MiB)
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "PUT", "/b/second", body) == (200, _upload_reply("/b/second", body))
    assert [r.path for r in proxy.requests()] == ["/b/first", "/b/second"]
    assert proxy.mode is Mode.PASS


def test_close_all_resets_a_transfer_under_way(proxy: FaultProxy) -> None:
    proxy.throttle(1 * MiB)  # keeps the download going while the test acts
    with contextlib.closing(_connect(proxy)) as conn:
        conn.request("GET", f"/blob?size={8 * MiB}")
        response = conn.getresponse()
        assert len(response.read(64 * 1024)) == 64 * 1024
        proxy.close_all()
        with pytest.raises((ConnectionError, http.client.IncompleteRead)):
            response.read()
    proxy.throttle(None)
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "GET", "/after")[0] == 200


def test_throttle_paces_uploads(proxy: FaultProxy) -> None:
    proxy.throttle(256 * 1024)
    body = os.urandom(512 * 1024)
    started = time.monotonic()
    with contextlib.closing(_connect(proxy)) as conn:
        assert _exchange(conn, "PUT", "/slow", body) == (200, _upload_reply("/slow", body))
    assert time.monotonic() - started >= 1.5


def test_throttle_paces_downloads(proxy: FaultProxy) -> None:
    proxy.throttle(256 * 1024)
    started = time.monotonic()
    with contextlib.closing(_connect(proxy)) as conn:
        status, body = _exchange(conn, "GET", f"/slow?size={512 * 1024}")
    assert (status, len(body)) == (200, 512 * 1024)
    assert time.monotonic() - started >= 1.5


def test_non_http_bytes_pass_and_record_nothing() -> None:
    echo = _EchoServer(("127.0.0.1", 0), _Echo)
    payload = b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + os.urandom(300_000) + b"*1\r\n$4\r\nPING\r\n"
    with (
        _serving(echo),
        FaultProxy(("127.0.0.1", echo.server_address[1]), name="echo") as proxy,
        socket.create_connection(proxy.address, timeout=5) as sock,
    ):

        def send() -> None:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # the half-close must reach the echo server

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        while data := sock.recv(65536):
            received += data
        sender.join()
        assert bytes(received) == payload
        assert proxy.requests() == []


def test_stop_is_idempotent_and_leaves_no_threads(upstream: _Upstream) -> None:
    proxy = FaultProxy(("127.0.0.1", upstream.server_port), name="stopping").start()
    with socket.create_connection(proxy.address, timeout=5) as hung:
        proxy.set_mode(Mode.HANG)
        hung.sendall(b"GET / HTTP/1.1\r\n\r\n")
        time.sleep(0.1)
        proxy.stop()
        proxy.stop()
        with pytest.raises(ConnectionResetError):
            hung.recv(10)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(proxy.address, 1):
        pass
    assert not [t for t in threading.enumerate() if "fault-proxy-stopping" in t.name]
    with pytest.raises(RuntimeError, match="make a new one"):
        proxy.start()
