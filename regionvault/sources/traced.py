"""A span around every call of a ``Source`` (``dump``, ``check_target``, ``row_counts``,
``restore``), applied where sources are made (``kinds.open_source``, ``kinds.restorer_for``)
while tracing is on: the one place source calls are traced, as ``stores.traced`` is for the
stores. A span names the source, its kind, the operation and the bytes: never a DSN, never a
row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from regionvault import tracing
from regionvault.sources.base import DumpInfo, Source


class TracedSource:
    """A ``Source`` whose calls are spans ``regionvault.source <operation>``."""

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
        with self._span("dump") as sp:
            counted = 0

            def counting(chunk: bytes) -> object:
                nonlocal counted
                counted += len(chunk)
                return write(chunk)

            try:
                return self._inner.dump(counting)
            finally:
                sp.set(bytes=counted)

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
