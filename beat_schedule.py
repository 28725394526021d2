"""The beat schedule, built from the configuration: one entry per domain.

Per domain: ``backup_domain(domain)`` at the domain's cron schedule, ``reconcile(domain)``
every ``reconcile.interval_seconds``, ``expire_domain(domain)`` every
``retention.sweep_interval_seconds`` (even without sources), and ``restore_drill(domain)`` at
its drill schedule (when a scratch server is configured), each sent to that domain's own queue.
Times are UTC. A domain with its own broker has its own beat (``REGIONVAULT_DOMAIN`` set),
which publishes only that domain's entries, on that broker; a shared beat publishes those of
the domains on the shared broker (see the README's topologies). Beat holds no state of its
own: a second beat, or one restarted within a slot, starts nothing new (a slot's backup id
is fixed, see ``regionvault.schedule``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from celery.schedules import crontab

from regionvault.config import Config
from regionvault.domains import Domain, queue_name


def cron(expression: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                   month_of_year=month_of_year, day_of_week=day_of_week)


def build_beat_schedule(config: Config,
                        domains: Collection[Domain] | None = None) -> dict[str, dict[str, Any]]:
    """The entries of ``domains`` (default: every configured domain). A beat connected to
    one broker is given the domains on that broker: each entry is published there."""
    schedule: dict[str, dict[str, Any]] = {}
    for domain, dcfg in sorted(config.domains.items()):
        if domains is not None and domain not in domains:
            continue
        # before the check for sources: backups of sources removed from the configuration
        # stay in the stores until they expire, and are read back like any other
        schedule[f"integrity-{domain.value}"] = {
            "task": "regionvault.integrity_sample",
            "schedule": cron(config.integrity.schedule),
            "kwargs": {"domain": domain.value},
            "options": {"queue": queue_name(domain)},
        }
        # Expiry runs for every domain, sources or not: personal data leaves on time whether
        # or not any backup succeeds, and whatever the configuration says today. Not expired
        # when late: a sweep that waited in the queue is the one the cutoff is waiting for.
        schedule[f"expire-{domain.value}"] = {
            "task": "regionvault.expire_domain",
            "schedule": float(config.retention.sweep_interval_seconds),
            "kwargs": {"domain": domain.value},
            "options": {"queue": queue_name(domain)},
        }
        # The reconciler too: a domain whose sources were all removed may still hold their
        # spool directories and open uploads.
        schedule[f"reconcile-{domain.value}"] = {
            "task": "regionvault.reconcile",
            "schedule": config.reconcile.interval_seconds,
            "kwargs": {"domain": domain.value},
            # a tick that waited longer than a tick is worth nothing: the next one is coming
            "options": {"queue": queue_name(domain),
                        "expires": config.reconcile.interval_seconds},
        }
        if not dcfg.sources:
            continue
        schedule[f"backup-{domain.value}"] = {
            "task": "regionvault.backup_domain",
            "schedule": cron(dcfg.schedule),
            "kwargs": {"domain": domain.value},
            "options": {"queue": queue_name(domain)},
        }
        if dcfg.drill.scheduled:
            schedule[f"restore-drill-{domain.value}"] = {
                "task": "regionvault.restore_drill",
                "schedule": cron(dcfg.drill.schedule),
                "kwargs": {"domain": domain.value},
                "options": {"queue": queue_name(domain)},
            }
    return schedule
