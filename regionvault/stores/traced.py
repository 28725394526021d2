"""A span around every call of an ``ObjectStore``: the one place store calls are traced.

``DomainContext`` wraps its stores in ``TracedStore`` only while tracing is on
(``regionvault.tracing``), so every store kind is traced the same way and none of them knows
about tracing; with tracing off the stores are used bare. A span names the store, the
operation and the bytes moved: never the object's contents, and never its key (the backup
id and source are on the step span above it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO

from regionvault import tracing
from regionvault.errors import NotFound
from regionvault.stores.base import IncompleteUpload, LockSettings, ObjectInfo, ObjectStore


class TracedStore:
    """An ``ObjectStore`` that runs each call of ``inner`` in a span ``regionvault.store
    <name>.<operation>``. Anything beyond the Protocol (a store's own extras) is passed
    through untraced, and ``isinstance`` sees the inner store's class, as a caller that
    needs a kind's extras (``SwiftStore.expires_at``) checks it."""

    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner
        self.name = inner.name
        self.bucket = inner.bucket
        self.lock_mode = inner.lock_mode

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # the unittest.mock trick: isinstance() checks __class__
        return type(self._inner)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    def __repr__(self) -> str:
        return f"TracedStore({self._inner!r})"

    @contextlib.contextmanager
    def _span(self, operation: str, **values: object) -> Iterator[tracing.Span | tracing.NoSpan]:
        with tracing.span(f"regionvault.store {self.name}.{operation}",
                          {"store": self.name, "operation": operation, **values}) as sp:
            try:
                yield sp
            except NotFound:
                # an answer, not a failure: steps ask whether a manifest is there yet
                sp.set(outcome="not_found")
                raise
            if not sp.outcome:
                sp.set(outcome="done")

    def check_residency(self, allowed: frozenset[str]) -> None:
        with self._span("check_residency"):
            self._inner.check_residency(allowed)

    def put_file(self, key: str, path: str, *, crc32c: str,
                 retain_until: datetime | None = None) -> ObjectInfo:
        with self._span("put_file") as sp:
            info = self._inner.put_file(key, path, crc32c=crc32c, retain_until=retain_until)
            sp.set(bytes=info.size)
            return info

    def put_stream(self, key: str, stream: BinaryIO, size: int, *, crc32c: str,
                   retain_until: datetime | None = None) -> ObjectInfo:
        with self._span("put_stream", bytes=size):
            return self._inner.put_stream(key, stream, size, crc32c=crc32c,
                                          retain_until=retain_until)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with self._span("put_bytes", bytes=len(data)):
            return self._inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        with self._span("get_bytes") as sp:
            data = self._inner.get_bytes(key)
            sp.set(bytes=len(data))
            return data

    def open_read(self, key: str) -> BinaryIO:
        # the span covers opening; the bytes are read by whoever holds the stream
        with self._span("open_read"):
            return self._inner.open_read(key)

    def stat(self, key: str) -> ObjectInfo:
        with self._span("stat"):
            return self._inner.stat(key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        with self._span("list_keys") as sp:
            keys = list(self._inner.list_keys(prefix))
            sp.set(items=len(keys))
        return iter(keys)

    def list_info(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._span("list_info") as sp:
            infos = list(self._inner.list_info(prefix))
            sp.set(items=len(infos))
        return iter(infos)

    def delete(self, key: str) -> None:
        with self._span("delete"):
            self._inner.delete(key)

    def incomplete_uploads(self, prefix: str) -> list[IncompleteUpload]:
        with self._span("incomplete_uploads"):
            return self._inner.incomplete_uploads(prefix)

    def abort_upload(self, upload: IncompleteUpload) -> bool:
        with self._span("abort_upload"):
            return self._inner.abort_upload(upload)

    def abort_incomplete_uploads(self, prefix: str) -> int:
        with self._span("abort_incomplete_uploads"):
            return self._inner.abort_incomplete_uploads(prefix)

    def delete_noncurrent_versions(self, key: str) -> int:
        with self._span("delete_noncurrent_versions"):
            return self._inner.delete_noncurrent_versions(key)

    def lock_settings(self) -> LockSettings:
        with self._span("lock_settings"):
            return self._inner.lock_settings()


def traced(store: ObjectStore) -> ObjectStore:
    """``store`` with its calls traced while tracing is on; ``store`` itself when it is off."""
    if not tracing.active() or isinstance(store, TracedStore):
        return store
    return TracedStore(store)


__all__ = ["TracedStore", "traced"]
