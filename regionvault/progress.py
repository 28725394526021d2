"""How long work says how far it is: one record, one callback type, for the chain's steps
and for restores alike.

A report carries metadata only (which backup, which step, which store, how many bytes), never
data: the runner forwards it to the result backend, where Flower and ``regionvault watch``
read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressReport:
    """How far one piece of work is."""

    backup_id: str
    #: a chain step ("dump", "encrypt", ...) or a restore's stage ("download", "restore")
    step: str
    #: bytes done so far
    done: int
    #: bytes expected in all, when known
    total: int | None = None
    #: the store read or written ("s3", "gcs"), when there is one
    store: str | None = None


Progress = Callable[[ProgressReport], None]


def no_progress(_: ProgressReport) -> None:
    """A ``Progress`` that ignores every report."""
    return None
