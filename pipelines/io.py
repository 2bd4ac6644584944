"""Parquet in and out of the Beam job.

Reading uses Beam's `ReadAllFromParquet` (splittable by row group, column projection) wherever Beam has a
file system for the scheme (local, `gs://`, `s3://` with `apache-beam[aws]`, `hdfs://`); other fsspec
URLs are read through fsspec one file per element. Writing uses `WriteToParquet` with the explicit
schemas of `qa_core.schema`, so both engines write the same tables.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import PCollection

from qa_core.config import InputConfig
from qa_core.read import iter_rows


def beam_can_read(path: str) -> bool:
    """Whether one of Beam's file systems handles this path's scheme."""
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        return False
    return True


class _ReadWithFsspec(beam.DoFn):
    def __init__(self, config: InputConfig) -> None:
        self._config = config

    def process(self, path: str) -> Iterator[dict[str, Any]]:
        yield from iter_rows([path], self._config)


class ReadRows(beam.PTransform):  # type: ignore[type-arg]
    """Files -> row dicts of the configured columns.

    Args:
        files: Resolved input files (see `qa_core.read.resolve_inputs`).
        config: Which columns to read.
    """

    def __init__(self, files: Sequence[str], config: InputConfig) -> None:
        super().__init__()
        self._files = list(files)
        self._config = config

    def expand(self, pipeline: beam.Pipeline) -> PCollection[Any]:
        names = pipeline | "InputFiles" >> beam.Create(self._files)
        rows: PCollection[Any]
        if all(beam_can_read(f) for f in self._files):
            rows = names | "ReadParquet" >> beam.io.ReadAllFromParquet(columns=self._config.columns)
            return rows
        rows = (
            names
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadFsspec" >> beam.ParDo(_ReadWithFsspec(self._config))
        )
        return rows


def write_table(pcoll: PCollection[Any], output_dir: str, folder: str, schema: pa.Schema) -> Any:
    """Writes dict rows to `output_dir/folder/part-*.parquet` with `schema`."""
    prefix = FileSystems.join(output_dir, folder, "part")
    return pcoll | f"Write{folder.title()}" >> beam.io.WriteToParquet(
        prefix, schema, file_name_suffix=".parquet", record_batch_size=1000
    )
