"""Parquet in and out of the Beam job: work-sized units in, one part file pair per unit out.

Reading is split by units, not by the writer's row groups: the launcher plans the input's rows as units
(`qa_core.jobs.parts.plan_units`: contiguous row ranges, at least two per core, at most
`output.task_rows` rows each), a reshuffle spreads them over the workers, and `ReadUnit` reads rows
`[start, stop)` of the files with column projection (`qa_core.io.read.iter_rows`), so a 2,000-row file
written as one row group is still read by several workers. `ReadUnit` is a splittable DoFn whose
restriction is the unit's row positions (an `OffsetRange`, each row claimed before it is emitted): a
runner with dynamic work rebalancing (Dataflow, Flink) can split a straggling unit; units are already
work-sized, so there is no initial split. Files are opened through Beam's file systems wherever Beam has
one for the scheme (local, `gs://`, `s3://` with `apache-beam[aws]`, `hdfs://`), otherwise through
fsspec. A file that turns out corrupt fails the job with an `InputError` naming the file and row group
(Beam's own reader names neither). Large and dictionary-encoded string columns are read as plain strings.

Writing is per unit (`WriteParts`): every answer and rejection is keyed by its unit, grouped, and the
unit's `answers/part-K.parquet` and `rejections/part-K.parquet` are written by qa_core's `OutputWriter`,
as `docqa predict` and `docqa spark` write theirs, so `--resume` can keep the units a killed run finished.
"""

from __future__ import annotations

import bisect
import importlib.util
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import IO, Any, TypeAlias, cast

import apache_beam as beam
import fsspec
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.pvalue import PCollection
from apache_beam.transforms.core import RestrictionProvider

from pipelines import metrics
from qa_core.config import InputConfig
from qa_core.engine.stats import EngineStats
from qa_core.io.read import iter_rows
from qa_core.io.write import OutputWriter
from qa_core.jobs.parts import COUNTS_KEY, PartRange, part_metadata
from qa_core.records import Answer, Rejection

# Beam registers its S3 file system even without boto3, which it then needs on first use.
_SCHEME_NEEDS = {"s3": "boto3"}

WRITER_KEY = "docqa.part_writer"
"""Footer metadata key of a Beam part file: the worker process that wrote it (`host:pid`), as JSON."""


def beam_filesystem_usable(path: str) -> bool:
    """Whether one of Beam's file systems handles this path's scheme, with its client library installed."""
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        return False
    module = _SCHEME_NEEDS.get(FileSystems.get_scheme(path) or "")
    return module is None or importlib.util.find_spec(module) is not None


def _open(path: str) -> AbstractContextManager[IO[bytes]]:
    if beam_filesystem_usable(path):
        return cast(
            AbstractContextManager[IO[bytes]],
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED),
        )
    return cast(AbstractContextManager[IO[bytes]], fsspec.open(path, "rb"))


def worker_name() -> str:
    """This worker process, as `host:pid` (the per-worker counters and the part footers name it so)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class UnitRows(RestrictionProvider):
    """The restriction of a unit: its row positions, `[start, stop)`, as an `OffsetRange`.

    The initial restriction is not split (units are work-sized already, `plan_units`); a runner may
    still split it dynamically (`OffsetRestrictionTracker.try_split`), at a row not yet claimed.
    """

    def initial_restriction(self, element: PartRange) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, element: PartRange, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction

    def restriction_size(self, element: PartRange, restriction: OffsetRange) -> int:
        return int(restriction.size())


# Beam's way of asking for a restriction tracker: a parameter default it recognises. Typed as the tracker
# Beam passes in its place.
_UNIT_TRACKER = cast(OffsetRestrictionTracker, beam.DoFn.RestrictionParam(UnitRows()))


class ReadUnit(beam.DoFn):
    """A unit -> `(position, row dict)` of each of its rows (position counted over all files, in order).

    Splittable: each row's position is claimed before the row is emitted, so a split hands the rows not
    yet claimed to another worker and no row is read twice or lost. A row's position is its engine key
    (`qa_core.records.row_key`), as in `docqa predict`.

    Args:
        files: The job's input files, in order.
        config: Which columns to read.
    """

    def __init__(self, files: Sequence[str], config: InputConfig) -> None:
        self._files = list(files)
        self._config = config

    def process(
        self,
        element: PartRange,
        tracker: OffsetRestrictionTracker = _UNIT_TRACKER,
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        restriction = tracker.current_restriction()
        # Reads to the restriction's stop as it was at the start; a split moves the stop down, and the
        # first claim past it fails, which ends the read there.
        rows = iter_rows(
            self._files, self._config, start=restriction.start, stop=restriction.stop, opener=_open
        )
        for position, row in enumerate(rows, start=restriction.start):
            if not tracker.try_claim(position):
                return
            yield position, row


Result: TypeAlias = Answer | Rejection
# What `CoGroupByKey` gives `_WritePart`: unit index -> {"unit": [the unit], "results": its rows' results}.
UnitPieces: TypeAlias = dict[str, Iterable[PartRange | Answer | Rejection]]


class _KeyByUnit(beam.DoFn):
    """An answer or rejection -> `(its unit's index, it)`, the unit found from the row's position."""

    def __init__(self, units: Sequence[PartRange]) -> None:
        ordered = sorted(units, key=lambda unit: unit.start)
        self._starts = [unit.start for unit in ordered]
        self._indices = [unit.index for unit in ordered]

    def process(self, result: Result) -> Iterator[tuple[int, Result]]:
        slot = bisect.bisect_right(self._starts, int(result.row_key)) - 1
        yield self._indices[slot], result


