"""A job's input as numbered rows: one table, or the question-document pairs of two tables.

Every job reads its input through an `InputSource`: the rows' columns and schema, how many rows there are,
and the rows of a range `[start, stop)` of positions. The job machinery works on positions only (the parts
plan, `--resume`, the row keys, the footers' counts, the workers' ranges), so it is the same for both:

    TableSource  (`--input IN`)                          row k = the k-th row of the files, in file order
    PairsSource  (`--documents DOCS --questions QS`,     row k = the k-th (document, question) pair, or a
                  `qa_core.io.pairs`)                    bad document or question, one rejection each

A source is planned once, on the driver, from footers and small columns (`qa_core.io.spec.open_source`);
it is a frozen, picklable value that worker processes and cluster tasks read their own ranges with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Any, Protocol

import fsspec

from qa_core.config import InputConfig
from qa_core.errors import InputError
from qa_core.io.read import InputSchema, file_row_counts, iter_rows, read_input_schema, resolve_inputs
from qa_core.io.sample import read_layout, sample_rows
from qa_core.io.storage import redact_url, storage_errors

OnDocuments = Callable[[int], object]
"""Called with a number of documents a source read from storage (`EngineStats.documents_read`)."""
Opener = Callable[[str], AbstractContextManager[IO[bytes]]]
"""Opens an input file for binary reading (`qa_core.io.read.iter_rows`); None: fsspec."""


class InputSource(Protocol):
    """A job's input as rows numbered from 0: what every engine reads, by ranges of positions."""

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the job reads (`_run.json` `inputs`)."""
        ...

    @property
    def schema(self) -> InputSchema:
        """The fields of the rows' columns (the outputs' schemas are built from them)."""
        ...

    @property
    def columns(self) -> InputConfig:
        """The columns of the rows, as the engine validates them (the answering config's `input`)."""
        ...

    @property
    def row_count(self) -> int:
        """The job's rows: positions `[0, row_count)`."""
        ...

    def rows(
        self,
        start: int,
        stop: int,
        on_documents: OnDocuments | None = None,
        opener: Opener | None = None,
    ) -> Iterator[Mapping[str, Any]]:
        """The rows at positions `[start, stop)`, in order.

        Args:
            start: The first position.
            stop: The position to stop before.
            on_documents: Called with the documents read from storage (two tables only).
            opener: Opens the files (`docqa run` goes through Beam's file systems); None: fsspec.
        """
        ...

    def boundary(self, position: int) -> int:
        """The first position >= `position` where a range may begin without splitting a unit of reading."""
        ...

    def identity(self) -> Any:
        """What `--resume` compares (`_job.json` `inputs`): the files, their rows, sizes and versions."""
        ...

    def sample(self, n: int, seed: int = 0) -> list[Mapping[str, Any]]:
        """`n` rows spread over the input (all when there are fewer), in order (`docqa estimate`)."""
        ...

    def details(self) -> dict[str, Any]:
        """The source's own sections of `_run.json` (none for one table)."""
        ...


@dataclass(frozen=True)
class TableSource:
    """A one-table input: row k is the k-th row of the files, in file order.

    Attributes:
        files: The Parquet files.
        file_rows: Rows of each file (footers).
        schema: The configured columns' fields.
        columns: The input config the rows are read and validated with.
    """

    files: tuple[str, ...]
    file_rows: tuple[int, ...]
    schema: InputSchema
    columns: InputConfig

    @classmethod
    def open(cls, pattern: str, config: InputConfig) -> TableSource:
        """The table of `pattern`, its footers checked.

        Raises:
            InputError: No files, an unreadable file, or columns that do not fit the config.
        """
        files = resolve_inputs(pattern)
        schema = read_input_schema(files, config)
        return cls(tuple(files), tuple(file_row_counts(files)), schema, config)

    @property
    def row_count(self) -> int:
        """Rows of every file together."""
        return sum(self.file_rows)

    def rows(
        self,
        start: int,
        stop: int,
        on_documents: OnDocuments | None = None,
        opener: Opener | None = None,
    ) -> Iterator[Mapping[str, Any]]:
        """The rows `[start, stop)`; each carries its own context, so no documents are counted."""
        return iter_rows(
            self.files, self.columns, start=start, stop=stop, opener=opener, file_rows=self.file_rows
        )

    def boundary(self, position: int) -> int:
        """Any row may begin a range."""
        return position

    def identity(self) -> list[list[Any]]:
        """[url, rows, size, version] of each file."""
        return file_identities(self.files, self.file_rows)

    def sample(self, n: int, seed: int = 0) -> list[Mapping[str, Any]]:
        """A stratified sample of the rows (`qa_core.io.sample`)."""
        return list(sample_rows(read_layout(list(self.files)), self.columns.columns, n, seed))

    def details(self) -> dict[str, Any]:
        """Nothing beyond `_run.json`'s own."""
        return {}


def file_identities(files: Sequence[str], rows: Sequence[int]) -> list[list[Any]]:
    """[url (redacted), rows, size, version] of each file: a file rewritten with as many rows is another.

    The version is the ETag (object stores) or the modification time (local files).

    Raises:
        InputError: When the storage cannot say.
    """
    return [[redact_url(f), n, *_file_version(f)] for f, n in zip(files, rows, strict=True)]


def _file_version(url: str) -> list[Any]:
    with storage_errors(InputError, "cannot read input", url):
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    version = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified") if k in info), None)
    return [info.get("size"), str(version) if version is not None else None]
