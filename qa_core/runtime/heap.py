"""Keeping the resident memory of a long CPU inference job flat under glibc's allocator.

Every batch has a different (B, P) shape, and its activations are tens of MB. glibc serves big
allocations with their own mmap until a freed mmapped chunk raises its threshold (up to 32 MB); from then
on activations come from the heap arenas, which fragment as new shapes arrive, so the resident set grows
with the rows. Measured on `docqa predict` (bf16, SQuAD dev rows, 2 cores; benchmarks/RESULTS.md):

- `malloc_trim(0)` once per sort buffer: 1.0 GB after 2,000 rows, 1.25 GB after 50,000 (+28%);
- `malloc_trim(0)` after every CPU batch: 0.76 GB after 2,000 rows, 0.88 GB after 50,000. It costs
  throughput: the freed pages are faulted in (and zero-filled) again by the next batch. Trimming every
  8th batch costs half as much but leaves the peak at 1.0 GB (the leftovers of differently shaped
  batches are not reused by the next one);
- `malloc_trim(0)` after a batch only once the resident set has grown `TRIM_SLACK_BYTES` past what the
  last trim left (this module): the next batches reuse up to that much freed memory without faults, and
  the resident set stays within it of the live size. Against trimming every batch: fp32 predict on 1,000
  dev rows 40.3-40.9 q/s with 128 MiB, 41.0-41.5 with 256 MiB, 38.5-39.3 every batch; bf16 predict peak
  after 2,000 / 10,000 rows 0.76 / 0.85 GB with 128 MiB (108 s for the 10,000), 0.85-0.90 / 0.95-0.99 GB
  with 256 MiB (101-110 s), 0.73-0.75 / 0.81 GB every batch (120-123 s). 128 MiB keeps most of the speed
  for little memory;
- pinning the mmap threshold at 128 KiB (`mallopt`): 0.72 GB and flat, but every fresh mapping is
  zero-filled by the kernel and the forward pass got 23% slower in fp32, 27% in bf16;
- running the largest batch shapes first: flat, but at 1.4 GB from the first row.

Arrow's default memory pool (mimalloc or jemalloc) keeps freed pages of Parquet reading and writing for
reuse, out of reach of `malloc_trim`: with a tiny model it held a third of predict's growth from 2,000
to 50,000 rows (+76 MB vs +50 MB with the system pool). `docqa predict` therefore switches Arrow to the
system allocator (`use_system_arrow_pool`).

torch's bf16 matmuls on a CPU go through ideep and oneDNN, which compile a primitive per operator and
input shape and keep it in two caches of 1,024 entries each (ideep's `LRU_CACHE_CAPACITY`, oneDNN's
`ONEDNN_PRIMITIVE_CACHE_CAPACITY`), with its JIT code and buffers. Every (B, P) batch shape brings new
ones, so the resident set grew with the number of distinct shapes, that is with the rows: bf16 predict of
10,000 dev rows peaked at 869 MB, 777 MB with only oneDNN's cache at 8, in the same 106-107 s (sorted
batches reuse the last few shapes). A bf16 linear over 320 shapes grows the process by 120 MB, by 57 MB
with either cache capped alone, by 4 MB with both. `cap_onednn_caches` caps both.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

# Freed heap kept for reuse before a trim hands it back: the next batch's allocations find most of their
# pages resident (measurements in the module docstring).
TRIM_SLACK_BYTES = 128 << 20

# The environment variables of ideep's and oneDNN's per-shape caches (module docstring).
ONEDNN_CACHE_ENVS = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
# Entries each keeps: a few batch shapes' worth (a shape needs one per distinct matmul).
ONEDNN_CACHE_CAPACITY = 16


def _load_malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and other libcs: nothing to release this way
        return None


_MALLOC_TRIM = _load_malloc_trim()
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def use_system_arrow_pool() -> None:
    """Makes glibc malloc Arrow's default memory pool, so the per-batch trim also returns its pages.

    Process-wide: called by the `docqa predict` command, not by the library functions, which leave the
    caller's process settings alone (but for `cap_onednn_caches`, which model loading must call before the
    first forward and which only fills in variables the environment leaves unset).
    """
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def cap_onednn_caches(capacity: int = ONEDNN_CACHE_CAPACITY) -> list[str]:
    """Caps ideep's and oneDNN's per-shape caches at `capacity` entries, unless the environment sets them.

    Both libraries read their variable once, at their first primitive: this must run before the process's
    first bf16 matmul on a CPU (model loading does it) and does nothing afterwards. Process-wide, which is
    why an explicit setting in the environment wins.

    Returns:
        The variables this call set.
    """
    set_here = [name for name in ONEDNN_CACHE_ENVS if name not in os.environ]
    for name in set_here:
        os.environ[name] = str(capacity)
    return set_here


def _resident_bytes() -> int | None:
    """This process's resident set (Linux `/proc/self/statm`), or None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


class _TrimState:
    """The resident set the last trim left (threads may race on it: at worst one extra trim)."""

    resident_after_trim = 0


def release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc `malloc_trim`) once `TRIM_SLACK_BYTES` have piled up.

    Called after every CPU batch. Where the resident set cannot be read, it trims every time.
    """
    if _MALLOC_TRIM is None:
        return
    resident = _resident_bytes()
    if resident is not None and resident - _TrimState.resident_after_trim < TRIM_SLACK_BYTES:
        return
    _MALLOC_TRIM(0)
    _TrimState.resident_after_trim = _resident_bytes() or 0
