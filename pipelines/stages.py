"""Beam adapters over the engine's pieces: validate, featurize, bucket, merge windows into answers.

Each DoFn is a few lines over the `qa_core.engine` piece that `docqa predict` runs too: `validate_at`,
`RowPreparer.featurize`, `SortBufferer`, `RowAssembler` and `assemble_row`. Heavy state (the tokenizer)
is built in `setup`, never pickled. Counters go to one namespace (`pipelines.metrics`).

Type hints are Beam's contract, checked when the graph is built: each DoFn declares what flows on its
main output and on each tagged output (`TaggedOutput[Literal[tag], T]`), with names that resolve at run
time, so a stage whose declared output no longer fits its consumer's input fails at construction, not on
a worker. `tests/test_beam_types.py` also checks every element of a run against its declared type (Beam's
own `--runtime_type_check` cannot: it checks tagged outputs against the main output's type).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final, Literal, TypeAlias, TypeVar, cast

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import metrics, progress
from pipelines.inference import InferenceOutput, RowDone, WindowBatch
from qa_core.config import QAConfig
from qa_core.engine.assembly import RowAssembler, WindowFailure, assemble_row
from qa_core.engine.host import RowPreparer, SortBuffer, SortBufferer, validate_at
from qa_core.records import Answer, Record, RejectedRow, Rejection, RowWindows, WindowCandidates
from qa_core.runtime.loaders import load_tokenizer

# Tagged outputs: each tag's name, and the type hint that declares what flows on it (the Literal must
# spell the same name; tests/test_beam_types.py checks).
REJECTIONS: Final = "rejections"
Rejected: TypeAlias = TaggedOutput[Literal["rejections"], Rejection]
# Pieces of rows that one bundle could not complete, keyed by row key, for the fallback merge.
UNMERGED_RECORDS = "unmerged_records"
UNMERGED_CANDIDATES = "unmerged_candidates"
UNMERGED_FAILURES = "unmerged_failures"
# Their types are declared on `MergeWindows`, which emits them.
# What the fallback `CoGroupByKey` gives `AggregateRows`: row key -> {records, candidates, failures}.
RowPiecesByTag: TypeAlias = dict[str, Iterable[Record | WindowCandidates | str]]

ResultT = TypeVar("ResultT", Answer, Rejection)


def _result(result: Answer | Rejection) -> Answer | Rejected:
    """An answer on the main output, a rejection on the tagged one."""
    return TaggedOutput(REJECTIONS, result) if isinstance(result, Rejection) else result


def in_global_window(value: Any) -> WindowedValue:
    """An output of `finish_bundle`, which must carry its window and timestamp (batch: the global one)."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), (GlobalWindow(),))


def _tagged(tag: str, value: Any) -> TaggedOutput[str, WindowedValue]:
    """A tagged output from `finish_bundle`."""
    return TaggedOutput(tag, in_global_window(value))


class ValidateRows(beam.DoFn):
    """`(position, row)` -> `Record` (main output) or `Rejection` (tagged; a `RejectedRow` its own)."""

    def __init__(self, config: QAConfig) -> None:
        self._config = config

    def process(self, element: tuple[int, RejectedRow | dict[str, Any]]) -> Iterator[Record | Rejected]:
        metrics.inc("rows_read")
        item = validate_at(element[1], element[0], self._config)
        yield item if isinstance(item, Record) else TaggedOutput(REJECTIONS, item)


CONTEXT_COUNTERS = ("context_lookups", "contexts_tokenized", "context_cache_evictions")


class FeaturizeRecords(beam.DoFn):
    """`Record` -> `RowWindows` (main output), or a tagged rejection, `RowPreparer.chunk_rows` at a time.

    The record travels with its windows so that the answer is assembled in the same bundle, without a
    shuffle (`MergeWindows`).
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._preparer: RowPreparer | None = None
        self._pending: list[Record] = []

    def setup(self) -> None:
        self._preparer = RowPreparer(load_tokenizer(self._config.model), self._config)

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, record: Record) -> Iterator[RowWindows | Rejected]:
        if self._preparer is None:
            raise RuntimeError("FeaturizeRecords.setup() was not called")
        self._pending.append(record)
        if len(self._pending) >= self._preparer.chunk_rows:
            yield from self._flush()

    def finish_bundle(self) -> Iterator[WindowedValue | TaggedOutput[str, WindowedValue]]:
        for out in self._flush():  # outputs of finish_bundle carry their window explicitly
            yield _tagged(out.tag, out.value) if isinstance(out, TaggedOutput) else in_global_window(out)

    def _flush(self) -> Iterator[RowWindows | Rejected]:
        if self._preparer is None:
            raise RuntimeError("FeaturizeRecords.setup() was not called")
        records, self._pending = self._pending, []
        if not records:
            return
        stats = self._preparer.stats
        before = (stats.context_lookups, stats.contexts_tokenized, stats.context_cache_evictions)
        featurized = self._preparer.featurize(records)
        after = (stats.context_lookups, stats.contexts_tokenized, stats.context_cache_evictions)
        for name, old, new in zip(CONTEXT_COUNTERS, before, after, strict=True):
            metrics.inc(name, new - old)
        metrics.record_peak("context_cache_peak_bytes", stats.context_cache_peak_bytes)
        for item in featurized:
            if isinstance(item, RowWindows):
                metrics.inc("windows", len(item.windows))
                metrics.inc(f"{metrics.WINDOWS_PER_ROW_PREFIX}{len(item.windows)}")
                if item.windows[0].question_cut:
                    metrics.inc("questions_cut")
                yield item
            else:
                yield TaggedOutput(REJECTIONS, item)


class BucketWindows(beam.DoFn):
    """`RowWindows` -> `WindowBatch`es of windows of similar length, under the batch caps.

    Our own bucketing instead of `beam.BatchElements`, which sizes batches by count or weight but does not
    sort by length: padding an unsorted batch to its longest window wastes about a third of the compute
    on SQuAD-like data. Rows of a bundle fill the engine's sort buffers (`SortBufferer`), and each batch is
    emitted with the rows whose last window it holds; RunInference runs each batch as one forward pass.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._bufferer = SortBufferer(config)

    def start_bundle(self) -> None:
        self._bufferer = SortBufferer(self._config)

    def process(self, row: RowWindows) -> Iterator[WindowBatch]:
        for buffer in self._bufferer.add([row]):
            yield from _window_batches(buffer)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        buffer = self._bufferer.flush()
        if buffer is not None:
            for batch in _window_batches(buffer):
                yield in_global_window(batch)


