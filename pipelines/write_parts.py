"""The Beam job's output: one part file pair per unit, written as soon as the unit's rows are answered.

    answers and rejections -> WriteUnitsInBundle: a unit's part written in the bundle that answered
        its last row (the usual case: a unit is read, answered and merged in one fused stage)
    -> what a bundle could not complete (a unit split over bundles, rows merged across bundles)
    -> CoGroupByKey with the units -> WritePart: the rest of the parts, and the empty input's

Not Beam's `WriteToParquet`: its shards are named by the sink (`part-00003-of-00008`, numbered by the
runner's bundles), not by input range, so a rerun could not tell which rows a shard holds, and a killed
job could only be redone from scratch. Part K holds exactly the rows of unit K, written by qa_core's
`OutputWriter` as `docqa predict` and `docqa spark` write theirs (`qa_core.jobs.parts`), so `--resume`
keeps the units a killed run finished.

Writing in the answering bundle is what makes a resume worth it on a batch runner: a grouping is a
barrier there (no group is read before every bundle before it has finished), so parts written only after
a `GroupByKey` would all appear at the end of the answering, and a job killed in its ninth hour would keep
nothing. Here the parts appear as the units finish, and the grouping only carries the rare remainder.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeAlias, cast

import apache_beam as beam
import pyarrow as pa
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from pipelines import metrics
from pipelines.stages import in_global_window
from qa_core.engine.stats import EngineStats
from qa_core.io.write import OutputWriter
from qa_core.jobs.parts import COUNTS_KEY, PartRange, part_metadata
from qa_core.records import Answer, Rejection

Result: TypeAlias = Answer | Rejection
# What `CoGroupByKey` gives `WritePart`: unit index -> {"unit": [the unit], "results": its leftover results}.
UnitPieces: TypeAlias = dict[str, Iterable[PartRange | Answer | Rejection]]


class PartSink:
    """Writes one unit's part file pair: its results checked against its rows, its counters in the footers.

    The footers hold the unit's range and config hash (`parts.part_metadata`) and its counters
    (`parts.COUNTS_KEY`). Exact there: `rows`, `answered` and `rejected` by reason, derived from the
    results themselves. The engine's other counters (windows, batches, tokens, model time) are counted
    by Beam's metrics, job-wide, not per unit: they are 0 in these footers, so a resumed job's
    `_run.json` has them for the units this attempt answered only.

    Args:
        output_dir: The output folder, prepared by the launcher.
        schemas: The answers and rejections schemas.
        top_k: `decode.top_k`.
        config_hash: The job's config hash (`JobPlan.config`), which `--resume` finds in the footers.
        owner: The job's owner token (`PartedOutput.prepare`), checked before the files are put in place.
    """

    def __init__(
        self, output_dir: str, schemas: tuple[pa.Schema, pa.Schema], top_k: int, config_hash: str, owner: str
    ) -> None:
        self._output_dir = output_dir
        self._schemas = schemas
        self._top_k = top_k
        self._config_hash = config_hash
        self._owner = owner

    def write(self, unit: PartRange, results: Iterable[Result]) -> None:
        """Writes unit `unit`'s part from its results (any order: written in input order).

        Raises:
            RuntimeError: When the results do not cover the unit's rows exactly once (never with a
                correct runner: a part is never written with a row missing or repeated).
            OutputError: When the storage refuses, or another job took the folder over.
        """
        ordered = sorted(results, key=lambda r: int(r.row_key))
        if [int(r.row_key) for r in ordered] != list(range(unit.start, unit.stop)):
            raise RuntimeError(
                f"unit {unit.index} (rows [{unit.start}, {unit.stop})) has {len(ordered)} results, not one "
                "per row"
            )
        counts = EngineStats(rows=unit.rows)
        for result in ordered:
            counts.count_result(result)
        writer = OutputWriter(
            self._output_dir,
            *self._schemas,
            self._top_k,
            part=unit.index,
            prepare=False,
            metadata=part_metadata(unit, self._config_hash),
            owner=self._owner,
        )
        for result in ordered:
            writer.write(result)
        writer.close_tables({COUNTS_KEY: json.dumps(counts.to_state(), sort_keys=True)})


class _UnitIndex:
    """Finds a row's unit from its position (bisect over the units' starts)."""

    def __init__(self, units: Sequence[PartRange]) -> None:
        self.units = sorted(units, key=lambda unit: unit.start)
        self._starts = [unit.start for unit in self.units]

    def of(self, result: Result) -> PartRange:
        return self.units[bisect.bisect_right(self._starts, int(result.row_key)) - 1]


LEFTOVERS = "leftovers"
"""The tag of `WriteUnitsInBundle`'s `(unit index, result)` of units a bundle could not complete."""


