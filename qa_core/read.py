"""Input side: resolve a file / directory / glob (local or any fsspec URL) and stream its Parquet rows.

Rows are read one row group at a time with column projection, so memory is bounded by a row group.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.config import InputConfig

logger = logging.getLogger(__name__)


class InputError(RuntimeError):
    """The job's input cannot be used; the message names the file and what to change."""


def resolve_inputs(pattern: str) -> list[str]:
    """Parquet files named by a file path, a directory or a glob (sorted, fsspec URLs kept).

    Raises:
        InputError: When nothing matches.
    """
    fs, path = fsspec.core.url_to_fs(pattern)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def url(p: str) -> str:
        return p if protocol in ("file", "local") else f"{protocol}://{p}"

    try:
        if any(ch in path for ch in "*?["):
            found = sorted(fs.glob(path))
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        elif fs.exists(path):
            found = [path]
        else:
            found = []
    except OSError as err:
        raise InputError(f"cannot list input {pattern}: {err}") from err
    if not found:
        raise InputError(f"no input Parquet files match {pattern}")
    return [url(p) for p in found]


@dataclass(frozen=True)
class InputSchema:
    """The Arrow fields of the columns the job reads."""

    id_field: pa.Field
    fields: tuple[pa.Field, ...]

    def field(self, name: str) -> pa.Field:
        """The field of column `name`."""
        return next(f for f in self.fields if f.name == name)


def read_input_schema(files: list[str], config: InputConfig) -> InputSchema:
    """Checks that every file has the configured columns and returns their fields (from the first file).

    Raises:
        InputError: An unreadable file or a missing column, naming the file.
    """
    first: dict[str, pa.Field] | None = None
    for file in files:
        try:
            with fsspec.open(file, "rb") as handle:
                schema = pq.read_schema(handle)
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"cannot read Parquet file {file}: {err}") from err
        missing = [c for c in config.columns if c not in schema.names]
        if missing:
            raise InputError(
                f"{file} has no column(s) {missing} (it has {schema.names}); set input.id_column / "
                "question_column / context_column / passthrough_columns to match"
            )
        if first is None:
            first = {c: schema.field(c) for c in config.columns}
    if first is None:
        raise InputError("no input files")
    fields = tuple(first[c].with_type(_plain(first[c].type)) for c in config.columns)
    return InputSchema(id_field=fields[0], fields=fields)


def _plain(type_: pa.DataType) -> pa.DataType:
    """Dictionary-encoded and large string columns are written as plain types."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_large_string(type_):
        return pa.string()
    return type_


def iter_rows(files: list[str], config: InputConfig, batch_rows: int = 1024) -> Iterator[dict[str, object]]:
    """Streams rows (dicts of the configured columns) of all files, in file and row order.

    Raises:
        InputError: When a file turns out corrupt while reading, naming the file.
    """
    for file in files:
        try:
            with fsspec.open(file, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                for record_batch in parquet.iter_batches(batch_size=batch_rows, columns=config.columns):
                    yield from record_batch.to_pylist()
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"cannot read Parquet file {file}: {err}") from err
