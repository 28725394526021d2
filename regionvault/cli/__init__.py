"""The ``regionvault`` command line.

Errors are one sentence on stderr and a non-zero exit: 2 for bad input or configuration,
1 for an operation that failed. The CLI calls the core directly, and the Celery app only to
enqueue work and wait for it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from regionvault.cli import backups, compliance, flower, operations, provision, restores, stack
from regionvault.cli.common import app

__all__ = ["app", "backups", "compliance", "flower", "main", "operations", "provision", "restores",
           "stack"]


def main() -> None:
    # Celery must find the same configuration as the CLI when the CLI enqueues.
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            os.environ["REGIONVAULT_CONFIG"] = str(Path(argv[i + 1]).resolve())
    app()


if __name__ == "__main__":
    main()
