"""Tracing in the Celery processes: the provider and Celery's instrumentation, per process.

Connected from ``workers.app``. Nothing happens unless the OTEL_* variables ask for traces
(``regionvault.tracing.enabled_by_env``). Then:

- a prefork pool child sets up the provider and ``CeleryInstrumentor`` in
  ``worker_process_init`` (the BatchSpanProcessor's thread must be started in the process
  that uses it, not in the parent before the fork), and flushes in
  ``worker_process_shutdown``, so the spans of its last steps are sent before it exits;
- a worker with a pool that does not fork (solo, threads) does both in ``worker_init`` and
  ``worker_shutdown``;
- beat does it in ``beat_init``: the messages it sends carry their context.

The instrumentation makes each message carry its sender's span context (``traceparent`` in
the message headers) and runs each task in a span continuing it; the step spans and the
choice of the backup's one trace are the core's (``tasks.runner``, ``workers.canvas``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from regionvault import tracing
from workers.runtime import worker_domain

log = logging.getLogger("regionvault.tracing")

_instrumentor: list[Any] = []


def start() -> bool:
    """Set up tracing in this process if the environment asks for it; True if it is on."""
    if not tracing.enabled_by_env():
        return False
    domain = worker_domain()
    if not tracing.setup(domain.value if domain else None):
        return False
    if not _instrumentor:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        instrumentor = CeleryInstrumentor()
        instrumentor.instrument()
        _instrumentor.append(instrumentor)
        log.info("tracing on: spans go to the OTLP endpoint of OTEL_EXPORTER_OTLP_*")
    return True


def stop() -> None:
    """Flush the spans this process still holds, and stop tracing."""
    tracing.shutdown()


def _forks(worker: Any) -> bool:
    pool = getattr(worker, "pool_cls", None)
    name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}"
    return "prefork" in str(name) or "processes" in str(name)


@worker_process_init.connect(weak=False)
def _pool_child_started(**_: Any) -> None:
    start()


@worker_process_shutdown.connect(weak=False)
def _pool_child_ends(**_: Any) -> None:
    stop()


@worker_init.connect(weak=False)
def _worker_started(sender: Any = None, **_: Any) -> None:
    if sender is not None and not _forks(sender):
        start()


@worker_shutdown.connect(weak=False)
def _worker_ends(**_: Any) -> None:
    if tracing.active():
        stop()


@beat_init.connect(weak=False)
def _beat_started(**_: Any) -> None:
    start()


__all__ = ["start", "stop"]
