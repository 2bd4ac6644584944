"""Stage 2 in worker processes: record chunks are featurized by a pool, in order, a bounded number ahead.

On a GPU the model is rarely the bottleneck of `docqa predict`: the host's Python work per row is. The
Rust tokenizer releases the GIL, but turning its encodings into `Feature`s does not, and it competes with
the main thread's collate/decode/aggregate/write. Worker processes take that work off the GIL. Measured
reasons and numbers: README "Performance" and benchmarks/RESULTS.md.

Workers are started with `spawn` (safe beside CUDA and beside threads, unlike `fork`), each with its own
single-threaded copy of the tokenizer (N workers use N cores instead of N x all cores). As with any
`multiprocessing` use, a script that starts a pool must guard its entry point with
`if __name__ == "__main__":`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from qa_core.config import FeaturizeConfig
from qa_core.featurize import Featurizer, TokenizerParts
from qa_core.records import Feature, Record, Rejection

logger = logging.getLogger(__name__)

Tag = TypeVar("Tag")
Featurized = list[list[Feature] | Rejection]

_WORKER_FEATURIZER: Featurizer | None = None


def _init_worker(parts: TokenizerParts, config: FeaturizeConfig) -> None:
    """Builds this worker's featurizer; the Rust tokenizer runs single-threaded in a worker."""
    global _WORKER_FEATURIZER  # noqa: PLW0603  # one featurizer per worker process, set once
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER_FEATURIZER = Featurizer(parts, config)


def _featurize_in_worker(records: Sequence[Record]) -> Featurized:
    if _WORKER_FEATURIZER is None:  # pragma: no cover - the initializer always runs first
        raise RuntimeError("featurize worker started without its initializer")
    return _WORKER_FEATURIZER.featurize(records)


class FeaturizePool:
    """A pool of processes that featurize chunks of records.

    Args:
        tokenizer: The fast tokenizer, or its `TokenizerParts` (sent once to each worker, which builds its
            featurizer from them without importing transformers: a worker starts in a fraction of a
            second).
        config: Window sizes.
        processes: Worker processes (at least 1).
        ahead: Chunks in flight per process (bounds memory: results are consumed in order).
    """

    def __init__(self, tokenizer: Any, config: FeaturizeConfig, processes: int, ahead: int = 2) -> None:
        if processes < 1:
            raise ValueError(f"a featurize pool needs at least 1 process, got {processes}")
        self._limit = processes * ahead
        parts = tokenizer if isinstance(tokenizer, TokenizerParts) else TokenizerParts.of(tokenizer)
        self._executor = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(parts, config),
        )
        logger.info("featurizing in %d worker processes", processes)

    def map(self, chunks: Iterable[tuple[Tag, Sequence[Record]]]) -> Iterator[tuple[Tag, Featurized]]:
        """Featurizes each (tag, records) chunk; yields (tag, results) in input order.

        At most `processes * ahead` chunks are submitted and not yet consumed, so a long input streams.
        A worker that dies fails the job (`BrokenProcessPool`): that is a bad job, not a bad row.
        """
        in_flight: deque[tuple[Tag, Future[Featurized]]] = deque()
        for tag, records in chunks:
            in_flight.append((tag, self._executor.submit(_featurize_in_worker, records)))
            if len(in_flight) >= self._limit:
                done_tag, future = in_flight.popleft()
                yield done_tag, future.result()
        while in_flight:
            done_tag, future = in_flight.popleft()
            yield done_tag, future.result()

    def close(self) -> None:
        """Stops the workers (pending chunks are cancelled)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FeaturizePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def auto_processes(on_gpu: bool, cpu_count: int | None = None) -> int:
    """Featurize processes for `batch.featurize_processes: null`.

    On a CPU the model needs every core, so featurization stays in-process (0). On a GPU, the host's
    cores are otherwise idle: all but two (the main thread and the prefetch thread), at most 8.
    """
    if not on_gpu:
        return 0
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(0, min(8, cores - 2))
