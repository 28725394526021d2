"""The Celery app: one queue per domain, explicit routing, at-least-once settings.

Reliability settings, and why:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a worker killed mid-step leaves the
  message on the broker, so the step runs again (every step is idempotent).
- ``worker_prefetch_multiplier = 1``: a worker holds one long step at a time; queued steps
  stay visible to other workers of the pool.
- ``visibility_timeout`` above the longest step: Redis re-delivers unacknowledged messages
  after it, which must not happen while a step is still running.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from celery import Celery
from kombu import Queue

from beat_schedule import build_beat_schedule
from regionvault.config import Config, load_config
from regionvault.domains import Domain, queue_name
from workers.names import TASK_PREFIX


def route_by_domain(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                    options: dict[str, Any], task: Any = None, **_: Any) -> dict[str, str] | None:
    """Every regionvault task goes to the queue of the domain named in its arguments."""
    if not name.startswith(TASK_PREFIX):
        return None
    domain = kwargs.get("domain")
    if domain is None:
        raise ValueError(f"task {name} has no 'domain' argument and cannot be routed")
    return {"queue": queue_name(domain)}


def configure(app: Celery, config: Config | None) -> None:
    broker = os.environ.get("REGIONVAULT_BROKER_URL") or (
        config.broker_url if config else "redis://127.0.0.1:6379/0")
    backend = os.environ.get("REGIONVAULT_RESULT_BACKEND") or (
        config.result_backend if config and config.result_backend else broker)
    step_timeout = config.step_timeout_seconds if config else 4 * 3600
    transport = {"visibility_timeout": step_timeout + 3600}
    app.conf.update(
        broker_url=broker,
        result_backend=backend,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=step_timeout,
        task_soft_time_limit=step_timeout - 60,
        # No STARTED result write per step: the journal records a running step and Flower
        # learns it from the task-started event; nothing reads it from the result backend.
        task_track_started=False,
        result_extended=True,
        result_expires=7 * 24 * 3600,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_queues=[Queue(queue_name(d)) for d in Domain],
        task_create_missing_queues=False,
        task_default_queue=queue_name(Domain.US),  # unused: route_by_domain routes every task
        task_routes=(route_by_domain,),
        imports=("tasks",),
        timezone="UTC",
        enable_utc=True,
    )
    if config is not None:
        app.conf.beat_schedule = build_beat_schedule(config)
    _forget_connections(app)


def _forget_connections(app: Celery) -> None:
    """Drop what the app made for earlier settings: configured again (a tool or a test that
    moves to another stack), it must not go on sending to the old broker or reading results
    from the old backend, which Celery keeps in its producer pool and its cached backend."""
    app._pool = None
    with contextlib.suppress(AttributeError, KeyError):
        app.__dict__["amqp"]._producer_pool = None
    app._backend_cache = None
    with contextlib.suppress(AttributeError):
        del app._local.backend


def _config_from_environment() -> Config | None:
    # The CLI, workers, beat and Flower all find the configuration the same way. Without one
    # (e.g. `celery -A workers inspect ...` on an operator's laptop) the app still loads.
    if not os.environ.get("REGIONVAULT_CONFIG"):
        return None
    return load_config()


app = Celery("regionvault")
configure(app, _config_from_environment())
# The worker signals (residency guard, journal, metrics) are connected by the package
# (workers/__init__.py), which Python runs before this module whoever imports it.
