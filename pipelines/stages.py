"""Beam adapters over the `qa_core` stages: validate, featurize, bucket, merge windows into answers.

Each DoFn is a few lines over the core function of the same name; heavy state (the tokenizer) is built
in `setup`, never pickled. Counters go to one namespace (`pipelines.metrics`).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import metrics, progress
from pipelines.inference import RowDone, WindowBatch, WindowFailure
from qa_core.config import QAConfig
from qa_core.engine.loop import FEATURIZE_CHUNK_ROWS
from qa_core.records import Answer, Feature, Reason, Record, Rejection, WindowCandidates
from qa_core.runtime.loading import load_tokenizer
from qa_core.stages.aggregate import AggregateError, aggregate
from qa_core.stages.batch import plan_batches
from qa_core.stages.featurize import Featurizer
from qa_core.stages.validate import validate_row

REJECTIONS = "rejections"
# Pieces of rows that one bundle could not complete, keyed by row, for the fallback merge.
UNMERGED_RECORDS = "unmerged_records"
UNMERGED_CANDIDATES = "unmerged_candidates"
UNMERGED_FAILURES = "unmerged_failures"


class ValidateRows(beam.DoFn):
    """Row dict -> `Record` (main output) or `Rejection` (tagged `rejections`).

    Each row gets a fresh random `row_key`: the user's `id` may repeat, and windows of a row are later
    merged by this key.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        metrics.inc("rows_read")
        result = validate_row(row, uuid.uuid4().hex, self._config.input, self._config.featurize)
        if isinstance(result, Rejection):
            yield beam.pvalue.TaggedOutput(REJECTIONS, result)
        else:
            yield result


class FeaturizeRecords(beam.DoFn):
    """`Record` -> `(record, its windows)` (main output), or a tagged rejection.

    The record travels with its windows so that the answer is assembled in the same bundle, without a
    shuffle (`MergeWindows`). Records are featurized `FEATURIZE_CHUNK_ROWS` at a time, as in
    `docqa predict`: one call to the Rust tokenizer per chunk, and a context shared by several rows of the
    chunk is tokenized once. A record that cannot be windowed, or whose tokenization raises, becomes a
    tagged rejection; the rest of the bundle goes on.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._featurizer: Featurizer | None = None
        self._pending: list[Record] = []

    def setup(self) -> None:
        self._featurizer = Featurizer(load_tokenizer(self._config.model), self._config.featurize)

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, record: Record) -> Iterator[Any]:
        self._pending.append(record)
        if len(self._pending) >= FEATURIZE_CHUNK_ROWS:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[Any]:
        # The bundle's last records; outputs of finish_bundle carry their window explicitly.
        for out in self._flush():
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield _tagged(out.tag, out.value)
            else:
                yield _in_global_window(out)

    def _flush(self) -> Iterator[Any]:
        if self._featurizer is None:
            raise RuntimeError("FeaturizeRecords.setup() was not called")
        records, self._pending = self._pending, []
        for record, result in zip(records, self._featurizer.featurize(records), strict=True):
            if isinstance(result, Rejection):
                yield beam.pvalue.TaggedOutput(REJECTIONS, result)
                continue
            metrics.inc("windows", len(result))
            yield record, result


def _in_global_window(value: Any) -> WindowedValue:
    """An output of `finish_bundle`, which must carry its window and timestamp (batch: the global one)."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), (GlobalWindow(),))