class WriteUnitsInBundle(beam.DoFn):
    """An answer or rejection -> its unit's part, written once the bundle holds every row of the unit.

    Emits the index of each unit it wrote. A bundle's incomplete units leave from `finish_bundle` as
    `(unit index, result)`, tagged `LEFTOVERS`, for the grouped fallback (`WritePart`). Memory: the
    results of the units a bundle has begun and not finished (with the engine's sort buffers, a few
    units at a time).
    """

    def __init__(self, units: Sequence[PartRange], sink: PartSink) -> None:
        self._index = _UnitIndex(units)
        self._sink = sink
        self._open: dict[int, list[Result]] = {}

    def start_bundle(self) -> None:
        self._open = {}

    def process(self, result: Result) -> Iterator[int]:
        unit = self._index.of(result)
        held = self._open.setdefault(unit.index, [])
        held.append(result)
        if len(held) == unit.rows:
            self._sink.write(unit, self._open.pop(unit.index))
            metrics.inc("parts_written")
            yield unit.index

    def finish_bundle(self) -> Iterator[TaggedOutput[str, WindowedValue]]:
        for index, results in self._open.items():
            metrics.inc("rows_written_after_grouping", len(results))
            for result in results:
                yield TaggedOutput(LEFTOVERS, in_global_window((index, result)))
        self._open = {}


class WritePart(beam.DoFn):
    """`(unit index, {unit, leftover results})` -> the unit's part, unless a bundle wrote it already.

    A unit with no leftover results was written in its bundle, except the empty input's one empty unit,
    whose two (empty) files are written here.
    """

    def __init__(self, sink: PartSink) -> None:
        self._sink = sink

    def process(self, element: tuple[int, UnitPieces]) -> Iterator[int]:
        index, pieces = element
        units = list(cast(Iterable[PartRange], pieces["unit"]))
        results = list(cast(Iterable[Result], pieces["results"]))
        if len(units) != 1:
            raise RuntimeError(f"unit {index} was planned {len(units)} times")
        if results or units[0].rows == 0:
            self._sink.write(units[0], results)
            metrics.inc("parts_written")
            yield index


class WriteParts(beam.PTransform):  # type: ignore[type-arg]
    """`{"units": units, "results": answers and rejections}` -> one part file pair per unit.

    Args:
        units: The units this job answers (their rows are the only ones read).
        sink: Where and how the parts are written.
    """

    def __init__(self, units: Sequence[PartRange], sink: PartSink) -> None:
        super().__init__()
        self._units = list(units)
        self._sink = sink

    # `inputs` is a dict of PCollections, which Beam cannot take as an input type hint (it warns): Any.
    def expand(self, inputs: Any) -> PCollection[int]:
        in_bundle = inputs["results"] | "WriteUnitsInBundle" >> beam.ParDo(
            WriteUnitsInBundle(self._units, self._sink)
        ).with_outputs(LEFTOVERS, main="written")
        keyed_units = inputs["units"] | "KeyUnits" >> beam.Map(
            lambda unit: (unit.index, unit)
        ).with_output_types(tuple[int, PartRange])
        grouped: PCollection[int] = (
            {"unit": keyed_units, "results": in_bundle[LEFTOVERS]}
            | "GroupLeftovers" >> beam.CoGroupByKey()
            | "WritePart" >> beam.ParDo(WritePart(self._sink))
        )
        written: PCollection[int] = (in_bundle.written, grouped) | "AllWritten" >> beam.Flatten()
        return written