class _WritePart(beam.DoFn):
    """`(unit index, {unit, results})` -> the unit's two part files, rows in input order; yields the index.

    The footers hold the unit's range and config hash (`parts.part_metadata`) and its counters
    (`parts.COUNTS_KEY`). Exact there: `rows`, `answered` and `rejected` by reason, derived from the
    results themselves. The engine's other counters (windows, batches, tokens, model time) are counted
    by Beam's metrics, job-wide, not per unit: they are 0 in these footers, so a resumed job's
    `_run.json` has them for the units this attempt answered only.

    Raises:
        RuntimeError: When the results do not cover the unit's rows exactly once (never with a correct
            runner: a part file is never written for a unit with a row missing or repeated).
        OutputError: When the storage refuses, or another job took the folder over (`owner`).
    """

    def __init__(
        self, output_dir: str, schemas: tuple[pa.Schema, pa.Schema], top_k: int, config_hash: str, owner: str
    ) -> None:
        self._output_dir = output_dir
        self._schemas = schemas
        self._top_k = top_k
        self._config_hash = config_hash
        self._owner = owner

    def process(self, element: tuple[int, UnitPieces]) -> Iterator[int]:
        index, pieces = element
        units = list(cast(Iterable[PartRange], pieces["unit"]))
        results = sorted(cast(Iterable[Result], pieces["results"]), key=lambda r: int(r.row_key))
        if len(units) != 1:
            raise RuntimeError(f"unit {index} was planned {len(units)} times")
        unit = units[0]
        if [int(r.row_key) for r in results] != list(range(unit.start, unit.stop)):
            raise RuntimeError(
                f"unit {index} (rows [{unit.start}, {unit.stop})) has {len(results)} results, not one per row"
            )
        counts = EngineStats(rows=unit.rows)
        for result in results:
            if isinstance(result, Answer):
                counts.answered += 1
            else:
                counts.rejected[result.reason.value] += 1
        writer = OutputWriter(
            self._output_dir,
            *self._schemas,
            self._top_k,
            part=index,
            prepare=False,
            metadata=part_metadata(unit, self._config_hash),
            owner=self._owner,  # checked before the files are put in place
        )
        for result in results:
            writer.write(result)
        writer.close_tables({COUNTS_KEY: json.dumps(counts.to_state(), sort_keys=True)})
        metrics.inc("parts_written")
        yield index


def _keyed_unit(unit: PartRange) -> tuple[int, PartRange]:
    return unit.index, unit


class WriteParts(beam.PTransform):  # type: ignore[type-arg]
    """`{"units": units, "results": answers and rejections}` -> one part file pair per unit.

    Not Beam's `WriteToParquet`: its shards are named by the sink (`part-00003-of-00008`, numbered by
    the runner's bundles), not by input range, so a rerun could not tell which rows a shard holds, and a
    killed job could only be redone from scratch. A unit's part is written once all its rows' results
    are grouped with it (`CoGroupByKey` on the unit's index), so every unit gets its two files, even one
    whose rows were all rejected (an empty answers file) and the one empty unit of an empty input.

    Args:
        units: The units this job answers (their rows are the only ones read).
        output_dir: The output folder, prepared by the launcher.
        schemas: The answers and rejections schemas.
        top_k: `decode.top_k`.
        config_hash: The job's config hash (`JobPlan.config`), which `--resume` finds in the footers.
        owner: The job's owner token (`PartedOutput.prepare`).
    """

    def __init__(
        self,
        units: Sequence[PartRange],
        output_dir: str,
        *,
        schemas: tuple[pa.Schema, pa.Schema],
        top_k: int,
        config_hash: str,
        owner: str,
    ) -> None:
        super().__init__()
        self._units = list(units)
        self._write = _WritePart(output_dir, schemas, top_k, config_hash, owner)

    # `inputs` is a dict of PCollections, which Beam cannot take as an input type hint (it warns): Any.
    def expand(self, inputs: Any) -> PCollection[int]:
        keyed_units = inputs["units"] | "KeyUnits" >> beam.Map(
            lambda unit: (unit.index, unit)
        ).with_output_types(tuple[int, PartRange])
        keyed_results = inputs["results"] | "KeyByUnit" >> beam.ParDo(_KeyByUnit(self._units))
        written: PCollection[int] = (
            {"unit": keyed_units, "results": keyed_results}
            | "GroupByUnit" >> beam.CoGroupByKey()
            | "WritePart" >> beam.ParDo(self._write)
        )
        return written
