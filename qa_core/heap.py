"""Keeping the resident memory of a long CPU inference job flat under glibc's allocator.

Every batch has a different (B, P) shape, and its activations are tens of MB. glibc serves big
allocations with their own mmap until a freed mmapped chunk raises its threshold (up to 32 MB); from then
on activations come from the heap arenas, which fragment as new shapes arrive, so the resident set grows
with the rows. Measured on `docqa predict` (bf16, SQuAD dev rows, 2 cores; benchmarks/RESULTS.md):

- `malloc_trim(0)` once per sort buffer: 1.0 GB after 2,000 rows, 1.25 GB after 50,000 (+28%);
- `malloc_trim(0)` after every CPU batch (this module, from `run_batch_contained`): 0.76 GB after 2,000 rows,
  0.88 GB after 50,000. It costs 2-4% of throughput (freed pages are faulted in again by the next
  batch); trimming every 8th batch costs half as much but leaves the peak at 1.0 GB (the leftovers of
  differently shaped batches are not reused by the next one);
- pinning the mmap threshold at 128 KiB (`mallopt`): 0.72 GB and flat, but every fresh mapping is
  zero-filled by the kernel and the forward pass got 23% slower in fp32, 27% in bf16;
- running the largest batch shapes first: flat, but at 1.4 GB from the first row.

Arrow's default memory pool (mimalloc or jemalloc) keeps freed pages of Parquet reading and writing for
reuse, out of reach of `malloc_trim`: with a tiny model it held a third of predict's growth from 2,000
to 50,000 rows (+76 MB vs +50 MB with the system pool). `docqa predict` therefore switches Arrow to the
system allocator (`use_system_arrow_pool`).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any


def _load_malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other libcs: nothing to release this way
        return None


_MALLOC_TRIM = _load_malloc_trim()


def use_system_arrow_pool() -> None:
    """Makes glibc malloc Arrow's default memory pool, so the per-batch trim also returns its pages.

    Process-wide: called by the `docqa predict` command, not by the library functions, which leave the
    caller's process settings alone.
    """
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc `malloc_trim`); called after every CPU batch."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
