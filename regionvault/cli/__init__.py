"""The ``regionvault`` command line.

Errors are one sentence on stderr and a non-zero exit: 2 for bad input or configuration,
1 for an operation that failed. The CLI calls the core directly, and reaches the workers (to
enqueue work and follow it) only through the ``Dispatcher`` it is given: ``main`` takes it,
and the ``regionvault`` console script (``regionvault_cli``, outside the core) passes the
Celery one and adds the ``flower`` command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import typer

from regionvault.cli import (
    backups,
    completion,
    compliance,
    keys,
    operations,
    provision,
    restores,
    stack,
)
from regionvault.cli.common import app
from regionvault.dispatch import Connect

__all__ = [
    "app",
    "backups",
    "completion",
    "compliance",
    "export_config",
    "keys",
    "main",
    "operations",
    "provision",
    "restores",
    "stack",
]


def export_config(argv: Sequence[str]) -> None:
    """Put ``--config FILE`` of ``argv`` into ``REGIONVAULT_CONFIG``: the workers' client (which
    reads it when it connects) and every process a command starts find the same file."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            os.environ["REGIONVAULT_CONFIG"] = str(Path(argv[i + 1]).resolve())


def main(connect: Connect, commands: typer.Typer = app,
         argv: Sequence[str] | None = None) -> None:
    """Run the command line on ``argv`` (else the process's arguments). ``connect`` gives the
    way to the workers, called when a command first needs them; ``commands`` is this package's
    app, or one that includes it (the console script's adds ``flower``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    export_config(args)
    commands(args=args, obj=connect, prog_name="regionvault")
