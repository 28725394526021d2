"""regionvault: region-pinned, client-side encrypted database backups.

The domain core: configuration, domains, sources, stream format, stores, manifests, retention,
restore and the CLI. It imports no Celery (``tasks/`` and ``workers/`` adapt it to Celery).
"""

__version__ = "0.1.0"
