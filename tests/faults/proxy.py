"""A TCP fault-injection proxy for the fault suite.

`FaultProxy` listens on a free 127.0.0.1 port and forwards each connection to one upstream
server (moto's S3 server, the GCS emulator, PostgreSQL, Redis). A test points the workers at the
proxy instead of the server, then switches it into a failure at the moment that matters:
refuse connections, answer HTTP 503, hang, reset, throttle, or reset an upload part-way. It also
records the HTTP requests that pass through, so a test can assert how often a worker retried.

Threads on purpose: two blocking pumps per connection are easier to follow than an event loop,
and a test proxy carries a handful of connections. Every blocking call has a short timeout, so a
mode change, `close_all()` or `stop()` is seen within `_POLL` seconds and no thread is left
blocked.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

_HOST = "127.0.0.1"
_POLL = 0.05  # seconds; how stale a blocking call may let the proxy's state become
_CHUNK = 64 * 1024
_THROTTLED_CHUNK = 16 * 1024  # small enough that pacing is smooth, not bursts of 64 KiB
_CONNECT_TIMEOUT = 5.0
_DRAIN_SECONDS = 5.0  # how long a 503 answer waits for the client to finish sending
_SETTLE_SECONDS = 2.0  # how long control calls wait for the proxy's threads to act
_MAX_HEAD = 64 * 1024  # a longer head (or chunk-size line) means the stream is not HTTP

_503_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>ServiceUnavailable</Code><Message>fault proxy</Message></Error>"
)
_REQUEST_LINE = re.compile(rb"([A-Z][A-Z_-]*) (\S+) HTTP/1\.[01]")
_METHOD_SO_FAR = re.compile(rb"[A-Z][A-Z_-]{0,19}")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class Mode(StrEnum):
    """What the proxy does with connections (see `FaultProxy`)."""

    PASS = "pass"
    REFUSE = "refuse"
    HTTP_503 = "http_503"
    HANG = "hang"
    RESET = "reset"


@dataclass(frozen=True)
class HttpRequest:
    """One HTTP request seen from a client. `path` and `query` are as sent (percent-encoded);
    `at` is wall-clock time (time.time()), comparable with log timestamps. `forwarded` is False
    when the proxy kept the request from the upstream (answered 503, or hung)."""

    method: str
    path: str
    query: str
    at: float
    forwarded: bool = True


class _State(Enum):
    HEAD = "head"
    BODY = "body"
    CHUNK_SIZE = "chunk-size"
    CHUNK_DATA = "chunk-data"
    CHUNK_END = "chunk-end"
    TRAILER = "trailer"


class HttpRequestParser:
    """Follows request boundaries in a client-to-server HTTP/1.1 byte stream.

    Only heads and chunk-size lines are buffered; body bytes are counted off, so a large upload
    costs nothing. The first thing that is not HTTP/1.x (a PostgreSQL startup packet, a Redis
    command) makes the parser give up for good: `is_http` turns False and nothing more is
    recorded. `Expect: 100-continue` needs nothing special: the body still follows the head.
    """

    def __init__(self, on_request: Callable[[HttpRequest], None]) -> None:
        self.is_http = True
        self.method = ""  # of the latest request, so a 503 answer to HEAD can omit its body
        self._on_request = on_request
        self._state = _State.HEAD
        self._line = bytearray()  # the unfinished line
        self._head: list[bytes] = []  # finished lines of the current request head
        self._head_size = 0
        self._remaining = 0  # body or chunk bytes still to pass

    @property
    def in_head(self) -> bool:
        """True while a request head has begun but not ended."""
        return self.is_http and self._state is _State.HEAD and bool(self._head or self._line)

    def feed(self, data: bytes, *, forwarded: bool = True) -> None:
        pos = 0
        while self.is_http and pos < len(data):
            if self._state in (_State.BODY, _State.CHUNK_DATA):
                step = min(self._remaining, len(data) - pos)
                pos += step
                self._remaining -= step
                if not self._remaining:
                    body_done = self._state is _State.BODY
                    self._state = _State.HEAD if body_done else _State.CHUNK_END
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                self._check_partial_line()
                return
            line = bytes(self._line + data[pos:end]).rstrip(b"\r")
            self._line.clear()
            pos = end + 1
            self._on_line(line, forwarded)

    def _check_partial_line(self) -> None:
        if len(self._line) > _MAX_HEAD:
            self._give_up()
        elif self._state is _State.HEAD and not self._head:
            # Judge a request line before it ends: a binary protocol may send no newline for a
            # long time, and a 503 answer waits for the head.
            method = bytes(self._line).lstrip(b"\r").partition(b" ")[0]
            if method and not _METHOD_SO_FAR.fullmatch(method):
                self._give_up()

    def _on_line(self, line: bytes, forwarded: bool) -> None:
        if self._state is _State.HEAD:
            if line:
                self._head.append(line)
                self._head_size += len(line)
                if not _REQUEST_LINE.fullmatch(self._head[0]) or self._head_size > _MAX_HEAD:
                    self._give_up()
            elif self._head:  # a blank line before a request line is allowed and skipped
                self._end_head(forwarded)
        elif self._state is _State.CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size):
                self._give_up()
            elif int(size, 16):
                self._remaining = int(size, 16)
                self._state = _State.CHUNK_DATA
            else:
                self._state = _State.TRAILER
        elif self._state is _State.CHUNK_END:
            if line:
                self._give_up()
            else:
                self._state = _State.CHUNK_SIZE
        elif self._state is _State.TRAILER and not line:
            self._state = _State.HEAD

    def _end_head(self, forwarded: bool) -> None:
        request_line, *fields = self._head
        self._head = []
        self._head_size = 0
        length, chunked, has_coding = 0, False, False
        for field in fields:
            name, colon, value = field.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if not colon:
                self._give_up()
                return
            if name == b"content-length":
                if not value.isdigit():
                    self._give_up()
                    return
                length = int(value)
            elif name == b"transfer-encoding":
                has_coding = True
                chunked = value.lower().split(b",")[-1].strip() == b"chunked"
        if has_coding and not chunked:
            # The body then runs to the end of the connection; stop counting rather than guess.
            self._give_up()
            return
        match = _REQUEST_LINE.fullmatch(request_line)
        assert match is not None  # checked when the line arrived
        self.method = match[1].decode("ascii")
        target = match[2].decode("latin-1")
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            path, query = parts.path or "/", parts.query
        else:
            path, _, query = target.partition("?")
        self._on_request(HttpRequest(self.method, path, query, time.time(), forwarded))
        if chunked:
            self._state = _State.CHUNK_SIZE
        elif length:
            self._state, self._remaining = _State.BODY, length

    def _give_up(self) -> None:
        self.is_http = False
        self._line.clear()
        self._head = []


class _Pacer:
    """Spaces one direction's chunks so that it never exceeds the rate."""

    def __init__(self) -> None:
        self._free_at = 0.0  # monotonic time at which the bytes sent so far are paid for

    def wait(self, nbytes: int, rate: int | None, closing: threading.Event) -> bool:
        """Sleep until nbytes may go; False if the connection is closing meanwhile."""
        if rate is None:
            return True
        # Idle time earns no credit: a burst after a pause would exceed the rate.
        self._free_at = max(self._free_at, time.monotonic()) + nbytes / rate
        while (delay := self._free_at - time.monotonic()) > 0:
            if closing.wait(min(delay, _POLL)):
                return False
        return True


