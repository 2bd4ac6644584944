"""Host tuning: the process settings a command-line job applies to the processes it owns, and nobody else.

The rule: a library never changes its caller's process. The engine, the stages, model loading and the
Python API (`qa_core.api`) leave the environment, the allocator and Arrow's pool as they found them, and
run batches in the order of the data. The command-line jobs (`docqa predict`, `docqa run`, `docqa
spark`) own the processes they answer in (the CLI's own, predict's workers and device server, Beam's
and Spark's Python workers): with `runtime.host_tuning` (on by default) each such process calls
`tune_host` once, before its model loads, and wraps its runner in `trimming`. With it off, every process
stays as it started.

What `tune_host` sets (the mechanisms, and why each keeps a long CPU job's memory flat or its forwards
fast, are in `qa_core.runtime.heap`):

- ideep's and oneDNN's per-shape caches capped at `heap.ONEDNN_CACHE_CAPACITY` entries each;
- glibc's mmap and trim thresholds pinned, so freed activations stay resident between batches (this is
  also what makes a warm-up unnecessary: no batch has to run first for the heap to hold its size);
- Arrow on glibc's malloc, so the heap trim returns freed Parquet buffers too;
- the objects that exist when it runs (every imported module's: torch, transformers, pyarrow, Beam or
  Spark) frozen out of Python's garbage collector (`gc.freeze`): its full collections, which
  a long job triggers every few thousand rows, then look at the job's own objects only, not at every
  module's again (their cost before and after: benchmarks/RESULTS.md, issue 32).
  What the job allocates later is collected as before.

Each of the first three is skipped where the environment sets it (`LRU_CACHE_CAPACITY`,
`ONEDNN_PRIMITIVE_CACHE_CAPACITY`, `MALLOC_*_` or `GLIBC_TUNABLES`, `ARROW_DEFAULT_MEMORY_POOL`): an
explicit choice wins. The heap trim after a CPU batch is not a setting but a call, which `trimming` adds
around a runner's forward, so the engine never knows about heaps.

Thread counts are not host tuning: how many torch and tokenizer threads a worker or a Spark task runs is
the job's split of the host's cores (`qa_core.jobs.workers`, `pipelines.spark_partition`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import torch

from qa_core.runtime import heap
from qa_core.runtime.fit import ModelLimits
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.batch import Batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostTuning:
    """What `tune_host` did to this process (for its log line and a job's `_run.json`).

    Attributes:
        onednn_caches: The cache variables it set, to `heap.ONEDNN_CACHE_CAPACITY`.
        malloc_thresholds: Whether it pinned glibc's mmap and trim thresholds.
        arrow_system_pool: Whether it put Arrow on glibc's malloc.
        heap_trim: Whether a `trimming` runner hands freed heap back here (glibc's `malloc_trim` exists).
        frozen_objects: The objects `gc.freeze` moved out of the collector's sight.
        environment: The environment variables that were set already and so won over a setting.
    """

    onednn_caches: tuple[str, ...]
    malloc_thresholds: bool
    arrow_system_pool: bool
    heap_trim: bool
    frozen_objects: int
    environment: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (tuples as lists)."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(self).items()}


class _Process:
    """What `tune_host` did in this process (None: not asked), behind a lock (threads may race to it)."""

    lock = threading.Lock()
    tuning: HostTuning | None = None


def tune_host() -> HostTuning:
    """Applies every host setting that the environment does not set, once per process.

    Process-wide and idempotent: the first call applies and logs the settings, later calls return what
    it did. Call it before the process's model loads and before its first forward (ideep and oneDNN read
    their cache sizes at their first primitive).

    Returns:
        What this process's tuning did.
    """
    with _Process.lock:
        if _Process.tuning is None:
            environment = tuple(
                name
                for name in (*heap.ONEDNN_CACHE_ENVS, *heap.MALLOC_ENVS, heap.ARROW_POOL_ENV)
                if name in os.environ
            )
            _Process.tuning = HostTuning(
                onednn_caches=tuple(heap.cap_onednn_caches()),
                malloc_thresholds=heap.fix_malloc_thresholds(),
                arrow_system_pool=heap.use_system_arrow_pool(),
                heap_trim=heap.can_trim(),
                frozen_objects=_freeze_objects(),
                environment=environment,
            )
            logger.info("host tuning of process %d: %s", os.getpid(), _Process.tuning.to_dict())
        return _Process.tuning


def _freeze_objects() -> int:
    """Moves every object the collector tracks now to its permanent generation; returns how many."""
    gc.freeze()
    return gc.get_freeze_count()


def tuning_report() -> dict[str, Any] | None:
    """What `tune_host` did in this process and its heap trims so far (for `_run.json`); None: untuned."""
    if _Process.tuning is None:
        return None
    return {**_Process.tuning.to_dict(), "heap_trims": heap.heap_trim_calls()}


class TrimmingRunner:
    """A `ModelRunner` that trims this process's heap after each batch it computed on the host.

    Every member of the protocol is its runner's: the attributes are read once (a runner's tokenizer,
    model id, revision and device do not change once loaded), the properties on each use.

    Args:
        runner: The runner whose forwards are followed by the trim.
    """

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.tokenizer: Any = runner.tokenizer
        self.model_id = runner.model_id
        self.revision = runner.revision
        self.device: torch.device = runner.device

    @property
    def pad_token_id(self) -> int:
        """The runner's padding id."""
        return self.runner.pad_token_id

    @property
    def limits(self) -> ModelLimits:
        """The runner's model limits."""
        return self.runner.limits

    @property
    def computes_on_host(self) -> bool:
        """Whether the runner's forward computes in this process's memory."""
        return self.runner.computes_on_host

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The runner's logits of `batch`; the heap trim follows when the runner computes on the host.

        A batch that fails is not followed by a trim: its halves run next, and the trim after them frees
        what the failed forward left. On a device the activations never were this process's heap, and the
        trim would be pure cost.
        """
        logits = self.runner.forward(batch)  # (B, P) float32 each
        if self.runner.computes_on_host:
            heap.release_free_heap()
        return logits


def trimming(runner: ModelRunner) -> ModelRunner:
    """`runner` with the heap trim after each batch it computes on the host (a `TrimmingRunner`).

    Applied by the jobs that tuned their process (`tune_host`); wrapping a wrapped runner returns it.
    """
    if isinstance(runner, TrimmingRunner):
        return runner
    return TrimmingRunner(runner)
