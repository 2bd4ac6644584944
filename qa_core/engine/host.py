"""Host half of the engine: rows -> validated records -> windows -> sort buffers planned into batches.

Every engine uses these pieces: `docqa predict` and its workers (through `QAEngine`), the Beam DoFns
(`pipelines.stages`), calibration, the cost estimate and the benchmark. Rows are keyed by their position
in the job's input (`qa_core.records.row_key`), validated one by one, and featurized
`RowPreparer.chunk_rows` at a time (one call into the Rust tokenizer per chunk); a context is tokenized
once while it stays in the preparer's `ContextCache` (`runtime.context_cache_mb`), however far apart its
rows are. A sort buffer holds about `batch.sort_buffer_windows`
windows, whose batches are planned together by length (`qa_core.stages.batch.plan_batches`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qa_core.config import QAConfig
from qa_core.engine.stats import EngineStats
from qa_core.records import Feature, Record, Rejection, RowWindows, row_key
from qa_core.stages.batch import plan_batches
from qa_core.stages.context_cache import ContextCacheCounts, context_cache
from qa_core.stages.featurize import Featurizer
from qa_core.stages.tokenizer import Tokenizer
from qa_core.stages.validate import validate_row

logger = logging.getLogger(__name__)

# Records tokenized per call (`RowPreparer.chunk_rows`). The Rust tokenizer encodes a call's texts on its
# thread pool, whose threads stay awake a while after each call and compete with this thread's Python:
# fewer, larger calls leave it more of the host (benchmarks/RESULTS.md, issue 32). A call's windows all
# exist at once, so after the first call a chunk holds about one sort buffer of windows, at most
# `FEATURIZE_CHUNK_ROWS` rows: long documents come a few at a time. Buffers do not depend on it
# (`SortBufferer.add`).
FEATURIZE_CHUNK_ROWS = 1024
FIRST_CHUNK_ROWS = 128  # before any row's windows are counted

Prepared = RowWindows | Rejection
"""A row after the host half: its windows, or why it is rejected."""


def validate_at(row: Mapping[str, Any], position: int, config: QAConfig) -> Record | Rejection:
    """The record of the input row at `position` (keyed by it), or its rejection."""
    return validate_row(row, row_key(position), config.input, config.featurize)


class RowPreparer:
    """Validates and featurizes rows with one tokenizer and config, counting them in `stats`.

    Args:
        tokenizer: The model's fast tokenizer.
        config: The job config (`input`, `featurize`).
        stats: The run's counters (`rows`, `windows_per_row`, `questions_cut`); a fresh one when None.
    """

    def __init__(self, tokenizer: Tokenizer, config: QAConfig, stats: EngineStats | None = None) -> None:
        self.config = config
        self.stats = stats if stats is not None else EngineStats()
        self._featurizer = Featurizer(tokenizer, config.featurize)
        self.contexts = context_cache(config.runtime.context_cache_mb)
        self.chunk_rows = FIRST_CHUNK_ROWS  # rows for the next `featurize` call (`_size_next_chunk`)

    def validate(self, row: Mapping[str, Any], position: int) -> Record | Rejection:
        """The record of the input row at `position`, or its rejection (counted)."""
        self.stats.rows += 1
        return validate_at(row, position, self.config)

    def featurize(self, records: Sequence[Record]) -> list[Prepared]:
        """Each record's windows (or its rejection), in order; one tokenizer call for all of them."""
        out: list[Prepared] = []
        before = dataclasses.replace(self.contexts.counts)
        featurized = self._featurizer.featurize(records, self.contexts)
        self._count_contexts(before)
        windows = 0
        for record, result in zip(records, featurized, strict=True):
            if isinstance(result, Rejection):
                out.append(result)
            else:
                windows += len(result)
                self.stats.windows_per_row[len(result)] += 1
                if result[0].question_cut:
                    self._count_cut(record)
                out.append(RowWindows(record, tuple(result)))
        self._size_next_chunk(len(records), windows)
        return out

    def _size_next_chunk(self, records: int, windows: int) -> None:
        """Sets `chunk_rows`: the rows that fill about one sort buffer at the last call's windows per row."""
        if records == 0:
            return
        per_row = max(windows / records, 1.0)
        fill = int(self.config.batch.sort_buffer_windows / per_row)
        self.chunk_rows = min(max(fill, 1), FEATURIZE_CHUNK_ROWS)

    def _count_contexts(self, before: ContextCacheCounts) -> None:
        """Adds the context cache's work since `before` to the run's counters."""
        now, stats = self.contexts.counts, self.stats
        stats.context_lookups += now.lookups - before.lookups
        stats.contexts_tokenized += now.tokenized - before.tokenized
        stats.context_cache_evictions += now.evictions - before.evictions
        stats.context_cache_peak_bytes = max(stats.context_cache_peak_bytes, now.peak_bytes)

    def _count_cut(self, record: Record) -> None:
        """Counts a cut question, and says so in the log the first time (the count is in `_run.json`)."""
        if not self.stats.questions_cut:
            logger.warning(
                "the question of row %r is longer than a window leaves room for (featurize.max_seq_len, "
                "min_context_tokens, max_question_len): it is cut to %d tokens; such rows are counted as "
                "questions_cut in _run.json",
                record.id,
                self._featurizer.question_limit,
            )
        self.stats.questions_cut += 1

    def prepare(self, rows: Sequence[Mapping[str, Any]], first_position: int) -> list[Prepared]:
        """Validates and featurizes a chunk of rows, keeping their order.

        Args:
            rows: Consecutive input rows.
            first_position: The input position of `rows[0]`.
        """
        validated = [self.validate(row, first_position + i) for i, row in enumerate(rows)]
        featurized = iter(self.featurize([item for item in validated if isinstance(item, Record)]))
        return [next(featurized) if isinstance(item, Record) else item for item in validated]

    def prepare_chunks(
        self, rows: Iterable[Mapping[str, Any]], first_position: int = 0
    ) -> Iterator[list[Prepared]]:
        """`prepare` over a stream of rows, `chunk_rows` at a time (it follows the windows per row)."""
        position = first_position
        remaining = iter(rows)
        while chunk := list(itertools.islice(remaining, self.chunk_rows)):
            yield self.prepare(chunk, position)
            position += len(chunk)


