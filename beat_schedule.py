"""The beat schedule, built from the configuration: one entry per domain.

Each entry sends ``backup_domain(domain)`` to that domain's own queue, at the domain's cron
schedule (UTC). There is deliberately nothing else here: beat holds no state of its own.
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
    return {
        f"backup-{domain.value}": {
            "task": "regionvault.backup_domain",
            "schedule": cron(dcfg.schedule),
            "kwargs": {"domain": domain.value},
            "options": {"queue": queue_name(domain)},
        }
        for domain, dcfg in sorted(config.domains.items())
        if dcfg.sources
    }
