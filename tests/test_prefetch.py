"""The prefetch thread: order, errors at the right position, early stop, and overlap with the caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from qa_core.engine.prefetch import prefetch


class InputBrokeError(RuntimeError):
    pass


def test_yields_every_item_in_order() -> None:
    assert list(prefetch(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(prefetch([], depth=1)) == []


def test_error_is_raised_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise InputBrokeError("file 3 is corrupt")

    seen: list[int] = []
    with pytest.raises(InputBrokeError, match="file 3 is corrupt"):
        for item in prefetch(items(), depth=2):
            seen.append(item)
    assert seen == [1, 2]


def test_producer_runs_at_most_depth_ahead_and_stops_when_the_caller_does() -> None:
    produced: list[int] = []

    def items() -> Iterator[int]:
        for i in range(10_000):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert next(stream) == 0
    time.sleep(0.3)
    # One handed out, `depth` queued, one produced and waiting to be queued.
    assert len(produced) <= 4
    stream.close()  # joins the producer thread
    assert len(produced) <= 5
    assert not any(t.name == "docqa-prefetch" for t in threading.enumerate())


def test_a_source_generator_is_closed_when_the_caller_stops_early() -> None:
    released: list[str] = []

    def items() -> Iterator[int]:
        try:
            yield from range(10_000)
        finally:
            released.append(threading.current_thread().name)  # e.g. files or workers it holds

    stream = prefetch(items(), depth=2, name="docqa-test-source")
    assert next(stream) == 0
    stream.close()
    # Closed by the producer thread, before close() returns, not whenever it is garbage collected.
    assert released == ["docqa-test-source"]


def test_next_item_is_produced_while_the_caller_holds_this_one() -> None:
    caller_busy = threading.Event()
    second_ready = threading.Event()

    def items() -> Iterator[int]:
        yield 0
        # Without a background producer, this would wait for the caller, which waits for us.
        assert caller_busy.wait(timeout=5)
        second_ready.set()
        yield 1

    stream = prefetch(items(), depth=1)
    assert next(stream) == 0
    caller_busy.set()
    assert second_ready.wait(timeout=5), "the next item was not produced while the caller worked"
    assert list(stream) == [1]


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth must be >= 1"):
        next(prefetch([1], depth=0))
