"""The mechanisms of host tuning: glibc's heap, ideep's and oneDNN's per-shape caches, Arrow's pool.

Each function here changes a setting of the whole process, so nothing in the library calls them: only
`qa_core.runtime.host_tuning.tune_host` does, for the command-line jobs that own their processes
(`runtime.host_tuning`), and `host_tuning.trimming` calls `release_free_heap` after a CPU batch. A
setting made in the environment always wins over the one made here.

What each one is for:

- glibc's heap fragments as batches of new (B, P) shapes arrive: `release_free_heap` trims it
  (`malloc_trim`) once `TRIM_SLACK_BYTES` of freed memory have piled up since the last trim. Trimming
  every batch keeps the peak lowest but makes the next batches fault their pages in again; the slack
  bounds the memory kept for reuse.
- glibc serves an allocation above its mmap threshold with a fresh mapping, and trims the heap's top on
  `free` past its trim threshold; both move with the process's history. `fix_malloc_thresholds` pins them,
  so a forward's activations (up to `MMAP_THRESHOLD_BYTES`) come from heap pages that stay resident
  between batches, and the heap is handed back by `release_free_heap`'s slack instead of on every `free`.
- ideep and oneDNN keep a compiled primitive per operator and input shape (1,024 entries each by default),
  so every new batch shape adds some: `cap_onednn_caches` caps both at a few shapes' worth.
- Arrow's default pool (mimalloc or jemalloc) keeps freed Parquet buffers out of `malloc_trim`'s reach:
  `use_system_arrow_pool` moves Arrow onto glibc's malloc, so the trim returns them too.

The measurements behind these choices, and the alternatives tried and dropped, are in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

# Freed heap kept for reuse before a trim hands it back: the next batch's allocations find most of their
# pages resident. Smaller slacks cost speed, larger ones memory.
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

# Arrow reads it when it creates its default pool: `system`, `jemalloc` or `mimalloc`.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


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


def can_trim() -> bool:
    """Whether `release_free_heap` can hand memory back here (glibc's `malloc_trim` exists)."""
    return _MALLOC_TRIM is not None


def use_system_arrow_pool() -> bool:
    """Makes glibc's malloc Arrow's default memory pool, unless the environment chooses Arrow's pool.

    Returns:
        True when this call switched the pool; False where `ARROW_DEFAULT_MEMORY_POOL` is set.
    """
    if ARROW_POOL_ENV in os.environ:
        return False
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    return True


def cap_onednn_caches(capacity: int = ONEDNN_CACHE_CAPACITY) -> list[str]:
    """Caps ideep's and oneDNN's per-shape caches at `capacity` entries, unless the environment sets them.

    Both libraries read their variable once, at their first primitive: this must run before the process's
    first bf16 matmul on a CPU, and does nothing afterwards.

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


def malloc_thresholds_pinned() -> bool:
    """Whether `fix_malloc_thresholds` has pinned glibc's thresholds in this process."""
    return _MalloptState.pinned


def fix_malloc_thresholds() -> bool:
    """Pins glibc's mmap and trim thresholds for large activations, unless the environment sets them.

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
    """The resident set the last trim left, and the calls so far (threads may race: one extra trim).

    `calls` counts every `release_free_heap` call, trimming or not: what shows that a process was (or was
    not) asked to trim.
    """

    resident_after_trim = 0
    calls = 0


def release_free_heap() -> None:
    """Returns freed heap pages to the OS (glibc `malloc_trim`) once `TRIM_SLACK_BYTES` have piled up.

    Where the resident set cannot be read, it trims every time.
    """
    _TrimState.calls += 1
    if _MALLOC_TRIM is None:
        return
    resident = _resident_bytes()
    if resident is not None and resident - _TrimState.resident_after_trim < TRIM_SLACK_BYTES:
        return
    _MALLOC_TRIM(0)
    _TrimState.resident_after_trim = _resident_bytes() or 0


def heap_trim_calls() -> int:
    """How many times this process has called `release_free_heap` (the hook tests count trims with)."""
    return _TrimState.calls
