"""Beam adapters over the `qa_core` stages: validate, featurize, bucket, aggregate.

Each DoFn is a few lines over the core function of the same name; heavy state (the tokenizer) is built
in `setup`, never pickled. Counters go to one namespace (`pipelines.metrics`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import metrics, progress
from qa_core.aggregate import AggregateError, aggregate
from qa_core.batch import plan_batches
from qa_core.config import QAConfig
from qa_core.featurize import Featurizer
from qa_core.model import load_tokenizer
from qa_core.records import Answer, Feature, Reason, Record, Rejection, WindowCandidates
from qa_core.validate import validate_row

RECORDS = "records"
REJECTIONS = "rejections"


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
    """`Record` -> its windows (main output) and `(row_key, record)` (tagged `records`) for the merge.

    A record that cannot be windowed, or whose tokenization raises, becomes a tagged rejection; the rest
    of the bundle goes on.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._featurizer: Featurizer | None = None

    def setup(self) -> None:
        self._featurizer = Featurizer(load_tokenizer(self._config.model), self._config.featurize)

    def process(self, record: Record) -> Iterator[Any]:
        if self._featurizer is None:
            raise RuntimeError("FeaturizeRecords.setup() was not called")
        (result,) = self._featurizer.featurize([record])
        if isinstance(result, Rejection):
            yield beam.pvalue.TaggedOutput(REJECTIONS, result)
            return
        metrics.inc("windows", len(result))
        yield beam.pvalue.TaggedOutput(RECORDS, (record.row_key, record))
        yield from result


class BucketWindows(beam.DoFn):
    """Windows -> lists of windows of similar length, under the batch caps.

    Our own bucketing instead of `beam.BatchElements`: BatchElements sizes batches by count or weight but
    does not sort by length (its length buckets need a streaming `max_batch_duration_secs`), and padding
    to an unsorted batch's longest window wastes about a third of the compute on SQuAD-like data. Windows
    are buffered per bundle (at most `sort_buffer_windows`), sorted with `qa_core.batch.plan_batches`,
    and emitted as lists; RunInference then runs each list as one batch.
    """

    def __init__(self, config: QAConfig) -> None:
        self._config = config
        self._buffer: list[Feature] = []

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, feature: Feature) -> Iterator[list[Feature]]:
        self._buffer.append(feature)
        if len(self._buffer) >= self._config.batch.sort_buffer_windows:
            yield from self._drain()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for group in self._drain():
            yield WindowedValue(group, GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _drain(self) -> Iterator[list[Feature]]:
        buffer, self._buffer = self._buffer, []
        yield from plan_batches(buffer, self._config.batch)


class AggregateRows(beam.DoFn):
    """`(row_key, {records, candidates, failures})` -> `Answer` (main) or `Rejection` (tagged)."""

    def __init__(self, config: QAConfig) -> None:
        self._config = config

    def process(self, element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, grouped = element
        records: list[Record] = list(grouped["records"])
        if len(records) != 1:
            # Only possible if a row key collided or a stage emitted twice: fail loudly, never guess.
            raise RuntimeError(f"row {element[0]} has {len(records)} records after the merge")
        record = records[0]
        failures: list[str] = list(grouped["failures"])
        candidates: list[WindowCandidates] = list(grouped["candidates"])
        if failures:
            yield beam.pvalue.TaggedOutput(REJECTIONS, record.reject(Reason.MODEL_ERROR, failures[0]))
            return
        try:
            answer = aggregate(record, candidates, self._config.decode)
        except AggregateError as err:
            yield beam.pvalue.TaggedOutput(REJECTIONS, record.reject(Reason.MODEL_ERROR, str(err)))
            return
        yield answer


def count_result(result: Answer | Rejection) -> Answer | Rejection:
    """Counts an output row (answered, or rejected by reason) and advances the launcher's progress bar."""
    progress.advance()
    if isinstance(result, Answer):
        metrics.inc("answered")
    else:
        metrics.inc("rejected")
        metrics.inc(f"rejected_{result.reason.value}")
    return result
