"""A background thread that prepares the next items of an iterator while the caller works on this one.

The engine uses it to read, validate, tokenize and plan the next sort buffer while the model runs on
the current one. Both sides spend most of their time outside the GIL (the Rust tokenizer, Parquet
decoding, torch kernels), so on a GPU the host-side preparation hides behind the device's compute.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.1  # how often a blocked producer checks whether the consumer went away


class _End:
    """Marks the end of the producer's items (normal or failed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def prefetch(items: Iterable[T], depth: int, name: str = "docqa-prefetch") -> Iterator[T]:
    """Yields `items` in order, producing up to `depth` of them ahead in a daemon thread.

    An exception raised while producing is re-raised in the caller, at the position where the failed
    item would have been, with its original type and traceback. When the caller stops early (closes the
    generator), the producer stops after its current item.

    Args:
        items: Any iterable; it is consumed only by the background thread.
        depth: Items held ready ahead of the caller (>= 1); each one costs its memory.
        name: Thread name (shows in stack dumps and profilers).

    Raises:
        ValueError: When `depth` < 1.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    ready: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: T | _End) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(_End(err))
            return
        finally:
            # A generator source releases what it holds (files, worker processes) here, in the thread
            # that ran it, also when the consumer stopped early.
            close = getattr(source, "close", None)
            if close is not None:
                close()
        put(_End())

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join()
