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
from regionvault.domains import Domain, parse_domain, queue_name
from workers.names import TASK_PREFIX
from workers.runtime import worker_domain


def route_by_domain(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                    options: dict[str, Any], task: Any = None, **_: Any) -> dict[str, str] | None:
    """Every regionvault task goes to the queue of the domain named in its arguments."""
    if not name.startswith(TASK_PREFIX):
        return None
    domain = kwargs.get("domain")
    if domain is None:
        raise ValueError(f"task {name} has no 'domain' argument and cannot be routed")
    return {"queue": queue_name(domain)}


def configure(app: Celery, config: Config | None, domain: Domain | None = None) -> None:
    """Configure this process's app for ``domain`` (the shared broker for None); ``app_for``
    then reaches the other domains from it."""
    _apply(app, config, domain)
    _STATE.update(config=config, domain=domain)
    _CLIENTS.clear()


def _apply(app: Celery, config: Config | None, domain: Domain | None) -> None:
    """Point ``app`` at the broker and result backend of ``domain`` (the shared ones for
    None) and set everything else the same for every process."""
    if config is not None:
        broker, backend = config.broker_for(domain), config.backend_for(domain)
    else:
        broker = os.environ.get("REGIONVAULT_BROKER_URL") or "redis://127.0.0.1:6379/0"
        backend = os.environ.get("REGIONVAULT_RESULT_BACKEND") or broker
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
        # a beat publishes the entries of the domains whose broker it is connected to: its
        # own domain's, or (a shared beat) those of every domain on the shared broker
        beat_domains = [domain] if domain is not None else config.shared_broker_domains()
        app.conf.beat_schedule = build_beat_schedule(config, beat_domains)
    _forget_connections(app)


#: what the app was last configured with (``app_for`` reaches the other domains from it)
_STATE: dict[str, Any] = {"config": None, "domain": None}
#: apps for domains whose broker is not this process's, by (broker, backend)
_CLIENTS: dict[tuple[str, str], Celery] = {}


def domains_of(capp: Celery) -> tuple[list[Domain], dict[Domain, str | None]]:
    """The configured domains whose broker ``capp`` is connected to, and every other domain
    with the address of its own Flower (``flower_url``, None when not configured). Without a
    configuration every domain is taken to be on ``capp``'s broker."""
    config: Config | None = _STATE["config"]
    if config is None:
        return list(Domain), {}
    here = [d for d in config.domains if app_for(d) is capp]
    return here, {d: config.domain(d).flower_url for d in config.domains if d not in here}


def app_for(domain: Domain | str) -> Celery:
    """The app that reaches ``domain``'s broker and result backend: this process's own app
    when they are the same (every domain on the shared broker; a domain's own worker), else
    a client app made for that domain (the CLI, Flower's Retry, a shared beat reaching a
    domain that has its own broker)."""
    d = parse_domain(domain) if isinstance(domain, str) else domain
    config: Config | None = _STATE["config"]
    if config is None or d not in config.domains:
        return app
    broker, backend = config.broker_for(d), config.backend_for(d)
    if (broker, backend) == (app.conf.broker_url, app.conf.result_backend):
        return app
    client = _CLIENTS.get((broker, backend))
    if client is None:
        client = Celery(f"regionvault-{d.value}")
        _apply(client, config, d)
        _CLIENTS[(broker, backend)] = client
    return client


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
configure(app, _config_from_environment(), worker_domain())
# The worker signals (residency guard, journal, metrics) are connected by the package
# (workers/__init__.py), which Python runs before this module whoever imports it; tracing's
# (off unless OTEL_* asks for it) are connected here, as the app is made.
import workers.tracing  # noqa: E402, F401