def _window_batches(buffer: SortBuffer) -> Iterator[WindowBatch]:
    for group, completed in zip(buffer.groups, buffer.rows_completed_by(), strict=True):
        yield WindowBatch(tuple(group), tuple(RowDone(r.record, len(r.windows)) for r in completed))


# The class decorator declares the outputs of `finish_bundle` too (Beam reads only `process`'s annotation).
@beam.typehints.with_output_types(
    Answer,
    rejections=Rejection,
    unmerged_records=tuple[str, Record],
    unmerged_candidates=tuple[str, WindowCandidates],
    unmerged_failures=tuple[str, str],
)
class MergeWindows(beam.DoFn):
    """Candidates, failures and `RowDone`s of a bundle -> `Answer` (main) or `Rejection` (tagged).

    Within a fused stage, each row's candidates and its `RowDone` reach this DoFn in the same bundle, so
    rows are answered here as soon as they are complete (`RowAssembler`, in any arrival order), and
    nothing waits for a shuffle. Pieces of rows still incomplete when the bundle ends (only on a runner
    that splits the stage) go, keyed by row, to the `UNMERGED_*` outputs, which `AggregateRows` merges
    after a `CoGroupByKey`.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._assembler = RowAssembler(config.decode)

    def start_bundle(self) -> None:
        self._assembler = RowAssembler(self._config.decode)

    def process(self, item: InferenceOutput) -> Iterator[Answer | Rejected]:
        if isinstance(item, RowDone):
            result = self._assembler.add_record(item.record, item.n_windows)
        elif isinstance(item, WindowFailure):
            result = self._assembler.add_failure(item)
        else:
            result = self._assembler.add_candidates(item)
        if result is not None:
            yield _result(result)

    def finish_bundle(self) -> Iterator[TaggedOutput[str, WindowedValue]]:
        incomplete = self._assembler.take_incomplete()
        for pieces in incomplete:
            if pieces.record is not None:
                yield _tagged(UNMERGED_RECORDS, (pieces.row_key, pieces.record))
            for candidates in pieces.candidates:
                yield _tagged(UNMERGED_CANDIDATES, (pieces.row_key, candidates))
            for error in pieces.failures:
                yield _tagged(UNMERGED_FAILURES, (pieces.row_key, error))
        if incomplete:
            metrics.inc("rows_merged_across_bundles", len(incomplete))


class AggregateRows(beam.DoFn):
    """`(row_key, {records, candidates, failures})` after the fallback `CoGroupByKey` -> answer or rejection.

    Only rows that `MergeWindows` could not complete within one bundle come this way.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config

    def process(self, element: tuple[str, RowPiecesByTag]) -> Iterator[Answer | Rejected]:
        key, grouped = element
        # Each tag holds one type (see the UNMERGED_* hints); the group-by types the dict's values as one.
        records = list(cast(Iterable[Record], grouped["records"]))
        candidates = list(cast(Iterable[WindowCandidates], grouped["candidates"]))
        failures = list(cast(Iterable[str], grouped["failures"]))
        if len(records) != 1:
            # Only possible if a row key collided or a stage emitted twice: fail loudly, never guess.
            raise RuntimeError(f"row {key} has {len(records)} records after the merge")
        yield _result(assemble_row(records[0], candidates, failures, self._config.decode))


def count_result(result: ResultT) -> ResultT:
    """Counts an output row (answered or rejected by reason, and per worker); advances the progress bar."""
    progress.advance()
    metrics.inc_worker_rows()
    if isinstance(result, Answer):
        metrics.inc("answered")
    else:
        metrics.inc("rejected")
        metrics.inc(f"{metrics.REJECTED_PREFIX}{result.reason.value}")
    return result