class _Link:
    """One proxied connection: the client socket, its upstream socket, and how it ends."""

    def __init__(self, client: socket.socket, parser: HttpRequestParser) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.parser = parser
        self.closing = threading.Event()  # set once the link must wind down
        self.finished = threading.Event()  # set once both sockets are closed
        self.hanging = False  # a byte arrived in HANG mode: this link never forwards again
        self.client_send = threading.Lock()  # the 503 answer and the upstream pump both write
        self.to_upstream = _Pacer()
        self.to_client = _Pacer()
        self._rst = False
        self._lock = threading.Lock()

    def attach(self, upstream: socket.socket) -> None:
        with self._lock:
            self.upstream = upstream

    def abort(self, *, rst: bool) -> None:
        with self._lock:
            self._rst = self._rst or rst
            self.closing.set()
            if self.finished.is_set():
                return
            for sock in (self.client, self.upstream):
                if sock is not None:
                    # Wakes a pump blocked in recv() now rather than at its next poll. Only
                    # finish() closes sockets, so no descriptor is closed under a running call.
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RD)

    def finish(self) -> None:
        with self._lock:
            for sock in (self.client, self.upstream):
                if sock is None:
                    continue
                if self._rst:
                    # SO_LINGER on with a zero timeout makes close() send RST instead of FIN.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                sock.close()
            self.closing.set()
            self.finished.set()


