"""The beat schedule, built from the configuration: one entry per domain.

Per domain: ``backup_domain(domain)`` at the domain's cron schedule, and
``restore_drill(domain)`` at its drill schedule (when a scratch server is configured), each
sent to that domain's own queue. Times are UTC. Beat holds no state of its own.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from regionvault.config import Config
from regionvault.domains import queue_name


def cron(expression: str) -> crontab:
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                   month_of_year=month_of_year, day_of_week=day_of_week)


def build_beat_schedule(config: Config) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    for domain, dcfg in sorted(config.domains.items()):
        if not dcfg.sources:
            continue
        schedule[f"backup-{domain.value}"] = {
            "task": "regionvault.backup_domain",
            "schedule": cron(dcfg.schedule),
            "kwargs": {"domain": domain.value},
            "options": {"queue": queue_name(domain)},
        }
        if dcfg.drill.scratch_dsn is not None:
            schedule[f"restore-drill-{domain.value}"] = {
                "task": "regionvault.restore_drill",
                "schedule": cron(dcfg.drill.schedule),
                "kwargs": {"domain": domain.value},
                "options": {"queue": queue_name(domain)},
            }
    return schedule