@dataclass
class SortBuffer:
    """One sort buffer, ready for the model.

    Attributes:
        items: Per input row, in input order: its windows, or its rejection.
        groups: The buffer's windows, grouped into batches by length, shortest first (`plan_batches`;
            padded only when run, so at most one batch's padded arrays exist at a time).
    """

    items: list[Prepared]
    groups: deque[list[Feature]]

    def rows_completed_by(self) -> list[list[RowWindows]]:
        """Per batch of `groups`, the rows whose last window it holds (their other windows come earlier)."""
        last_group = {f.row_key: index for index, group in enumerate(self.groups) for f in group}
        completed: list[list[RowWindows]] = [[] for _ in self.groups]
        for item in self.items:
            if isinstance(item, RowWindows):
                completed[last_group[item.record.row_key]].append(item)
        return completed


def plan_buffer(items: list[Prepared], config: QAConfig, stats: EngineStats | None = None) -> SortBuffer:
    """The sort buffer of `items`: their windows planned into length-sorted batches."""
    windows = [f for item in items if isinstance(item, RowWindows) for f in item.windows]
    if stats is not None:
        stats.windows += len(windows)
    return SortBuffer(items, deque(plan_batches(windows, config.batch)))


class SortBufferer:
    """Collects prepared rows until they hold `batch.sort_buffer_windows` windows, then plans them.

    The one buffering rule of every engine: `QAEngine` adds a featurized chunk at a time, the Beam job
    (`pipelines.stages.BucketWindows`) a row at a time within a bundle.

    Args:
        config: The job config (`batch`).
        stats: Counts the planned windows when given.
    """

    def __init__(self, config: QAConfig, stats: EngineStats | None = None) -> None:
        self._config = config
        self._stats = stats
        self._pending: list[Prepared] = []
        self._windows = 0

    def add(self, items: Iterable[Prepared]) -> list[SortBuffer]:
        """Adds rows; returns the buffers they fill (each closes after the row that fills it).

        So the buffers do not depend on how many rows come at a time: a featurized chunk of `QAEngine`
        and the Beam job's rows one by one give the same ones.
        """
        full: list[SortBuffer] = []
        limit = self._config.batch.sort_buffer_windows
        for item in items:
            self._pending.append(item)
            if isinstance(item, RowWindows):
                self._windows += len(item.windows)
                if self._windows >= limit:
                    full.append(plan_buffer(self._take(), self._config, self._stats))
        return full

    def flush(self) -> SortBuffer | None:
        """The buffer of the rows added so far (None when there are none), and a fresh start."""
        if not self._pending:
            return None
        return plan_buffer(self._take(), self._config, self._stats)

    def _take(self) -> list[Prepared]:
        items, self._pending, self._windows = self._pending, [], 0
        return items


def sort_buffers(
    prepared_chunks: Iterable[list[Prepared]], config: QAConfig, stats: EngineStats | None = None
) -> Iterator[SortBuffer]:
    """Sort buffers of chunks of prepared rows (a buffer closes after the row that fills it)."""
    bufferer = SortBufferer(config, stats)
    for chunk in prepared_chunks:
        yield from bufferer.add(chunk)
    last = bufferer.flush()
    if last is not None:
        yield last
