"""Input side: resolve a file / directory / glob (local or any fsspec URL) and stream its Parquet rows.

Rows are read one row group at a time with column projection, so memory is bounded by a row group.
Before any row is read, every file's footer is checked: the configured columns must exist, once each, the
question and context columns must hold text, and a column must have the same type in every file (large
and dictionary-encoded strings count as strings; nullability and field metadata do not count). A file
that breaks this fails the job with its name. Columns the job does not read may be anything, even
duplicated: projection by name never reads them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, TypeVar, cast

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.config import InputConfig, QAConfig
from qa_core.errors import InputError
from qa_core.io.schema import answer_schema, carried_field, rejection_schema
from qa_core.io.storage import (
    bucket_problem,
    describe_storage_error,
    is_storage_timeout,
    redact_url,
    storage_errors,
    to_url,
    url_to_fs,
)

logger = logging.getLogger(__name__)

# Errors pyarrow raises on a file that is not (or no longer) valid Parquet; UnicodeDecodeError is a
# ValueError, raised on invalid UTF-8 in a string column.
_FILE_ERRORS = (OSError, ValueError, pa.ArrowException)

_T = TypeVar("_T")


def _hidden(relative: str) -> bool:
    """Whether a path below an input directory is hidden (`.x`) or private (`_x`), like Spark's markers."""
    return any(part.startswith((".", "_")) for part in relative.split("/") if part)


def resolve_inputs(pattern: str) -> list[str]:
    """Parquet files named by a file path, a directory or a glob (sorted, fsspec URLs kept).

    A directory is searched recursively for `*.parquet`, skipping hidden and `_`-prefixed entries (such as
    the in-progress files of a running writer). A path that exists is read as it is, even when its name
    holds `[`, `]`, `*` or `?` (`run[1].parquet`, `in[2024]/`); only a path that does not exist is expanded
    as a glob (on an object store, a glob costs a look-up or two before its listing).

    Raises:
        InputError: When nothing matches, the bucket is missing, or the storage refuses the listing.
    """
    problem = bucket_problem(pattern)
    if problem is not None:
        raise InputError(f"cannot read input: {problem}")
    fs, path, protocol = url_to_fs(pattern)
    with storage_errors(InputError, "cannot list input", pattern):
        if fs.isdir(path):
            root = path.rstrip("/") + "/"
            found = sorted(
                p for p in fs.find(path) if p.endswith(".parquet") and not _hidden(p.removeprefix(root))
            )
        elif fs.exists(path):
            found = [path]
        elif any(ch in path for ch in "*?["):
            found = sorted(fs.glob(path))
        else:
            found = []
    if not found:
        raise InputError(f"no input Parquet files match {redact_url(pattern)}")
    return [to_url(protocol, p) for p in found]


@dataclass(frozen=True)
class InputSchema:
    """The Arrow fields of the columns the job reads."""

    id_field: pa.Field
    fields: tuple[pa.Field, ...]

    def field(self, name: str) -> pa.Field:
        """The field of column `name`."""
        return next(f for f in self.fields if f.name == name)


def _is_text(type_: pa.DataType) -> bool:
    """String-like (plain, large, view or dictionary-encoded) or all-null columns can hold questions."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return bool(
        pa.types.is_string(type_)
        or pa.types.is_large_string(type_)
        or pa.types.is_string_view(type_)
        or pa.types.is_null(type_)
    )


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


@contextlib.contextmanager
def _footer_errors(file: str) -> Iterator[None]:
    """Turns a failure to read `file`'s footer into one `InputError` line naming the file."""
    try:
        yield
    except FileNotFoundError as err:
        raise InputError(f"cannot read Parquet file {file}: it does not exist (any more)") from err
    except _FILE_ERRORS as err:  # botocore's and aiohttp's timeouts are OSErrors too
        if is_storage_timeout(err):
            raise InputError(f"cannot read input: {describe_storage_error(err, file)}") from err
        raise InputError(f"cannot read Parquet file {file}: {_short(err)}") from err
    except Exception as err:  # storage client errors (credentials, endpoint)
        raise InputError(f"cannot read Parquet file {describe_storage_error(err, file)}") from err


def read_input_schema(files: list[str], config: InputConfig) -> InputSchema:
    """Checks every file's footer and returns the fields of the configured columns.

    Question and context columns are read as `string` whatever their encoding; other columns keep their
    type, with large and dictionary-encoded strings written as plain strings. A column that is all null
    in one file (Arrow type `null`) is compatible with any type. Nullability and field metadata are not
    part of a column's type: the returned fields are nullable at every level (a file may hold nulls where
    another declares none; they become rejections, or values of a nullable output column).

    Raises:
        InputError: An unreadable file, a missing or duplicated column, a question or context column that
            does not hold text, or a column whose type differs between files, naming the file.
    """
    fields = read_table_fields(files, input_columns(config))
    return InputSchema(id_field=fields[0], fields=fields)


