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

Writing is per unit (`pipelines.write_parts`): each unit's `answers/part-K.parquet` and
`rejections/part-K.parquet`, as `docqa predict` and `docqa spark` write theirs, so that `--resume` can
keep the units a killed run finished.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import IO, Any, cast

import apache_beam as beam
import fsspec
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

from qa_core.config import InputConfig
from qa_core.io.read import iter_rows
from qa_core.jobs.parts import PartRange

# Beam registers its S3 file system even without boto3, which it then needs on first use.
_SCHEME_NEEDS = {"s3": "boto3"}


def beam_filesystem_usable(path: str) -> bool:
    """Whether one of Beam's file systems handles this path's scheme, with its client library installed."""
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        return False
    module = _SCHEME_NEEDS.get(FileSystems.get_scheme(path) or "")
    return module is None or importlib.util.find_spec(module) is not None


def open_for_beam(path: str) -> AbstractContextManager[IO[bytes]]:
    """Opens a file through Beam's file system for its scheme where Beam has a usable one, else fsspec."""
    if beam_filesystem_usable(path):
        return cast(
            AbstractContextManager[IO[bytes]],
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED),
        )
    return cast(AbstractContextManager[IO[bytes]], fsspec.open(path, "rb"))


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
        file_rows: Their row counts (the launcher read the footers): a unit skips earlier files unopened.
        config: Which columns to read.
    """

    def __init__(
        self, files: Sequence[str], config: InputConfig, file_rows: Sequence[int] | None = None
    ) -> None:
        self._files = list(files)
        self._config = config
        self._file_rows = None if file_rows is None else list(file_rows)

    def process(
        self,
        element: PartRange,
        tracker: OffsetRestrictionTracker = _UNIT_TRACKER,
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        restriction = tracker.current_restriction()
        # Reads to the restriction's stop as it was at the start; a split moves the stop down, and the
        # first claim past it fails, which ends the read there.
        rows = iter_rows(
            self._files,
            self._config,
            start=restriction.start,
            stop=restriction.stop,
            opener=open_for_beam,
            file_rows=self._file_rows,
        )
        for position, row in enumerate(rows, start=restriction.start):
            if not tracker.try_claim(position):
                return
            yield position, row
