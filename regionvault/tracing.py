"""One trace per backup: OpenTelemetry spans for steps, store calls and source calls.

Off unless the standard variables point at a collector: tracing is on when
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, unless
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. ``setup`` (called by the worker
process, ``workers.tracing``) installs the SDK's provider with a ``BatchSpanProcessor`` and the
OTLP/HTTP exporter, which read their own endpoint, headers, protocol and batching variables.
Until then ``span`` hands out one shared do-nothing object: no OpenTelemetry import, no
allocation, no journal read; that is the whole cost of tracing when it is off.

What a span may carry is decided here, once: ``attributes`` keeps only the keys of
``ALLOWED`` (written ``regionvault.<key>``) with plain scalar values, so a DSN, a key, a row
or an exception message cannot slip into a trace by a careless call. Errors are recorded by
their type only, never their message.

Trace contexts travel as W3C ``traceparent`` strings (``00-<trace id>-<span id>-<flags>``):
no secret, small enough for the journal and a message header. The core imports no Celery;
the Celery side is ``workers.tracing``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

#: the only attribute keys a regionvault span may carry (as ``regionvault.<key>``)
ALLOWED = frozenset({
    "domain", "source", "backup_id", "step", "run", "bytes", "outcome", "store",
    "operation", "source_kind", "attempt", "error_type", "items",
})
PREFIX = "regionvault."
DEFAULT_SERVICE = "regionvault-worker"

_TRACER_NAME = "regionvault"
_state: dict[str, Any] = {"provider": None, "tracer": None}
_lock = threading.Lock()


def enabled_by_env(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables ask for traces to be exported."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip())


def active() -> bool:
    """Whether this process exports spans (``setup`` installed a provider)."""
    return _state["tracer"] is not None


def attributes(values: Mapping[str, object]) -> dict[str, str | int | float | bool]:
    """The allowed ones of ``values``, named ``regionvault.<key>``; unknown keys, None and
    anything that is not a plain scalar are dropped."""
    kept: dict[str, str | int | float | bool] = {}
    for key, value in values.items():
        if key not in ALLOWED or value is None:
            continue
        if isinstance(value, str | int | float | bool):
            kept[PREFIX + key] = value
        elif hasattr(value, "value") and isinstance(value.value, str):  # an enum (Step)
            kept[PREFIX + key] = value.value
    return kept


def setup(domain: str | None, *, environ: Mapping[str, str] | None = None) -> bool:
    """Install the tracer provider for this process if the environment asks for it; True if
    tracing is (now) on. Idempotent."""
    env = os.environ if environ is None else environ
    with _lock:
        if _state["tracer"] is not None:
            return True
        if not enabled_by_env(env):
            return False
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=resource_for(domain))
        # the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT/HEADERS/COMPRESSION itself
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _state["provider"] = provider
        _state["tracer"] = trace.get_tracer(_TRACER_NAME)
        return True


def resource_for(domain: str | None) -> Any:
    """The SDK ``Resource`` of this process: ``OTEL_RESOURCE_ATTRIBUTES`` and
    ``OTEL_SERVICE_NAME`` as the SDK reads them, ``regionvault.domain`` of the worker, and
    ``service.name`` ``regionvault-worker`` unless the environment names the service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource

    extra: dict[str, str] = {}
    if domain:
        extra["regionvault.domain"] = domain
    # OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES) wins over ours
    if not OTELResourceDetector().detect().attributes.get(SERVICE_NAME):
        extra[SERVICE_NAME] = DEFAULT_SERVICE
    return Resource.create(extra)


def shutdown() -> None:
    """Flush what is batched and stop exporting (a worker process that ends)."""
    with _lock:
        provider = _state["provider"]
        _state.update(provider=None, tracer=None)
    if provider is not None:
        try:
            provider.shutdown()
        except Exception as exc:  # a collector that is away must not fail the shutdown
            log.warning("spans not flushed at shutdown: %s", exc)


# --- spans ---------------------------------------------------------------------------------


class NoSpan:
    """What ``span`` yields when tracing is off: every method does nothing."""

    __slots__ = ()
    recording = False
    outcome = ""

    def set(self, **values: object) -> None:
        return None

    def fail(self, exc: BaseException, outcome: str = "failed") -> None:
        return None

    @property
    def traceparent(self) -> str:
        return ""


NO_SPAN = NoSpan()