class BucketWindows(beam.DoFn):
    """`(record, windows)` -> `WindowBatch`es of windows of similar length, under the batch caps.

    Our own bucketing instead of `beam.BatchElements`: BatchElements sizes batches by count or weight but
    does not sort by length (its length buckets need a streaming `max_batch_duration_secs`), and padding
    to an unsorted batch's longest window wastes about a third of the compute on SQuAD-like data. Rows
    are buffered per bundle (until `sort_buffer_windows` windows), their windows sorted with
    `qa_core.stages.batch.plan_batches`, and each batch is emitted with the rows whose last window it holds;
    RunInference then runs each batch as one forward pass.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._rows: list[tuple[Record, list[Feature]]] = []
        self._windows = 0

    def start_bundle(self) -> None:
        self._rows, self._windows = [], 0

    def process(self, row: tuple[Record, list[Feature]]) -> Iterator[WindowBatch]:
        self._rows.append(row)
        self._windows += len(row[1])
        if self._windows >= self._config.batch.sort_buffer_windows:
            yield from self._drain()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for batch in self._drain():
            yield _in_global_window(batch)

    def _drain(self) -> Iterator[WindowBatch]:
        rows, self._rows, self._windows = self._rows, [], 0
        groups = list(plan_batches([f for _, windows in rows for f in windows], self._config.batch))
        last_batch = {f.row_key: index for index, group in enumerate(groups) for f in group}
        done: list[list[RowDone]] = [[] for _ in groups]
        for record, windows in rows:
            done[last_batch[record.row_key]].append(RowDone(record, len(windows)))
        for group, completed in zip(groups, done, strict=True):
            yield WindowBatch(tuple(group), tuple(completed))


class MergeWindows(beam.DoFn):
    """Candidates, failures and `RowDone`s of a bundle -> `Answer` (main) or `Rejection` (tagged).

    Within a fused stage, each row's candidates and its `RowDone` reach this DoFn in the same bundle, the
    `RowDone` last, so rows are answered here, as soon as they are complete, and nothing waits for a
    shuffle (the DirectRunner would hold a shuffle's whole input in memory). The merge does not rely on
    that order: a row is answered once its record and all its windows have arrived, in any order. Pieces
    of rows still incomplete when the bundle ends (only possible on a runner that splits the stage) are
    emitted, keyed by row, to `UNMERGED_*` outputs, which `AggregateRows` merges after a `CoGroupByKey`.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._reset()

    def _reset(self) -> None:
        self._done: dict[str, RowDone] = {}
        self._candidates: dict[str, list[WindowCandidates]] = defaultdict(list)
        self._failures: dict[str, list[WindowFailure]] = defaultdict(list)

    def start_bundle(self) -> None:
        self._reset()

    def process(self, item: WindowCandidates | WindowFailure | RowDone) -> Iterator[Any]:
        if isinstance(item, RowDone):
            key = item.record.row_key
            self._done[key] = item
        else:
            key = item.row_key
            if isinstance(item, WindowFailure):
                self._failures[key].append(item)
            else:
                self._candidates[key].append(item)
        done = self._done.get(key)
        if done is not None and self._arrived(key) == done.n_windows:
            del self._done[key]
            candidates = self._candidates.pop(key, [])
            failures = [f.error for f in self._failures.pop(key, [])]
            yield from answer_or_reject(done.record, candidates, failures, self._config)

    def finish_bundle(self) -> Iterator[Any]:
        keys = set(self._done) | set(self._candidates) | set(self._failures)
        for key in sorted(keys):
            if key in self._done:
                yield _tagged(UNMERGED_RECORDS, (key, self._done[key].record))
            for candidates in self._candidates.get(key, []):
                yield _tagged(UNMERGED_CANDIDATES, (key, candidates))
            for failure in self._failures.get(key, []):
                yield _tagged(UNMERGED_FAILURES, (key, failure.error))
        if keys:
            metrics.inc("rows_merged_across_bundles", len(keys))
        self._reset()

    def _arrived(self, key: str) -> int:
        indices = {c.window_index for c in self._candidates.get(key, [])}
        indices.update(f.window_index for f in self._failures.get(key, []))
        return len(indices)


def _tagged(tag: str, value: Any) -> beam.pvalue.TaggedOutput[Any, Any]:
    """A tagged output from `finish_bundle`."""
    return beam.pvalue.TaggedOutput(tag, _in_global_window(value))


def answer_or_reject(
    record: Record, candidates: list[WindowCandidates], failures: list[str], config: QAConfig
) -> Iterator[Any]:
    """The row's `Answer`, or a tagged `MODEL_ERROR` rejection when a window failed or is missing."""
    if failures:
        yield beam.pvalue.TaggedOutput(REJECTIONS, record.reject(Reason.MODEL_ERROR, failures[0]))
        return
    try:
        answer = aggregate(record, candidates, config.decode)
    except AggregateError as err:
        yield beam.pvalue.TaggedOutput(REJECTIONS, record.reject(Reason.MODEL_ERROR, str(err)))
        return
    yield answer


class AggregateRows(beam.DoFn):
    """`(row_key, {records, candidates, failures})` after the fallback `CoGroupByKey` -> answer or rejection.

    Only rows that `MergeWindows` could not complete within one bundle come this way.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config

    def process(self, element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, grouped = element
        records: list[Record] = list(grouped["records"])
        if len(records) != 1:
            # Only possible if a row key collided or a stage emitted twice: fail loudly, never guess.
            raise RuntimeError(f"row {element[0]} has {len(records)} records after the merge")
        failures: list[str] = list(grouped["failures"])
        candidates: list[WindowCandidates] = list(grouped["candidates"])
        yield from answer_or_reject(records[0], candidates, failures, self._config)


def count_result(result: Answer | Rejection) -> Answer | Rejection:
    """Counts an output row (answered, or rejected by reason) and advances the launcher's progress bar."""
    progress.advance()
    if isinstance(result, Answer):
        metrics.inc("answered")
    else:
        metrics.inc("rejected")
        metrics.inc(f"rejected_{result.reason.value}")
    return result
