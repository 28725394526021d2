"""The Celery tasks: one thin task per step, each calling the core in ``regionvault.chain``.

Task arguments are small JSON, safe to show in Flower: a backup id, a domain, a source name.
Importing this package registers every task with the app (``workers.app`` names it in its
``imports``); how a run is started is ``workers.canvas``.
"""

from tasks import (
    backup_domain,
    discard,
    drill,
    dump,
    encrypt,
    expire,
    expire_domain,
    integrity,
    reconcile,
    replicate,
    restore,
    upload,
    verify,
)

__all__ = ["backup_domain", "discard", "drill", "dump", "encrypt", "expire", "expire_domain",
           "integrity", "reconcile", "replicate", "restore", "upload", "verify"]