class Span:
    """A live span; ``set`` takes allowed attributes only."""

    __slots__ = ("_span", "outcome")
    recording = True

    def __init__(self, span: Any) -> None:
        self._span = span
        #: the outcome set last ("" while none is)
        self.outcome = ""

    def set(self, **values: object) -> None:
        if isinstance(values.get("outcome"), str):
            self.outcome = str(values["outcome"])
        self._span.set_attributes(attributes(values))

    def fail(self, exc: BaseException, outcome: str = "failed") -> None:
        """Mark the span failed, naming the error's type only (its message may quote what
        a person needs but a trace must not carry)."""
        from opentelemetry.trace import Status, StatusCode

        self.set(outcome=outcome, error_type=type(exc).__name__)
        self._span.set_status(Status(StatusCode.ERROR, type(exc).__name__))

    @property
    def traceparent(self) -> str:
        return format_traceparent(self._span.get_span_context())


def format_traceparent(span_context: Any) -> str:
    if not span_context.is_valid:
        return ""
    return (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{int(span_context.trace_flags):02x}")


def parse_traceparent(value: str | None) -> Any:
    """The remote ``SpanContext`` of a W3C traceparent, or None if it is not one."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    ctx = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return ctx if ctx.is_valid else None


def trace_id_of(value: str | None) -> str:
    """The trace id (hex) of a traceparent, "" if it is not one."""
    ctx = parse_traceparent(value)
    return f"{ctx.trace_id:032x}" if ctx is not None else ""


def current_traceparent() -> str:
    """The traceparent of this thread's current span ("" when off or outside any span)."""
    if not active():
        return ""
    from opentelemetry import trace

    return format_traceparent(trace.get_current_span().get_span_context())


def _context_of(parent: str | None, *, root: bool) -> Any:
    from opentelemetry import trace
    from opentelemetry.context import Context

    remote = parse_traceparent(parent)
    if remote is not None:
        return trace.set_span_in_context(trace.NonRecordingSpan(remote), Context())
    return Context() if root else None


@contextlib.contextmanager
def _live(name: str, values: Mapping[str, object], parent: str | None,
          links: Sequence[str], root: bool) -> Iterator[Span]:
    from opentelemetry import trace

    tracer = _state["tracer"]
    linked = [trace.Link(c) for c in (parse_traceparent(x) for x in links) if c is not None]
    with tracer.start_as_current_span(
            name, context=_context_of(parent, root=root), links=linked or None,
            attributes=attributes(values), record_exception=False,
            set_status_on_exception=False) as otel_span:
        live = Span(otel_span)
        try:
            yield live
        except BaseException as exc:
            if not live.outcome:
                live.fail(exc)
            raise


def span(name: str, values: Mapping[str, object] | None = None, *, parent: str | None = None,
         links: Sequence[str] = (), root: bool = False) -> contextlib.AbstractContextManager[
             Span | NoSpan]:
    """A span named ``name`` around a block, current while it runs (its children nest under
    it); a do-nothing one when tracing is off.

    ``parent``: a traceparent to continue instead of the current span; ``root``: start a new
    trace when there is no ``parent`` (not a child of whatever is current); ``links``:
    traceparents of spans this one follows from (a failed attempt). An exception leaving the
    block marks the span failed by the error's type, unless an outcome was set already."""
    if _state["tracer"] is None:
        return contextlib.nullcontext(NO_SPAN)
    return _live(name, values or {}, parent, links, root)


@contextlib.contextmanager
def sending_under(parent: str | None) -> Iterator[dict[str, str]]:
    """Send a message as part of the trace ``parent`` (a new trace when it is empty); yields
    the message headers that carry it.

    The headers are for a sender that is not traced itself (the command line): the worker
    that receives the message continues the trace from them. In a traced process the Celery
    instrumentation puts its own publish span's context (a child of ``parent``) in their
    place."""
    headers = {"traceparent": parent} if parent and parse_traceparent(parent) else {}
    if not active():
        yield headers
        return
    from opentelemetry import context as otel_context

    token = otel_context.attach(_context_of(parent, root=True))
    try:
        yield headers
    finally:
        otel_context.detach(token)


__all__ = ["ALLOWED", "NO_SPAN", "NoSpan", "Span", "active", "attributes",
           "current_traceparent", "enabled_by_env", "format_traceparent", "parse_traceparent",
           "sending_under", "setup", "shutdown", "span", "trace_id_of"]
