"""One trace per backup, through real workers, into a real OTLP/HTTP receiver.

The stack's ``celery worker`` processes run with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at
a receiver this test runs (``http.server``, decoding the protobuf the SDK's exporter sends);
the command line that starts the backups runs without it, as an operator's would. A backup
of a source whose data holds a canary string must arrive as one trace: six step spans in
chain order, the source and store calls nested under them, and not one attribute anywhere
that holds the canary, a DSN, a password or key material. A backup whose upload fails
(S3 stopped) and is then retried with ``regionvault retry`` stays in that one trace: the
retried step is a new span linked to the failed one.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import itertools
import json
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from regionvault.devstack import sample
from regionvault.devstack.stack import DevStack, environment
from regionvault.domains import Domain
from regionvault.journal import Journal
from regionvault.manifest import STEPS, Step
from tests.integration.conftest import running_stack
from tests.integration.helpers import regionvault_cli

pytestmark = pytest.mark.stack

CANARY = "rv-trace-canary-7f3a9c1e"


# --- the receiver ---------------------------------------------------------------------------


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.decode("latin-1")
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    start: int
    attributes: dict[str, object]
    resource: dict[str, object]
    links: tuple[tuple[str, str], ...]
    #: every other string that travelled with the span (event and link attributes)
    extra: tuple[str, ...]

    def attr(self, key: str) -> object:
        return self.attributes.get(key)


class Receiver:
    """An OTLP/HTTP traces endpoint on a free port: POST /v1/traces, protobuf body."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for rs in request.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    extra = [str(v) for e in s.events for v in _attrs(e.attributes).values()]
                    extra += [e.name for e in s.events]
                    extra += [str(v) for link in s.links
                              for v in _attrs(link.attributes).values()]
                    found.append(ReceivedSpan(
                        name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(), start=s.start_time_unix_nano,
                        attributes=_attrs(s.attributes), resource=resource,
                        links=tuple((link.trace_id.hex(), link.span_id.hex())
                                    for link in s.links),
                        extra=(*extra, s.status.message)))
        with self._lock:
            self.spans.extend(found)
            self.requests += 1

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the stack ------------------------------------------------------------------------------


@dataclass
class Traced:
    stack: DevStack
    receiver: Receiver


@pytest.fixture(scope="module")
def traced() -> Iterator[Traced]:
    with Receiver() as receiver, contextlib.ExitStack() as cleanup:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_BSP_SCHEDULE_DELAY": "200"}
        for name in ("OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME"):
            otel.setdefault(name, "")
        # only the workers started now see the variables (DevStack.celery_env reads this
        # process's environment); the command line run by the tests does not
        with environment(otel):
            dev = cleanup.enter_context(running_stack("rv-test-tracing-"))
        assert dev.postgres is not None
        for domain in (Domain.US, Domain.EU):
            dev.postgres.execute(sample.database_name(domain, "catalog"),
                                 f"INSERT INTO plans (code, seats) VALUES ('{CANARY}', 7)")
        yield Traced(dev, receiver)


def _backup_id(stdout: str) -> str:
    return stdout.split("backup ", 1)[1].split()[0]


def _step_spans(spans: list[ReceivedSpan], backup_id: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.name.startswith("regionvault.step ")
                   and s.attr("regionvault.backup_id") == backup_id), key=lambda s: s.start)


