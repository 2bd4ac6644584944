"""Keeping the resident memory of a long CPU inference job flat.

Three things make the resident set grow with the rows, and this module handles each:

- glibc's heap fragments as batches of new (B, P) shapes arrive. `release_free_heap` trims it
  (`malloc_trim`) after a CPU batch, but only once `TRIM_SLACK_BYTES` of freed memory have piled up since
  the last trim: trimming every batch keeps the peak lowest but makes the next batches fault their pages
  in again, so a slack buys back most of the speed for a bounded amount of memory.
- Arrow's default pool (mimalloc or jemalloc) keeps freed Parquet buffers out of `malloc_trim`'s reach;
  `use_system_arrow_pool` moves Arrow onto glibc so the trim returns them too.
- ideep and oneDNN keep a compiled primitive per operator and input shape (1,024 entries each by
  default), so every new batch shape adds some; `cap_onednn_caches` caps both caches at a few shapes.

And one thing makes it slower than it need be: glibc's own dynamic thresholds. It serves an allocation
above its mmap threshold (128 KiB at first, raised only when such a mapping is freed) with a fresh
mapping, and trims the heap's top on `free` once more than twice that threshold is free there, so a
forward's activations of tens of MB kept being unmapped and faulted in (and zero-filled) again.
`fix_malloc_thresholds` pins both (`mallopt`): activations up to `MMAP_THRESHOLD_BYTES` come from the
heap, and the heap is handed back by `release_free_heap`'s slack, not on every `free`.

The measurements behind each choice, and the alternatives tried and dropped (the mmap threshold pinned
low, at 128 KiB; the whole job's largest batches first), are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

# Freed heap kept for reuse before a trim hands it back: the next batch's allocations find most of their
# pages resident. Smaller slacks cost speed, larger ones memory (benchmarks/RESULTS.md).
TRIM_SLACK_BYTES = 128 << 20

# The environment variables of ideep's (`LRU_CACHE_CAPACITY`) and oneDNN's per-shape caches.
ONEDNN_CACHE_ENVS = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")
# Entries each keeps: a few batch shapes' worth (a shape needs one per distinct matmul).
ONEDNN_CACHE_CAPACITY = 16


# Allocations up to this come from the heap (glibc's largest dynamic mmap threshold on 64-bit): a (8, 384)
# window batch's largest activation, the (B, P, 4H) intermediate, is 19 MB in fp32 for a MiniLM.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory at the heap's top that `free` keeps: as much as the trim's slack lets pile up.
TRIM_THRESHOLD_BYTES = TRIM_SLACK_BYTES
# glibc's `mallopt` parameters and the environment variables (and tunables) that set them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_ENVS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def _glibc_function(name: str) -> Any:
    """The C library's `name` (`malloc_trim`, `mallopt`) where it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):  # musl and other libcs: nothing to tune or release this way
        return None


_MALLOC_TRIM = _glibc_function("malloc_trim")
_MALLOPT = _glibc_function("mallopt")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def use_system_arrow_pool() -> None:
    """Makes glibc malloc Arrow's default memory pool, so the per-batch trim also returns its pages.

    Process-wide: called by the `docqa predict` command, not by the library functions, which leave the
    caller's process settings alone (but for `cap_onednn_caches` and `fix_malloc_thresholds`, which CPU
    model loading calls before the first forward and which change nothing the environment sets).
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


class _MalloptState:
    """Whether this process has pinned glibc's thresholds (once is enough: `mallopt` is process-wide)."""

    pinned = False


def fix_malloc_thresholds() -> bool:
    """Pins glibc's mmap and trim thresholds for large activations, unless the environment sets them.

    Process-wide, like `cap_onednn_caches`, and for the same callers: CPU model loading calls it before the
    first forward. Measured on a 2-core AVX2 EPYC, fp32, in fresh processes taking turns: 200 long-context
    rows (4 SQuAD paragraphs each) took 21.2-21.4 s with 0.10-0.21 M page faults against 21.9-22.8 s
    with 0.52-1.33 M; 2,000 SQuAD rows the same speed and peak RSS (567-568 MB against 583-584 MB).

    Returns:
        True when this call pinned them; False where the environment sets glibc's malloc options (any of
        `MALLOC_ENVS`), the C library is not glibc, or they were pinned already.
    """
    if _MALLOPT is None or _MalloptState.pinned or any(name in os.environ for name in MALLOC_ENVS):
        return False
    # Setting either turns glibc's dynamic adjustment of both off, for the rest of the process.
    pinned = bool(_MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        _MALLOPT(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    _MalloptState.pinned = pinned
    return pinned


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