class FaultProxy:
    """A TCP proxy to `upstream` on a free 127.0.0.1 port, with switchable faults.

    Modes (`set_mode`) apply to new connections at once; HANG, RESET and HTTP_503 reach live
    connections at their next byte, and REFUSE resets live connections at once:

    - PASS forwards bytes both ways.
    - REFUSE closes the listening socket, so connecting fails with ECONNREFUSED; leaving it
      re-opens the same port.
    - HTTP_503 answers each new request itself (503, S3-style XML error, `Connection: close`)
      and sends nothing upstream. A response already under way still reaches the client.
      A stream that is not HTTP is reset instead.
    - HANG reads and discards, never forwards, never answers. When the mode changes, hung
      connections are closed, not resumed.
    - RESET sends RST on new connections and on live ones.

    `throttle` and `reset_after` act in PASS mode, alongside the mode. Every method is
    thread-safe. `stop()` is idempotent and leaves no thread behind.
    """

    def __init__(self, upstream: tuple[str, int], *, name: str = "") -> None:
        self._upstream = upstream
        self._name = name or f"{upstream[0]}:{upstream[1]}"
        self._lock = threading.Lock()
        # Signals mode changes to the accept thread, and listener changes back to set_mode().
        self._cond = threading.Condition(self._lock)
        # Pumps read _mode and _rate without the lock: one attribute read is atomic.
        self._mode = Mode.PASS
        self._rate: int | None = None
        self._reset_budget: int | None = None
        self._requests: list[HttpRequest] = []
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None  # owned by the accept thread once started
        self._bind_error: OSError | None = None
        self._port: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopped = False

    # -- lifecycle

    def start(self) -> Self:
        with self._lock:
            if self._accept_thread is not None or self._stopped:
                raise RuntimeError(f"fault proxy '{self._name}' was started before; make a new one")
            self._listener = self._bind(0)
            self._port = self._listener.getsockname()[1]
            self._accept_thread = self._spawn("accept", self._accept_loop)
        return self

    def stop(self) -> None:
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
            thread = self._accept_thread
        if thread is not None:
            thread.join(_SETTLE_SECONDS)
        self._abort_links(rst=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- where it listens

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"fault proxy '{self._name}' has no port yet; call start() first")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (_HOST, self.port)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{_HOST}:{self.port}"

    # -- faults

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        mode = Mode(mode)
        with self._cond:
            self._mode = mode
            self._cond.notify_all()
            if self._accept_thread is not None and not self._stopped:
                # Return only once the port really refuses (or accepts again), so a test can
                # connect right after this call and see the new behaviour.
                want_open = mode is not Mode.REFUSE
                settled = self._cond.wait_for(
                    lambda: (
                        self._bind_error is not None or (self._listener is not None) == want_open
                    ),
                    _SETTLE_SECONDS,
                )
                if self._bind_error is not None:
                    raise RuntimeError(
                        f"fault proxy '{self._name}' could not re-open port {self._port}: "
                        f"{self._bind_error}; another process may have taken it"
                    ) from self._bind_error
                if not settled:
                    raise RuntimeError(f"fault proxy '{self._name}' did not switch to {mode}")
        if mode is Mode.REFUSE:
            self._abort_links(rst=True)

    def throttle(self, bytes_per_second: int | None) -> None:
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"throttle rate must be positive or None, not {bytes_per_second}")
        self._rate = bytes_per_second

    def reset_after(self, nbytes: int) -> None:
        """Reset the connection that forwards the nbytes-th next client byte, then stop."""
        if nbytes < 0:
            raise ValueError(f"reset_after needs a byte count >= 0, not {nbytes}")
        with self._lock:
            self._reset_budget = nbytes

    def close_all(self) -> None:
        """Reset every live connection, as an outage mid-transfer would."""
        self._abort_links(rst=True)

    # -- what passed through

    def requests(self) -> list[HttpRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str, *, path_contains: str = "", query_contains: str = "") -> int:
        method = method.upper()
        return sum(
            1
            for request in self.requests()
            if request.method == method
            and path_contains in request.path
            and query_contains in request.query
        )

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- internals

    def _spawn(self, role: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=f"fault-proxy-{self._name}-{role}")
        thread.daemon = True  # a test that forgets stop() must still be able to exit
        thread.start()
        return thread

    def _bind(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Lets REFUSE re-open the same port while old connections sit in TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((_HOST, port))
            listener.listen(128)
            listener.settimeout(_POLL)
        except OSError:
            listener.close()
            raise
        return listener

    def _sync_listener(self) -> None:
        """Open or close the listening socket to match the mode. Called with the lock held."""
        want_open = self._mode is not Mode.REFUSE
        if want_open and self._listener is None:
            try:
                self._listener = self._bind(self.port)
                self._bind_error = None
            except OSError as exc:
                self._bind_error = exc
            self._cond.notify_all()
        elif not want_open and self._listener is not None:
            # Closed here, by the only thread that accepts on it, so it is really gone (and the
            # port refuses) when set_mode() returns.
            self._listener.close()
            self._listener = None
            self._cond.notify_all()

    def _accept_loop(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._stopped:
                        return
                    self._sync_listener()
                    listener = self._listener
                    if listener is None:
                        self._cond.wait(0.5)  # also retries a failed re-bind now and then
                        continue
                try:
                    client, _ = listener.accept()
                except OSError:  # a timeout, or a client that gave up before being accepted
                    continue
                self._admit(client)
        finally:
            with self._cond:
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                self._cond.notify_all()

    def _admit(self, client: socket.socket) -> None:
        client.settimeout(_POLL)
        link = _Link(client, HttpRequestParser(self._record))
        with self._lock:
            if self._stopped:
                client.close()
                return
            self._links.add(link)
        self._spawn("conn", lambda: self._serve(link))

    def _record(self, request: HttpRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _abort_links(self, *, rst: bool) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.abort(rst=rst)
        # Wait until the sockets are closed, so the caller's next step sees the reset.
        deadline = time.monotonic() + _SETTLE_SECONDS
        for link in links:
            link.finished.wait(max(0.0, deadline - time.monotonic()))

    def _serve(self, link: _Link) -> None:
        try:
            if self._mode in (Mode.RESET, Mode.REFUSE):
                link.abort(rst=True)
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=_CONNECT_TIMEOUT)
            except OSError:
                link.abort(rst=True)  # what the client would get from an unreachable server
                return
            upstream.settimeout(_POLL)
            link.attach(upstream)
            back = self._spawn("upstream", lambda: self._pump_to_client(link, upstream))
            self._pump_to_upstream(link, upstream)
            back.join()
        finally:
            link.finish()
            with self._lock:
                self._links.discard(link)

    def _pump_to_upstream(self, link: _Link, upstream: socket.socket) -> None:
        while (chunk := self._receive(link, link.client, upstream)) is not None:
            mode = self._mode
            if mode in (Mode.RESET, Mode.REFUSE):
                link.abort(rst=True)
                return
            if mode is Mode.HANG or link.hanging:
                link.hanging = True
                link.parser.feed(chunk, forwarded=False)
                continue
            if mode is Mode.HTTP_503:
                link.parser.feed(chunk, forwarded=False)
                if not link.parser.is_http:
                    link.abort(rst=True)
                elif link.parser.in_head:
                    continue  # answer once the head is in, so the request is recorded
                else:
                    self._answer_503(link)
                return
            allowed, reset_now = self._spend_reset_budget(len(chunk))
            part = chunk[:allowed]
            link.parser.feed(part)
            if not link.to_upstream.wait(len(part), self._rate, link.closing):
                return
            if not self._send(link, upstream, part):
                return
            if reset_now:
                link.abort(rst=True)
                return

    def _pump_to_client(self, link: _Link, upstream: socket.socket) -> None:
        while (chunk := self._receive(link, upstream, link.client)) is not None:
            mode = self._mode
            if mode in (Mode.RESET, Mode.REFUSE):
                link.abort(rst=True)
                return
            if mode is Mode.HANG or link.hanging:
                link.hanging = True
                continue
            # HTTP_503 lets a response already under way through: only new requests get 503.
            if not link.to_client.wait(len(chunk), self._rate, link.closing):
                return
            with link.client_send:
                if not self._send(link, link.client, chunk):
                    return

    def _receive(self, link: _Link, sock: socket.socket, peer: socket.socket) -> bytes | None:
        """The next chunk from sock, or None once this direction is done."""
        while not link.closing.is_set():
            if link.hanging and self._mode is not Mode.HANG:
                # A hung connection is dropped, not resumed: its client has given up on it
                # (or should have), like on a server that stalled.
                link.abort(rst=False)
                break
            rate = self._rate
            size = _CHUNK if rate is None else max(1, min(_THROTTLED_CHUNK, rate // 10))
            try:
                chunk = sock.recv(size)
            except TimeoutError:
                continue
            except OSError:
                link.abort(rst=True)  # a reset from one side is passed on to the other
                break
            if link.closing.is_set():
                break
            if chunk:
                return chunk
            if link.hanging:
                link.abort(rst=False)
            else:
                with contextlib.suppress(OSError):
                    peer.shutdown(socket.SHUT_WR)  # pass the half-close on
            break
        return None

    def _send(self, link: _Link, sock: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if link.closing.is_set():
                return False
            try:
                sent = sock.send(view)
            except TimeoutError:
                continue  # the peer reads slowly; look at link.closing again
            except OSError:
                link.abort(rst=True)
                return False
            view = view[sent:]
        return True

    def _spend_reset_budget(self, nbytes: int) -> tuple[int, bool]:
        """How many of nbytes may pass, and whether the connection is reset after them."""
        with self._lock:
            budget = self._reset_budget
            if budget is None:
                return nbytes, False
            if nbytes < budget:
                self._reset_budget = budget - nbytes
                return nbytes, False
            self._reset_budget = None  # one reset, then plain PASS again
            return budget, True

    def _answer_503(self, link: _Link) -> None:
        """Answer the request in flight with 503 and close, as an overloaded S3 front end does."""
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            "Content-Type: application/xml\r\n"
            f"Content-Length: {len(_503_BODY)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii")
        body = b"" if link.parser.method == "HEAD" else _503_BODY  # HEAD answers carry no body
        with link.client_send:
            if not self._send(link, link.client, head + body):
                return
        with contextlib.suppress(OSError):
            link.client.shutdown(socket.SHUT_WR)
        # Read what the client still sends (the rest of an upload) before closing: closing with
        # unread data sends RST, and the client could lose the 503 to "connection reset".
        deadline = time.monotonic() + _DRAIN_SECONDS
        while time.monotonic() < deadline and not link.closing.is_set():
            try:
                if not link.client.recv(_CHUNK):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        link.abort(rst=False)