@dataclass(frozen=True)
class TableColumns:
    """The columns a job reads of one table, each with the setting that names it (for the messages).

    Attributes:
        settings: Column name -> the config key naming it (`input.id_column`), in reading order.
        text: The columns that must hold text (read as plain strings).
    """

    settings: Mapping[str, str]
    text: frozenset[str] = frozenset()

    @property
    def names(self) -> list[str]:
        """The columns, in reading order."""
        return list(self.settings)


def input_columns(config: InputConfig) -> TableColumns:
    """The columns of a one-table input: id, question, context (text), then the pass-through columns."""
    settings = dict.fromkeys(config.passthrough_columns, "input.passthrough_columns")
    for key in ("id_column", "question_column", "context_column"):
        settings[getattr(config, key)] = f"input.{key}"
    text = frozenset({config.question_column, config.context_column})
    return TableColumns({name: settings[name] for name in config.columns}, text)


def file_schema(file: str) -> pa.Schema:
    """The Arrow schema of one Parquet file, from its footer.

    Raises:
        InputError: The file cannot be read, naming it.
    """
    with _footer_errors(file), fsspec.open(file, "rb") as handle:
        return pq.read_schema(handle)


def read_table_fields(
    files: Sequence[str], columns: TableColumns, schemas: Sequence[pa.Schema] | None = None
) -> tuple[pa.Field, ...]:
    """`read_input_schema` for any table: the fields of `columns` (in order), checked in every file.

    Args:
        files: The table's Parquet files.
        columns: The columns to read and which hold text.
        schemas: The files' schemas when the caller has read them (`file_schema`); else read here.

    Raises:
        InputError: As `read_input_schema`.
    """
    first: dict[str, tuple[pa.Field, str]] = {}
    for index, file in enumerate(files):
        schema = file_schema(file) if schemas is None else schemas[index]
        for plain in _checked_fields(schema, file, columns):
            seen = first.get(plain.name)
            if seen is None or pa.types.is_null(seen[0].type):
                first[plain.name] = (plain, file)
            elif not pa.types.is_null(plain.type) and not _same_type(plain.type, seen[0].type):
                raise InputError(
                    f"{file}: column '{plain.name}' has type {plain.type}, but {seen[1]} has "
                    f"{seen[0].type}; every input file must give a column the same type"
                )
    if not first:
        raise InputError("no input files")
    return tuple(first[c][0] for c in columns.names)


def output_schemas(schema: InputSchema, config: QAConfig) -> tuple[pa.Schema, pa.Schema]:
    """The answers and rejections schemas of a job over an input of `schema` (every engine writes these)."""
    passthrough = [schema.field(c) for c in config.input.passthrough_columns]
    return (
        answer_schema(schema.id_field.type, passthrough, config.decode.top_k),
        rejection_schema(schema.id_field.type, schema.fields),
    )


def table_input_schema(schema: pa.Schema, config: InputConfig, source: str = "the table") -> InputSchema:
    """`read_input_schema` for one in-memory table's schema (the Python API).

    Raises:
        InputError: A missing column, or a question or context column that does not hold text.
    """
    fields = table_fields(schema, input_columns(config), source)
    return InputSchema(id_field=fields[0], fields=fields)


def table_fields(schema: pa.Schema, columns: TableColumns, source: str = "the table") -> tuple[pa.Field, ...]:
    """`read_table_fields` for one in-memory table's schema (the Python API's two tables)."""
    return tuple(_checked_fields(schema, source, columns))


def _checked_fields(schema: pa.Schema, source: str, columns: TableColumns) -> list[pa.Field]:
    """The fields of `columns` in one schema, as the job writes them.

    Text columns become plain strings, and every field is nullable at every level (`carried_field`).
    """
    settings = columns.settings
    missing = [c for c in columns.names if c not in schema.names]
    if missing:
        named = " / ".join(dict.fromkeys(settings[c] for c in missing))
        raise InputError(f"{source} has no column(s) {missing} (it has {schema.names}); set {named} to match")
    fields = []
    for name in columns.names:
        count = schema.names.count(name)
        if count > 1:  # `schema.field(name)` and a projection by name would be ambiguous
            raise InputError(
                f"{source}: column '{name}' ({settings[name]}) appears {count} times; write the file "
                "with one column of that name (drop or rename the others)"
            )
        field = schema.field(name)
        if name in columns.text and not _is_text(field.type):
            raise InputError(
                f"{source}: column '{name}' ({settings[name]}) has type {field.type}, expected "
                "strings; cast the column to string or point the setting at a text column"
            )
        type_ = pa.string() if name in columns.text else _plain(field.type)
        fields.append(carried_field(field.with_type(type_)))
    return fields


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether two (`carried_field`, so nullable everywhere) types are one, whatever their field metadata."""
    return bool(a.equals(b, check_metadata=False))


def _plain(type_: pa.DataType) -> pa.DataType:
    """Dictionary-encoded, large and view string columns are written as plain strings."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return pa.string()
    return type_