def _wait_for(receiver: Receiver, backup_id: str, done: set[str],
              timeout: float = 30) -> list[ReceivedSpan]:
    """The spans received once every step in ``done`` has a finished span of the backup
    (and a moment more, for the Celery spans around them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = {str(s.attr("regionvault.step")) for s in _step_spans(receiver.snapshot(),
                                                                      backup_id)
                 if s.attr("regionvault.outcome") in ("done", "skipped")}
        if done <= steps:
            time.sleep(1.5)
            return receiver.snapshot()
        time.sleep(0.2)
    raise AssertionError(f"spans of steps {sorted(done)} of {backup_id} not received in "
                         f"{timeout}s; got {[s.name for s in receiver.snapshot()]}")


def _secrets(stack: DevStack) -> dict[str, str]:
    """What must never be in a trace: each DSN of the stack and its password, and every
    local key (base64 and raw)."""
    found: dict[str, str] = {CANARY: "the canary row"}
    for path in sorted((stack.data_dir / "secrets").glob("*.dsn")):
        dsn = path.read_text().strip()
        found[dsn] = f"the DSN in {path.name}"
        password = urllib.parse.urlsplit(dsn).password
        if password:
            found[password] = f"the password in {path.name}"
    for domain, keyring in sample.keyring_files(stack.data_dir / "keys").items():
        for key in json.loads(keyring.read_text())["keys"]:
            if key["wrapper"] == "local":
                found[key["material"]] = f"key {key['id']} of {domain.value}"
                found[base64.b64decode(key["material"]).decode("latin-1")] = f"key {key['id']}"
    assert len(found) > 4
    return found


def _assert_nothing_secret(spans: list[ReceivedSpan], stack: DevStack) -> None:
    secrets = _secrets(stack)
    for s in spans:
        texts = [s.name, *map(str, s.attributes.values()), *map(str, s.resource.values()),
                 *s.extra]
        for text in texts:
            for secret, what in secrets.items():
                assert secret not in text, f"{what} is in span {s.name}: {text[:200]}"


# --- the tests ------------------------------------------------------------------------------


def test_a_backup_is_one_trace_of_six_steps_with_store_and_source_children(
        traced: Traced) -> None:
    result = regionvault_cli(traced.stack, "backup", "--domain", "us", "--source", "catalog",
                             "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    backup_id = _backup_id(result.stdout)
    spans = _wait_for(traced.receiver, backup_id, {s.value for s in STEPS})

    steps = _step_spans(spans, backup_id)
    assert [s.attr("regionvault.step") for s in steps] == [s.value for s in STEPS]
    assert [s.name for s in steps] == [f"regionvault.step {s.value}" for s in STEPS]
    (trace_id,) = {s.trace_id for s in steps}
    for s in steps:
        assert s.attr("regionvault.domain") == "us"
        assert s.attr("regionvault.source") == "catalog"
        assert s.attr("regionvault.backup_id") == backup_id
        assert s.attr("regionvault.outcome") == "done"
        assert s.attr("regionvault.run") == 1
        assert isinstance(s.attr("regionvault.bytes"), int)
        assert set(s.attributes) <= {f"regionvault.{k}" for k in (
            "domain", "source", "backup_id", "step", "run", "attempt", "outcome", "bytes")}
        assert s.resource.get("service.name") == "regionvault-worker"
        assert s.resource.get("regionvault.domain") == "us"
    by_step = {str(s.attr("regionvault.step")): s for s in steps}
    for step in (Step.DUMP, Step.ENCRYPT, Step.UPLOAD, Step.REPLICATE):
        assert int(str(by_step[step.value].attr("regionvault.bytes"))) > 0, step

    # every span of this backup is in its one trace, the Celery ones around the steps too
    mine = [s for s in spans if s.attr("regionvault.backup_id") == backup_id]
    assert {s.trace_id for s in mine} == {trace_id}
    in_trace = [s for s in spans if s.trace_id == trace_id]
    for step in STEPS:
        assert any(s.name == f"run/regionvault.{step.value}" for s in in_trace), step
    # ... and no other backup's step span is in it
    assert {s.attr("regionvault.backup_id") for s in in_trace
            if s.name.startswith("regionvault.step ")} == {backup_id}

    def children(step: Step) -> list[ReceivedSpan]:
        parent = by_step[step.value].span_id
        return [s for s in in_trace if s.parent_id == parent]

    source = [s for s in children(Step.DUMP) if s.name == "regionvault.source dump"]
    assert len(source) == 1 and int(str(source[0].attr("regionvault.bytes"))) > 0
    assert source[0].attr("regionvault.source_kind") == "postgres"
    upload = {s.name for s in children(Step.UPLOAD)}
    assert {"regionvault.store s3.put_file", "regionvault.store s3.put_bytes"} <= upload
    put = next(s for s in children(Step.UPLOAD) if s.name == "regionvault.store s3.put_file")
    assert put.attr("regionvault.bytes") == by_step["upload"].attr("regionvault.bytes")
    assert put.attr("regionvault.store") == "s3"
    replicate = {s.name for s in children(Step.REPLICATE)}
    assert "regionvault.store gcs.put_file" in replicate
    assert "regionvault.store gcs.put_bytes" in replicate
    assert any(n.startswith("regionvault.store gcs.") for n in {s.name for s in
                                                                 children(Step.VERIFY)})
    # the next step's message is sent from inside the step span: a continuation
    for before, after in itertools.pairwise(steps):
        assert before.start < after.start

    _assert_nothing_secret(spans, traced.stack)


def test_a_retried_step_is_a_new_span_in_the_same_trace_linked_to_the_failed_one(
        traced: Traced) -> None:
    stack = traced.stack
    assert stack.s3 is not None
    stack.s3.stop()
    try:
        failed = regionvault_cli(stack, "backup", "--domain", "eu", "--source", "catalog",
                                 "--wait", "--timeout", "120")
    finally:
        stack.restart_s3()
    assert failed.returncode == 1, failed.stdout + failed.stderr
    backup_id = _backup_id(failed.stdout)
    assert f"backup {backup_id} failed at step upload" in failed.stdout
    journal = Journal.from_url(stack.env["REGIONVAULT_BROKER_URL"])
    record = journal.get(backup_id)
    assert record is not None and record.run == 1

    retried = regionvault_cli(stack, "retry", backup_id, "--wait")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    spans = _wait_for(traced.receiver, backup_id, {s.value for s in STEPS})
    steps = _step_spans(spans, backup_id)
    (trace_id,) = {s.trace_id for s in steps}  # both runs, every attempt: one trace

    uploads = [s for s in steps if s.attr("regionvault.step") == "upload"]
    outcomes = [s.attr("regionvault.outcome") for s in uploads]
    # Celery's retries of run 1, its final failure, then the retried run's upload
    assert outcomes[-2:] == ["failed", "done"], outcomes
    assert set(outcomes[:-2]) <= {"retry"} and outcomes[:-2], outcomes
    failed_span, new_span = uploads[-2], uploads[-1]
    assert failed_span.attr("regionvault.run") == 1
    assert failed_span.attr("regionvault.error_type") == "TransientStoreError"
    assert new_span.attr("regionvault.run") == 2
    assert new_span.span_id != failed_span.span_id
    assert (trace_id, failed_span.span_id) in new_span.links
    # each Celery retry of run 1 is linked to the attempt before it
    for earlier, later in itertools.pairwise(uploads[:-1]):
        assert (trace_id, earlier.span_id) in later.links
    # the retried run resumed at upload: dump and encrypt ran once, in run 1
    assert [s.attr("regionvault.run") for s in steps
            if s.attr("regionvault.step") in ("dump", "encrypt")] == [1, 1]
    assert [s.attr("regionvault.step") for s in steps
            if s.attr("regionvault.run") == 2] == ["upload", "replicate", "verify", "expire"]
    _assert_nothing_secret(spans, stack)
