"""Parquet in and out of the Beam job: work-sized units in, one part file pair per unit out.

Reading is split by units, not by the writer's row groups: the launcher plans the input's rows as units
(`qa_core.jobs.parts.plan_units`: contiguous row ranges, at least two per core, at most
`output.task_rows` rows each, each beginning where a two-table job's document begins), a reshuffle
spreads them over the workers, and `ReadUnit` reads rows `[start, stop)` through the job's `InputSource`
(one table's files, or the pairs of two tables: `qa_core.io.sources`), with column projection, so a
2,000-row file written as one row group is still read by several workers. `ReadUnit` is a splittable DoFn
whose restriction is the unit's row positions (an `OffsetRange`, each row claimed before it is emitted):
a runner with dynamic work rebalancing (Dataflow, Flink) can split a straggling unit; units are already
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
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import IO, Any, cast

import apache_beam as beam
import fsspec
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

from pipelines import metrics
from qa_core.io.pairs import PairsSource
from qa_core.io.sources import TableSource
from qa_core.jobs.parts import PartRange
from qa_core.records import RejectedRow

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
    """A unit -> `(position, row dict)` of each of its rows, read from the job's `InputSource`.

    The source (`qa_core.io.sources`: one table, or the pairs of two with the questions held) comes as a
    Beam side input (`beam.pvalue.AsSingleton`), so a two-table job's questions, the small side, reach
    each worker through the runner's side-input channel rather than pickled into this DoFn. Files are
    opened through Beam's file systems where Beam has one for the scheme (`open_for_beam`). Documents
    read from storage are counted in the Beam counter `docqa/documents_read` (`_run.json`
    `counts.documents_read`). The side input is typed as the `InputSource`s there are: Beam checks its
    type, which a `Protocol` cannot be checked against.

    Splittable: each row's position is claimed before the row is emitted, so a split hands the rows not
    yet claimed to another worker and no row is read twice or lost. Units begin where a document's rows
    begin (`InputSource.boundary`), so each document is read once; a runner's dynamic split may still
    cut a unit inside a document's rows, which stays correct: the other side reads that document again
    and keeps only the rows it claims (it is then counted twice in `documents_read`). A row's position
    is its engine key (`qa_core.records.row_key`), as in `docqa predict`.
    """

    def __init__(self) -> None:
        super().__init__()  # nothing of the job's: the source comes as the side input

    def process(
        self,
        element: PartRange,
        source: TableSource | PairsSource,
        tracker: OffsetRestrictionTracker = _UNIT_TRACKER,
    ) -> Iterator[tuple[int, RejectedRow | dict[str, Any]]]:
        restriction = tracker.current_restriction()
        # Reads to the restriction's stop as it was at the start; a split moves the stop down, and the
        # first claim past it fails, which ends the read there.
        rows = source.rows(restriction.start, restriction.stop, _count_documents, open_for_beam)
        for position, row in enumerate(rows, start=restriction.start):
            if not tracker.try_claim(position):
                return
            # A bad input found when the job was planned keeps its type (its reason), which the declared
            # union also keeps across a runner's shuffle (pickled; a plain dict's coder would drop it).
            # Rows are dicts already (`iter_rows`, `PairsPlan.expand`): no copy on this per-row path.
            yield position, row if isinstance(row, dict) else dict(row)


def _count_documents(documents: int) -> None:
    metrics.inc("documents_read", documents)
