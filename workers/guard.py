"""The residency guard of a worker: it serves one domain and refuses everything else.

A worker is started with ``REGIONVAULT_DOMAIN``; it must consume exactly that domain's queue
(checked at start-up) and refuses, without running it, any task whose ``domain`` argument
names another domain (checked before every task). A refused task is rejected (not requeued)
and logged, so a misrouted message can neither run here nor loop between workers.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject, WorkerShutdown
from celery.signals import celeryd_after_setup

from regionvault.domains import Domain, queue_name
from workers.metrics import MISROUTED
from workers.runtime import serves, worker_domain

log = logging.getLogger("regionvault.guard")


def queue_problem(domain: Domain | None, consumed: set[str]) -> str | None:
    """Why a worker serving ``domain`` must not consume ``consumed``, or None if it may."""
    if domain is None:
        return ("REGIONVAULT_DOMAIN is not set: start a worker with the domain it serves, e.g. "
                "REGIONVAULT_DOMAIN=eu celery -A workers worker -Q backup.eu")
    if consumed != {queue_name(domain)}:
        return (f"worker of domain {domain.value!r} must consume exactly {queue_name(domain)} "
                f"(it was given: {', '.join(sorted(consumed))}); pass -Q {queue_name(domain)}")
    return None


@celeryd_after_setup.connect
def _check_queues(sender: str, instance: Any, **_: Any) -> None:
    domain = worker_domain()
    consumed = set(instance.app.amqp.queues.consume_from or instance.app.amqp.queues)
    problem = queue_problem(domain, consumed)
    if problem is not None:
        log.critical("refusing to start: %s", problem)
        # Celery's signal dispatch swallows ordinary exceptions; WorkerShutdown stops it.
        raise WorkerShutdown(problem)
    assert domain is not None
    log.info("worker %s serves domain %s from queue %s", sender, domain.value,
             queue_name(domain))


class DomainTask(Task):
    """Base of every regionvault task: refuse tasks of another domain before they run."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        requested = kwargs.get("domain")
        if not serves(requested):
            served = worker_domain()
            assert served is not None
            log.error(
                "REFUSED misrouted task %s[%s]: it is for domain %r but this worker serves "
                "domain %r; rejected without running",
                self.name, self.request.id, requested, served.value,
            )
            MISROUTED.labels(worker_domain=served.value, task_domain=str(requested)).inc()
            raise Reject(
                f"task for domain {requested!r} refused by a worker of domain {served.value!r}",
                requeue=False,
            )
        return super().__call__(*args, **kwargs)
