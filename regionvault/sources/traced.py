"""A span around the restore-side calls of a ``Source`` (``check_target``, ``row_counts``,
``restore``), applied where restorers are made (``kinds.restorer_for``) while tracing is on.

The dump's span is made by the step that calls it (``regionvault.chain.dump``). A span names
the source, its kind and the operation: never the target's DSN, never a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from regionvault import tracing
from regionvault.sources.base import DumpInfo, Source


class TracedSource:
    """A ``Source`` whose restore-side calls are spans ``regionvault.source <operation>``."""

    def __init__(self, inner: Source) -> None:
        self._inner = inner
        self.kind = inner.kind
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def _span(self, operation: str) -> Any:
        return tracing.span(f"regionvault.source {operation}",
                            {"source": self.name, "source_kind": self.kind,
                             "operation": operation})

    def dump(self, write: Callable[[bytes], object]) -> DumpInfo:
        return self._inner.dump(write)  # the dump step makes this span itself

    def check_target(self, target_dsn: str, *, clean: bool = False,
                     dump: DumpInfo | None = None) -> None:
        with self._span("check_target"):
            self._inner.check_target(target_dsn, clean=clean, dump=dump)

    def row_counts(self, target_dsn: str) -> dict[str, int]:
        with self._span("row_counts"):
            return self._inner.row_counts(target_dsn)

    def restore(self, chunks: Iterable[bytes], target_dsn: str, *, clean: bool = False) -> None:
        with self._span("restore") as sp:
            counted = 0

            def counting() -> Iterable[bytes]:
                nonlocal counted
                for chunk in chunks:
                    counted += len(chunk)
                    yield chunk

            try:
                self._inner.restore(counting(), target_dsn, clean=clean)
            finally:
                sp.set(bytes=counted)
            sp.set(outcome="done")


def traced_source(source: Source) -> Source:
    """``source`` with its restore-side calls traced while tracing is on; itself when off."""
    if not tracing.active() or isinstance(source, TracedSource):
        return source
    return TracedSource(source)


__all__ = ["TracedSource", "traced_source"]
