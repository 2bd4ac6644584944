"""Parquet in and out of the Beam job.

Reading is split by row group: one element per file lists the file's row groups from its footer, a
reshuffle spreads `(file, row_group)` pairs over the workers, and each is read with column projection
(the same parallelism as Beam's `ReadAllFromParquet`, which splits files at row-group boundaries). Files
are opened through Beam's file systems wherever Beam has one for the scheme (local, `gs://`, `s3://` with
`apache-beam[aws]`, `hdfs://`), otherwise through fsspec. A file that turns out corrupt fails the job with
an `InputError` naming the file and row group (Beam's own reader names neither). Large and
dictionary-encoded string columns are read as plain Python strings.

Writing uses `WriteToParquet` with the explicit schemas of `qa_core.io.schema`, so both engines write the
same tables; it needs a Beam file system for the output's scheme (`beam_filesystem_usable`).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import IO, Any, cast

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import PCollection

from qa_core.config import InputConfig
from qa_core.errors import InputError
from qa_core.io.read import file_row_counts

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


def _open(path: str) -> AbstractContextManager[IO[bytes]]:
    if beam_filesystem_usable(path):
        return cast(
            AbstractContextManager[IO[bytes]],
            FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED),
        )
    return cast(AbstractContextManager[IO[bytes]], fsspec.open(path, "rb"))


_READ_ERRORS = (OSError, ValueError, pa.ArrowException)


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class _ListRowGroups(beam.DoFn):
    """`(file, its first row's position)` -> `(file, row group, the group's first row's position)`."""

    def process(self, element: tuple[str, int]) -> Iterator[tuple[str, int, int]]:
        path, position = element
        try:
            with _open(path) as handle:
                metadata = pq.ParquetFile(handle).metadata
        except _READ_ERRORS as err:
            raise InputError(f"cannot read Parquet file {path}: {_short(err)}") from err
        for index in range(metadata.num_row_groups):
            yield path, index, position
            position += metadata.row_group(index).num_rows


class _ReadRowGroup(beam.DoFn):
    """`(file, row group, first position)` -> `(position, row dict)` of every row of the group."""

    def __init__(self, config: InputConfig) -> None:
        self._columns = config.columns

    def process(self, element: tuple[str, int, int]) -> Iterator[tuple[int, dict[str, Any]]]:
        path, index, first = element
        try:
            with _open(path) as handle:
                table = pq.ParquetFile(handle).read_row_group(index, columns=self._columns)
            rows = table.to_pylist()
        except _READ_ERRORS as err:
            raise InputError(f"cannot read Parquet file {path} (row group {index}): {_short(err)}") from err
        yield from enumerate(rows, start=first)


class ReadRows(beam.PTransform):  # type: ignore[type-arg]
    """Files -> `(position, row dict)` of the configured columns, read one row group per element.

    A row's position (0-based, over all files in order) is its engine key (`qa_core.records.row_key`),
    as in `docqa predict`; the files' first positions come from their footers, read here on the launcher.

    Args:
        files: Resolved input files (see `qa_core.io.read.resolve_inputs`).
        config: Which columns to read.
    """

    def __init__(self, files: list[str] | tuple[str, ...], config: InputConfig) -> None:
        super().__init__()
        self._files = list(files)
        self._config = config

    def expand(self, pipeline: beam.Pipeline) -> PCollection[Any]:
        starts = list(itertools.accumulate(file_row_counts(self._files), initial=0))
        rows: PCollection[Any] = (
            pipeline
            | "InputFiles" >> beam.Create(list(zip(self._files, starts, strict=False)))
            | "RowGroups" >> beam.ParDo(_ListRowGroups())
            | "Spread" >> beam.Reshuffle()
            | "ReadRowGroups" >> beam.ParDo(_ReadRowGroup(self._config))
        )
        return rows


def write_table(pcoll: PCollection[Any], output_dir: str, folder: str, schema: pa.Schema) -> Any:
    """Writes dict rows to `output_dir/folder/part-*.parquet` with `schema`."""
    prefix = FileSystems.join(output_dir, folder, "part")
    return pcoll | f"Write{folder.title()}" >> beam.io.WriteToParquet(
        prefix, schema, file_name_suffix=".parquet", record_batch_size=1000
    )
