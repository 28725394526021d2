"""The Celery tasks: one thin task per step, each calling the core in ``regionvault.chain``,
and the operator's commands that need a domain's secrets (verify, check, restore), run on
the domain's own workers.

Task arguments are small JSON, safe to show in Flower: a backup id, a domain, a source name,
a reference to a secret (never the secret). Importing this package registers every task with
the app (``workers.app`` names it in its ``imports``); how a run is started is
``workers.canvas``.
"""

from tasks import (
    backup_domain,
    check_domain,
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
    verify_backup,
)

__all__ = ["backup_domain", "check_domain", "discard", "drill", "dump", "encrypt", "expire",
           "expire_domain", "integrity", "reconcile", "replicate", "restore", "upload", "verify",
           "verify_backup"]
