"""Prometheus metrics of the workers (exported on a port by a later issue's exporter)."""

from prometheus_client import Counter

MISROUTED = Counter(
    "regionvault_misrouted_tasks_refused_total",
    "Tasks refused because they named another domain than the worker's",
    ["worker_domain", "task_domain"],
)
