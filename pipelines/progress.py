"""A progress bar (rows/s, ETA) for Beam runs whose workers live in the launcher's process.

DirectRunner in-memory and PortableRunner with a LOOPBACK environment run the DoFns inside the launching
process, so a module-level bar that the counting step advances is seen by the user; in worker processes
of other runners the bar does not exist and `advance` does nothing (their UI shows the `docqa` counters).
"""

from __future__ import annotations

import sys
import threading

from tqdm import tqdm

_bar: tqdm | None = None
_lock = threading.Lock()


def start(total: int, enabled: bool = True) -> None:
    """Opens the bar for `total` rows (answers + rejections)."""
    global _bar  # noqa: PLW0603 - one bar per launching process, on purpose
    _bar = tqdm(total=total, desc="rows", unit="row", disable=not enabled, file=sys.stderr)


def advance(rows: int = 1) -> None:
    """Counts finished rows, when this process holds a bar."""
    if _bar is not None:
        with _lock:  # bundles may be processed by several threads
            _bar.update(rows)


def close() -> None:
    """Closes the bar."""
    global _bar  # noqa: PLW0603
    if _bar is not None:
        _bar.close()
        _bar = None
