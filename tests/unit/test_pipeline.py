"""regionvault.pipeline.Stage: items in order and bounded ahead, the producer's errors raised to
the consumer, and no thread left behind however the consumer stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from regionvault.errors import IntegrityError, TransientStoreError
from regionvault.pipeline import POLL_SECONDS, Stage, StageClosed

#: long enough for a thread to do what a test waits for, short enough to fail fast
PATIENCE = 5.0


def stage_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-stage")]


@pytest.fixture(autouse=True)
def _no_thread_left() -> Iterator[None]:
    yield
    assert stage_threads() == []


class Source:
    """A generator of numbered items that records how far it got and whether it was closed,
    and in which thread its code ran."""

    def __init__(self, count: int, *, fail_at: int | None = None,
                 error: BaseException | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.error = error or TransientStoreError("the connection to S3 was reset")
        self.produced = 0
        self.closed = threading.Event()
        self.thread_names: set[str] = set()

    def items(self) -> Iterator[int]:
        try:
            for number in range(self.count):
                self.thread_names.add(threading.current_thread().name)
                if number == self.fail_at:
                    raise self.error
                self.produced += 1
                yield number
        finally:
            self.closed.set()


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {PATIENCE}s: {what}")
        time.sleep(0.01)


def test_yields_every_item_in_order_from_its_own_thread() -> None:
    source = Source(100)
    with Stage(source.items(), name="test-stage") as stage:
        assert list(stage) == list(range(100))
        assert list(stage) == []  # ended: stays ended
    assert source.thread_names == {"test-stage"}
    assert source.closed.is_set()


def test_runs_at_most_depth_items_ahead() -> None:
    source = Source(100)
    with Stage(source.items(), name="test-stage", depth=3) as stage:
        # three queued, and a fourth produced that waits for room
        wait_until(lambda: source.produced == 4, "the producer fills the queue")
        time.sleep(5 * POLL_SECONDS)
        assert source.produced == 4
        assert next(stage) == 0
        wait_until(lambda: source.produced == 5, "the producer takes the freed place")


def test_an_error_reaches_the_consumer_after_the_items_before_it() -> None:
    error = IntegrityError("chunk 3 of the encrypted stream failed authentication")
    source = Source(10, fail_at=3, error=error)
    with Stage(source.items(), name="test-stage") as stage:
        got = []
        with pytest.raises(IntegrityError) as raised:
            for item in stage:
                got.append(item)
        assert got == [0, 1, 2]
        assert raised.value is error  # the same object: type, message and cause unchanged
        assert list(stage) == []
    assert source.closed.is_set()


def test_an_error_passes_through_a_chain_of_stages() -> None:
    source = Source(10, fail_at=5)

    def doubled(numbers: Stage[int]) -> Iterator[int]:
        for number in numbers:
            yield 2 * number

    with (Stage(source.items(), name="test-stage-1") as first,
          Stage(doubled(first), name="test-stage-2") as second):
        got = []
        with pytest.raises(TransientStoreError, match="reset"):
            for item in second:
                got.append(item)
        assert got == [0, 2, 4, 6, 8]


def test_closing_early_stops_the_producer_and_closes_its_source() -> None:
    source = Source(1_000_000)
    stage = Stage(source.items(), name="test-stage", depth=2)
    assert next(stage) == 0
    wait_until(lambda: source.produced >= 3, "the producer blocks on a full queue")
    started = time.monotonic()
    stage.close()
    assert time.monotonic() - started < 1.0
    assert source.closed.is_set()
    assert source.produced < 10
    assert stage_threads() == []
    stage.close()  # idempotent
    with pytest.raises(StageClosed):
        next(stage)


def test_leaving_the_with_block_on_an_error_stops_every_stage() -> None:
    first_source, second_source = Source(1_000_000), Source(1_000_000)
    with pytest.raises(RuntimeError, match="pg_restore"), \
            Stage(first_source.items(), name="test-stage-1"), \
            Stage(second_source.items(), name="test-stage-2") as second:
        next(second)
        raise RuntimeError("pg_restore exited 1")
    assert first_source.closed.is_set() and second_source.closed.is_set()


def test_close_waits_for_a_producer_busy_inside_its_source() -> None:
    release = threading.Event()
    inside = threading.Event()
    finished = threading.Event()

    def slow() -> Iterator[int]:
        try:
            inside.set()
            release.wait(PATIENCE)  # a network read that has not returned yet
            yield 1
        finally:
            finished.set()

    stage = Stage(slow(), name="test-stage")
    assert inside.wait(PATIENCE)
    closer = threading.Thread(target=stage.close)
    closer.start()
    time.sleep(5 * POLL_SECONDS)
    assert closer.is_alive()  # no thread is abandoned: close waits for the read
    release.set()
    closer.join(PATIENCE)
    assert not closer.is_alive()
    assert finished.is_set()


def test_a_consumer_waiting_on_a_closed_stage_gets_stage_closed() -> None:
    release = threading.Event()

    def stuck() -> Iterator[int]:
        release.wait(PATIENCE)
        yield 1

    stage = Stage(stuck(), name="test-stage")
    closer = threading.Thread(target=stage.close)
    closer.start()
    with pytest.raises(StageClosed, match="test-stage"):
        next(stage)
    release.set()
    closer.join(PATIENCE)
    assert not closer.is_alive()


def test_an_error_while_closing_the_source_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def cleanup_fails() -> Iterator[int]:
        try:
            yield from range(1_000_000)
        finally:
            raise OSError("could not close the download")

    stage = Stage(cleanup_fails(), name="test-stage")
    assert next(stage) == 0
    stage.close()
    assert "could not close the download" in caplog.text


def test_arguments_are_checked_at_once() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Stage(iter([1]), name="test-stage", depth=0)
    with pytest.raises(TypeError):
        Stage(42, name="test-stage")  # type: ignore[arg-type]