def iter_rows(
    files: Sequence[str],
    config: InputConfig | Sequence[str],
    batch_rows: int = 1024,
    *,
    start: int = 0,
    stop: int | None = None,
    opener: Callable[[str], AbstractContextManager[IO[bytes]]] | None = None,
    file_rows: Sequence[int] | None = None,
) -> Iterator[dict[str, object]]:
    """Streams rows (dicts of the configured columns) of all files, in file and row order.

    Args:
        files: Parquet files, read in this order.
        config: Which columns to read: the input's (`InputConfig.columns`), or the names themselves.
        batch_rows: Rows decoded per Arrow batch.
        start: First row to yield, counted over all files (row groups wholly before it are skipped
            from the footers, without reading their pages).
        stop: Row to stop before (None: to the end).
        opener: Opens a file for binary reading (default: fsspec); `docqa run` passes one that goes
            through Beam's file systems where Beam has one for the scheme.
        file_rows: The files' row counts, when the caller has them (`TableSource.file_rows`): files wholly
            before `start` are then skipped without being opened. Without them each such file's footer
            is read, which for a unit deep in an input of many object-store files is one request per
            earlier file.

    Raises:
        InputError: When a file turns out corrupt while reading, naming the file (and the row group
            when its pages were the problem).
    """
    columns = config.columns if isinstance(config, InputConfig) else list(config)
    yield from _read(
        files,
        columns,
        rows_of_batch,
        batch_rows=batch_rows,
        start=start,
        stop=stop,
        opener=opener,
        file_rows=file_rows,
    )


def iter_values(files: Sequence[str], column: str, batch_rows: int = 65_536) -> Iterator[object]:
    """The values of one column of all files, in order (a key column read whole, without a dict per row).

    Raises:
        InputError: As `iter_rows`.
    """
    yield from _read(files, [column], lambda batch: batch.column(0).to_pylist(), batch_rows=batch_rows)


def _read(
    files: Sequence[str],
    columns: Sequence[str],
    convert: Callable[[pa.RecordBatch], Iterable[_T]],
    *,
    batch_rows: int,
    start: int = 0,
    stop: int | None = None,
    opener: Callable[[str], AbstractContextManager[IO[bytes]]] | None = None,
    file_rows: Sequence[int] | None = None,
) -> Iterator[_T]:
    """`iter_rows`, each batch's slice converted where a failure names the file (invalid UTF-8 fails here)."""
    open_file = opener or _fsspec_open
    offset = 0  # global index of the current row group's first row
    for index, file in enumerate(files):
        if stop is not None and offset >= stop:
            return
        if file_rows is not None and offset + file_rows[index] <= start:
            offset += file_rows[index]
            continue
        group: int | None = None  # the row group being read, for the error message
        try:
            with open_file(file) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.metadata.num_row_groups):
                    size = parquet.metadata.row_group(group).num_rows
                    first, last = max(start - offset, 0), size if stop is None else min(stop - offset, size)
                    offset += size
                    if first >= last:
                        continue
                    seen = 0  # rows of this row group already decoded
                    for batch in parquet.iter_batches(
                        batch_size=batch_rows, row_groups=[group], columns=list(columns)
                    ):
                        lo, hi = max(first - seen, 0), min(last - seen, batch.num_rows)
                        seen += batch.num_rows
                        if lo < hi:
                            yield from convert(batch.slice(lo, hi - lo))
                        if seen >= last:
                            break
        except _FILE_ERRORS as err:  # botocore's and aiohttp's timeouts are OSErrors too
            if is_storage_timeout(err):
                raise InputError(f"cannot read input: {describe_storage_error(err, file)}") from err
            where = "" if group is None else f" (row group {group})"
            raise InputError(f"cannot read Parquet file {file}{where}: {_short(err)}") from err


def _fsspec_open(file: str) -> AbstractContextManager[IO[bytes]]:
    return cast(AbstractContextManager[IO[bytes]], fsspec.open(file, "rb"))


def rows_of_batch(batch: pa.RecordBatch) -> Iterator[dict[str, object]]:
    """The batch's rows as dicts, converted column by column (much faster than `RecordBatch.to_pylist`)."""
    names = batch.schema.names
    for values in zip(*(column.to_pylist() for column in batch.columns), strict=True):
        yield dict(zip(names, values, strict=True))


def file_row_counts(files: Sequence[str]) -> list[int]:
    """Rows of each Parquet file, from its footer (no data pages are read)."""
    counts = []
    for file in files:
        with _footer_errors(file), fsspec.open(file, "rb") as handle:
            counts.append(pq.ParquetFile(handle).metadata.num_rows)
    return counts


def count_rows(files: Sequence[str]) -> int:
    """Rows in Parquet files, from their footers (no data pages are read)."""
    return sum(file_row_counts(files))
