"""Tracing is off without the OTEL_* variables (no provider, spans that do nothing), what a
span may carry is an allow-list, and the store wrapper nests store calls under the span that
is current, naming the error's type only."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from regionvault import tracing
from regionvault.errors import NotFound, TransientStoreError
from regionvault.sources.traced import TracedSource, traced_source
from regionvault.stores.memory import MemoryStore
from regionvault.stores.traced import TracedStore, traced

OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                  "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_SERVICE_NAME")


@pytest.fixture
def no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, into memory, without installing a global provider (which
    could not be taken back)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = dict(tracing._state)
    tracing._state.update(provider=provider, tracer=provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        tracing._state.clear()
        tracing._state.update(saved)
        provider.shutdown()


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "x"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp"}, True),
])
def test_enabled_only_by_an_otlp_endpoint(environ: dict[str, str], on: bool) -> None:
    assert tracing.enabled_by_env(environ) is on


def test_off_without_the_variables_installs_nothing_and_spans_do_nothing(
        no_otel_environment: None) -> None:
    assert tracing.setup("eu") is False
    assert not tracing.active()
    # no SDK provider was installed: the API's proxy hands out non-recording spans
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)
    with tracing.span("regionvault.step dump", {"domain": "eu"}) as sp:
        assert sp is tracing.NO_SPAN
        assert not sp.recording and sp.traceparent == ""
        sp.set(outcome="done", bytes=3)
    assert tracing.current_traceparent() == ""
    store = MemoryStore("b", "eu")
    assert traced(store) is store  # stores are used bare
    with tracing.sending_under("") as headers:
        assert headers == {}
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    with tracing.sending_under(parent) as headers:  # an untraced sender still passes it on
        assert headers == {"traceparent": parent}


def test_attribute_allow_list_drops_unknown_keys_and_non_scalars() -> None:
    kept = tracing.attributes({
        "domain": "eu", "backup_id": "eu.accounts.20261128T020000Z.1a2b3c4d", "bytes": 12,
        "dsn": "postgresql://u:secret@h/db", "password": "hunter2", "key": b"\x00" * 32,
        "data": "row", "outcome": None, "step": ["dump"], "regionvault.domain": "us"})
    assert kept == {"regionvault.domain": "eu",
                    "regionvault.backup_id": "eu.accounts.20261128T020000Z.1a2b3c4d",
                    "regionvault.bytes": 12}


def test_traceparent_round_trip_and_garbage() -> None:
    value = "00-" + "0af7651916cd43dd8448eb211c80319c" + "-" + "b7ad6b7169203331" + "-01"
    ctx = tracing.parse_traceparent(value)
    assert ctx is not None and tracing.format_traceparent(ctx) == value
    assert tracing.trace_id_of(value) == "0af7651916cd43dd8448eb211c80319c"
    for bad in ("", "nonsense", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-zz-yy-01"):
        assert tracing.parse_traceparent(bad) is None
        assert tracing.trace_id_of(bad) == ""


def test_store_calls_are_children_of_the_current_span(exported: InMemorySpanExporter) -> None:
    store = traced(MemoryStore("bucket-eu", "eu"))
    assert isinstance(store, TracedStore) and isinstance(store, MemoryStore)
    with tracing.span("regionvault.step upload", {"step": "upload", "secret": "x"}) as step:
        store.put_bytes("k", b"canary-bytes")
        assert store.get_bytes("k") == b"canary-bytes"
        assert list(store.list_keys("")) == ["k"]
        with pytest.raises(NotFound):
            store.stat("missing")
        step.set(outcome="done", bytes=12)
    spans = {s.name: s for s in exported.get_finished_spans()}
    parent = spans["regionvault.step upload"]
    assert dict(parent.attributes or {}) == {"regionvault.step": "upload",
                                             "regionvault.outcome": "done",
                                             "regionvault.bytes": 12}
    for name in ("put_bytes", "get_bytes", "list_keys", "stat"):
        child = spans[f"regionvault.store memory.{name}"]
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
        assert child.context.trace_id == parent.context.trace_id
    assert spans["regionvault.store memory.put_bytes"].attributes["regionvault.bytes"] == 12
    missing = spans["regionvault.store memory.stat"]  # an answer, not a failure
    assert missing.attributes["regionvault.outcome"] == "not_found"
    assert missing.status.is_ok and not missing.events

    class Broken(MemoryStore):
        def get_bytes(self, key: str) -> bytes:
            raise TransientStoreError("connection reset while reading row 'canary-row'")

    with pytest.raises(TransientStoreError):
        traced(Broken("bucket-eu", "eu")).get_bytes("k")
    failed = next(s for s in exported.get_finished_spans()
                  if s.name == "regionvault.store memory.get_bytes" and s.parent is None)
    assert failed.attributes["regionvault.outcome"] == "failed"
    assert failed.attributes["regionvault.error_type"] == "TransientStoreError"
    assert failed.status.description == "TransientStoreError"
    assert not failed.events  # no exception event: its message is not for a trace
    for s in exported.get_finished_spans():
        assert all(b"canary" not in str(v).encode() for v in (s.attributes or {}).values())


def test_span_continues_a_parent_and_links(exported: InMemorySpanExporter) -> None:
    parent = "00-" + "11" * 16 + "-" + "22" * 8 + "-01"
    failed = "00-" + "11" * 16 + "-" + "33" * 8 + "-01"
    with tracing.span("regionvault.step upload", parent=parent, links=[failed, "junk"]) as sp:
        assert tracing.trace_id_of(sp.traceparent) == "11" * 16
        with tracing.sending_under("") as headers:  # a backup not traced yet: a new trace
            assert headers == {}
            assert tracing.current_traceparent() == ""
    (span,) = exported.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == int("22" * 8, 16)
    assert [link.context.span_id for link in span.links] == [int("33" * 8, 16)]


def test_restore_side_source_calls_are_spans_without_the_target(
        exported: InMemorySpanExporter) -> None:
    class Restorer:
        kind, name = "postgres", "accounts"

        def __init__(self) -> None:
            self.got = b""

        def restore(self, chunks: Iterable[bytes], target_dsn: str, *,
                    clean: bool = False) -> None:
            self.got = b"".join(chunks)

    inner = Restorer()
    source = traced_source(inner)  # type: ignore[arg-type]
    assert isinstance(source, TracedSource)
    source.restore(iter([b"abc", b"de"]), "postgresql://u:secret-pw@h/db", clean=True)
    assert inner.got == b"abcde"
    (span,) = exported.get_finished_spans()
    assert span.name == "regionvault.source restore"
    assert dict(span.attributes or {}) == {
        "regionvault.source": "accounts", "regionvault.source_kind": "postgres",
        "regionvault.operation": "restore", "regionvault.bytes": 5,
        "regionvault.outcome": "done"}


def test_a_dump_is_a_span_with_the_bytes_it_wrote(exported: InMemorySpanExporter) -> None:
    class Dumper:
        kind, name = "postgres", "accounts"

        def dump(self, write: Callable[[bytes], object]) -> str:
            write(b"abc")
            write(b"defg")
            return "info"

    written: list[bytes] = []
    source = traced_source(Dumper())  # type: ignore[arg-type]
    assert source.dump(written.append) == "info"
    assert written == [b"abc", b"defg"]  # every chunk reaches the writer, unchanged
    (span,) = exported.get_finished_spans()
    assert span.name == "regionvault.source dump"
    assert dict(span.attributes or {}) == {
        "regionvault.source": "accounts", "regionvault.source_kind": "postgres",
        "regionvault.operation": "dump", "regionvault.bytes": 7}


def test_the_service_is_regionvault_worker_unless_the_environment_names_it(
        monkeypatch: pytest.MonkeyPatch, no_otel_environment: None) -> None:
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attrs = tracing.resource_for("eu").attributes
    assert attrs["service.name"] == "regionvault-worker"
    assert attrs["regionvault.domain"] == "eu"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "backups-eu")
    assert tracing.resource_for("eu").attributes["service.name"] == "backups-eu"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    # what the chart sets on the pods
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=rv-eu,k8s.namespace.name=rv")
    attrs = tracing.resource_for(None).attributes
    assert attrs["service.name"] == "rv-eu" and attrs["k8s.namespace.name"] == "rv"
    assert "regionvault.domain" not in attrs
