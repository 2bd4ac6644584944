"""The in-process engine: rows in, answers and rejections out, with the stages chained in plain Python.

Rows stream through a sort buffer: records are featurized until about `sort_buffer_windows` windows are
buffered, the buffer is batched by length, run, decoded and aggregated, and its results are yielded in
input order. On a GPU the host-side half (read, validate, tokenize, plan) of the next buffer runs in a
prefetch thread while the model runs on the current one (`batch.prefetch_buffers`). Memory is bounded by
the buffers in flight, whatever the input size; on a CPU glibc's heap is trimmed after a batch once
128 MiB of freed memory have piled up, and model loading caps oneDNN's per-shape caches (`runtime.heap`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qa_core.config import QAConfig
from qa_core.engine.prefetch import prefetch
from qa_core.errors import DeviceFailedError
from qa_core.records import Answer, Feature, Reason, Record, Rejection, WindowCandidates
from qa_core.runtime.heap import release_free_heap
from qa_core.runtime.torch_runner import TorchRunner
from qa_core.stages.aggregate import aggregate
from qa_core.stages.batch import Batch, collate, plan_batches
from qa_core.stages.decode import decode_batch
from qa_core.stages.featurize import Featurizer
from qa_core.stages.validate import validate_row

logger = logging.getLogger(__name__)

FEATURIZE_CHUNK_ROWS = 128  # records tokenized per call (the Rust tokenizer amortizes per-call cost)


@dataclass
class EngineStats:
    """Counters of a run (also the `counts` of `_run.json`)."""

    rows: int = 0
    answered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    windows_per_row: Counter[int] = field(default_factory=Counter)
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batch_splits: int = 0
    oom_splits: int = 0
    model_seconds: float = 0.0

    def add(self, other: EngineStats) -> None:
        """Adds another run's counters to these (the worker processes of `docqa predict --workers`)."""
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(value)  # adds counts, unlike dict.update
            else:
                setattr(self, name, mine + value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able counters."""
        return {
            "rows_read": self.rows,
            "answered": self.answered,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "windows": self.windows,
            "windows_per_row": {str(k): v for k, v in sorted(self.windows_per_row.items())},
            "batches": self.batches,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_efficiency": self.real_tokens / self.padded_tokens if self.padded_tokens else None,
            "batch_splits": self.batch_splits,
            "oom_splits": self.oom_splits,
            "model_seconds": round(self.model_seconds, 3),
        }


def run_batch_contained(
    model: TorchRunner, batch: Batch, config: QAConfig, stats: EngineStats | None = None
) -> tuple[list[WindowCandidates], list[tuple[Feature, str]]]:
    """Forward + decode of a batch; a failing batch is split in halves down to single windows.

    Returns:
        Candidates of every window that succeeded, and (window, error) for windows that still failed
        alone (their rows become `MODEL_ERROR` rejections).

    Raises:
        DeviceFailedError: The device cannot run any batch any more (a CUDA error other than out of
            memory, or the model's server failed): splitting would only reject every later row.
    """
    try:
        return _forward_and_decode(model, batch, config, stats), []
    except DeviceFailedError:
        raise
    except torch.AcceleratorError as err:  # CUDA errors but out-of-memory: the context is unusable
        raise DeviceFailedError(
            f"the {model.device} device failed: {err} (no batch can run after this; rerun the job)"
        ) from err
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        out_of_memory = isinstance(err, torch.cuda.OutOfMemoryError)
    # The halves run outside the `except` block: there the error's traceback would keep the failed
    # forward's frames, and with them its activations on the device, alive during the retry.
    if out_of_memory:
        torch.cuda.empty_cache()
        if stats is not None:
            stats.oom_splits += 1
    if len(batch.features) == 1:
        logger.warning("window of row %s failed: %s", batch.features[0].row_key, error)
        return [], [(batch.features[0], error)]
    if stats is not None:
        stats.batch_splits += 1
    half = len(batch.features) // 2
    results: list[WindowCandidates] = []
    failures: list[tuple[Feature, str]] = []
    for part in (batch.features[:half], batch.features[half:]):
        sub = collate(part, model.pad_token_id, config.batch.pad_to_multiple_of)
        ok, bad = run_batch_contained(model, sub, config, stats)
        results.extend(ok)
        failures.extend(bad)
    return results, failures


def _forward_and_decode(
    model: TorchRunner, batch: Batch, config: QAConfig, stats: EngineStats | None
) -> list[WindowCandidates]:
    """One batch through the model and the span decoder, counted in `stats`."""
    started = time.perf_counter()
    start_logits, end_logits = model.forward(batch)
    out = decode_batch(batch, start_logits, end_logits, config.decode.max_answer_len, config.decode.n_best)
    if stats is not None:
        stats.model_seconds += time.perf_counter() - started
        stats.batches += 1
        stats.real_tokens += batch.real_tokens
        stats.padded_tokens += batch.padded_tokens
    if model.computes_on_host:
        # The batch's activations (host memory on a CPU) are freed: hand their pages back
        # (qa_core.runtime.heap). On a GPU they live on the device and the trim's ~2 ms would be pure cost.
        release_free_heap()
    return out


@dataclass
class _SortBuffer:
    """One sort buffer, ready for the model.

    Attributes:
        items: Per input row, in input order: a `Rejection`, or (record, its windows).
        groups: The buffer's windows, grouped into batches by length (padded only when run, so at most
            one batch's padded arrays exist at a time).
    """

    items: list[Any]
    groups: deque[list[Feature]]


class QAEngine:
    """Answers rows with one loaded model, in plain Python (used by `docqa predict` and tests).

    Args:
        model: A loaded `TorchRunner`.
        config: The resolved job config.
    """

    def __init__(self, model: TorchRunner, config: QAConfig) -> None:
        self.model = model
        self.config = config
        self.featurizer = Featurizer(model.tokenizer, config.featurize)
        self.stats = EngineStats()
        self._next_key = 0

    def answer_rows(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Answer | Rejection]:
        """Answers every row, yielding exactly one `Answer` or `Rejection` per row, in input order.

        With prefetching (`batch.prefetch_buffers`), reading, validation, tokenization and batch planning
        of the next sort buffers run in a background thread while the model works on the current one.
        """
        buffers = self._sort_buffers(rows)
        depth = self.prefetch_depth
        if depth > 0:
            buffers = prefetch(buffers, depth, name="docqa-featurize")
        for buffer in buffers:
            yield from self._answer_buffer(buffer)

    @property
    def prefetch_depth(self) -> int:
        """Sort buffers prepared ahead: the configured number, or auto.

        Auto is 0 when the forward runs on this process's CPU, else 1: the host work of the next buffer
        overlaps the device's (or the device server's) work on this one.
        """
        configured = self.config.batch.prefetch_buffers
        if configured is not None:
            return configured
        return 0 if self.model.computes_on_host else 1

    def _sort_buffers(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[_SortBuffer]:
        """Host-side stages: rows -> records -> windows -> planned batches, one buffer at a time."""
        pending: list[Record | Rejection] = []
        buffered = 0
        for chunk in _chunks(rows, FEATURIZE_CHUNK_ROWS):
            results, windows = self._validate_and_featurize(chunk)
            pending.extend(results)
            buffered += windows
            if buffered >= self.config.batch.sort_buffer_windows:
                yield self._plan(pending)
                pending, buffered = [], 0
        if pending:
            yield self._plan(pending)

    def _validate_and_featurize(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[Any], int]:
        items: list[Any] = []
        for row in rows:
            items.append(validate_row(row, str(self._next_key), self.config.input, self.config.featurize))
            self._next_key += 1
            self.stats.rows += 1
        records = [r for r in items if isinstance(r, Record)]
        featurized = iter(self.featurizer.featurize(records))
        out: list[Any] = []
        windows = 0
        for item in items:
            if isinstance(item, Record):
                result = next(featurized)
                if isinstance(result, Rejection):
                    out.append(result)
                else:
                    out.append((item, result))
                    windows += len(result)
                    self.stats.windows_per_row[len(result)] += 1
            else:
                out.append(item)
        return out, windows

    def _plan(self, pending: list[Any]) -> _SortBuffer:
        features = [f for item in pending if isinstance(item, tuple) for f in item[1]]
        self.stats.windows += len(features)
        return _SortBuffer(pending, deque(plan_batches(features, self.config.batch)))

    def _answer_buffer(self, buffer: _SortBuffer) -> Iterator[Answer | Rejection]:
        """Device-side stages: batches -> logits -> spans, then spans -> answers in input order."""
        by_row: dict[str, list[WindowCandidates]] = defaultdict(list)
        failed: dict[str, str] = {}
        pad_id, multiple = self.model.pad_token_id, self.config.batch.pad_to_multiple_of
        while buffer.groups:
            batch = collate(buffer.groups.popleft(), pad_id, multiple)
            ok, bad = run_batch_contained(self.model, batch, self.config, self.stats)
            del batch
            for candidates in ok:
                by_row[candidates.row_key].append(candidates)
            for feature, error in bad:
                failed.setdefault(feature.row_key, error)
        for item in buffer.items:
            if not isinstance(item, tuple):
                yield self._count(item)
                continue
            record: Record = item[0]
            if record.row_key in failed:
                yield self._count(record.reject(Reason.MODEL_ERROR, failed[record.row_key]))
            else:
                yield self._count(aggregate(record, by_row[record.row_key], self.config.decode))

    def _count(self, result: Answer | Rejection) -> Answer | Rejection:
        if isinstance(result, Answer):
            self.stats.answered += 1
        else:
            self.stats.rejected[result.reason.value] += 1
        return result


def _chunks(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    chunk: list[Mapping[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
