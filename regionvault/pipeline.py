"""Stages of a byte stream that run side by side: a producer in its own thread, handing its
items to the consumer through a bounded queue.

A restore is download -> decrypt and decompress -> pg_restore. Run one after the other in one
thread, each stage waits while the others work; as ``Stage``s they overlap, and the queue
between two stages holds at most ``depth`` items, so memory stays bounded.

The contract of a ``Stage`` (created, iterated and closed by one consumer thread):

- Its thread starts at once and iterates ``items``, at most ``depth`` items ahead of the
  consumer.
- An exception raised by ``items`` is raised to the consumer after the items produced before
  it, as the same exception object (type, message and cause unchanged); then the stage ends.
- ``close`` (or leaving the ``with`` block) stops the producer at its next item, closes
  ``items`` (its ``finally`` clauses run, in the producer's thread) and waits for the thread to
  end. A producer blocked inside ``items`` (a network read, say) is waited for: whatever bounds
  that read (the store's timeout) bounds the wait. No thread outlives ``close``.
- A consumer that asks a closed stage for more (or is waiting on it when another thread
  closes it, by mistake) gets ``StageClosed`` instead of waiting for ever.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar, cast

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how often a blocked producer or consumer looks whether the stage was closed (seconds); a
#: put or get that can go ahead is woken at once, so this only bounds how long ``close`` waits
POLL_SECONDS = 0.05


class StageClosed(RuntimeError):
    """The consumer asked a closed stage for an item (or was waiting when it was closed)."""


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


class Stage(Generic[T]):
    """An iterator over what ``items`` yields, computed ahead in a thread of its own."""

    def __init__(self, items: Iterable[T], *, name: str, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError("a stage needs room for at least one item")
        self.name = name
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        # iter() here, not in the thread: an argument that is not iterable fails now
        self._thread = threading.Thread(target=self._produce, args=(iter(items),), name=name,
                                        daemon=True)
        self._thread.start()

    # -- the consumer's side ----------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        if self._stop.is_set():
            raise StageClosed(f"stage {self.name!r} was closed")
        item = self._get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._finished = True
            raise item.error
        return cast(T, item)

    def close(self) -> None:
        """Stop the producer and wait for its thread to end (idempotent)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Stage[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _get(self) -> object:
        while True:
            try:
                return self._queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    raise StageClosed(f"stage {self.name!r} was closed") from None

    # -- the producer's side (its own thread) -----------------------------------------------

    def _produce(self, iterator: Iterator[T]) -> None:
        try:
            for item in iterator:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failed(exc))
        finally:
            self._close_source(iterator)

    def _put(self, item: object) -> bool:
        """Queue ``item``; False if the stage was closed first."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _close_source(self, iterator: Iterator[T]) -> None:
        close = getattr(iterator, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception as exc:  # nobody is left to raise it to
            # Only reached when the consumer already stopped (a finished generator closes
            # silently), so the consumer has its own error or result; note this one.
            log.warning("stage %r failed while stopping: %s", self.name, exc)


__all__ = ["POLL_SECONDS", "Stage", "StageClosed"]
