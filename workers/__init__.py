"""The Celery side of regionvault: the app, its queues and routing, and the worker guard.

``celery -A workers worker -Q backup.eu`` (with ``REGIONVAULT_DOMAIN=eu``) starts a worker of
the eu pool; ``celery -A workers beat`` the scheduler; ``regionvault flower`` Flower.

Importing any module of this package runs this one first: it makes the app and connects the
worker signals (the residency guard, the journal's record of a step's death, the metrics).
They are connected here rather than in ``workers.app`` because ``workers.journal`` reads the
app's result backend, and the app must not import what imports it.
"""

from workers import guard, journal, metrics
from workers.app import app

__all__ = ["app", "guard", "journal", "metrics"]
