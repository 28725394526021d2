"""The Celery tasks: one thin task per step, each calling the core in ``regionvault.chain``.

Task arguments are small JSON, safe to show in Flower: a backup id, a domain, a source name.
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
from tasks.canvas import start_run

__all__ = ["backup_domain", "discard", "drill", "dump", "encrypt", "expire", "expire_domain",
           "integrity", "reconcile", "replicate", "restore", "start_run", "upload", "verify"]
