"""The Celery side of regionvault: the app, its queues and routing, and the worker guard.

``celery -A workers worker -Q backup.eu`` (with ``REGIONVAULT_DOMAIN=eu``) starts a worker of
the eu pool; ``celery -A workers beat`` the scheduler; ``celery -A workers flower`` Flower.
"""

from workers.app import app

__all__ = ["app"]
