"""Output side of the jobs: answers and rejections Parquet, `_run.json`, and `COMPLETED` last.

A run first removes any old `COMPLETED` marker, so a crashed or partial run never looks complete; the
marker is written only after every table and `_run.json` are closed, and only once the output footers
add up to the rows read (`verify_output_rows`). Part files are written under an in-progress name
(`_in-progress-part-00000.parquet.<token>.tmp`) and renamed when closed, so a crashed run leaves no file
that a `*.parquet` glob or a Parquet dataset reader would take for a finished part.

A job owns its output: preparing the folder writes `_job.json` with a fresh owner token, checked again
before each part file is put in place and before `COMPLETED` (`qa_core.io.ownership`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.errors import OutputError
from qa_core.io.ownership import JOB_FILE, check_owner, claim_output
from qa_core.io.schema import (
    ANSWERS_DIR,
    COMPLETED_FILE,
    REJECTIONS_DIR,
    REPORT_DIR,
    REPORT_FILE,
    RUN_INFO_FILE,
    AnswerColumns,
    RejectionColumns,
    ResultColumns,
)
from qa_core.io.storage import bucket_problem, storage_errors, storage_failure
from qa_core.records import Answer, Rejection

logger = logging.getLogger(__name__)


IN_PROGRESS_PREFIX = "_in-progress-"
ResultT = TypeVar("ResultT", Answer, Rejection)


class _PartWriter(Generic[ResultT]):
    """Writes one Parquet part file in row groups of `flush_rows` rows; a temporary name until closed.

    Results are gathered column-wise (`ResultColumns`) and converted to Arrow every `ARROW_CHUNK_ROWS`
    rows: a row group's worth of Python objects, alive while thousands of other rows come and go, would
    pin memory that the interpreter cannot give back (the resident set then grows with the row-group size).
    """

    ARROW_CHUNK_ROWS = 512

    def __init__(
        self,
        fs: Any,
        path: str,
        columns: ResultColumns[ResultT],
        schema: pa.Schema,
        *,
        flush_rows: int,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self._fs, self._path, self._flush_rows = fs, path, flush_rows
        self._columns: ResultColumns[ResultT] = columns
        # Footer key-value metadata (a part's row range, for --resume); the rows are converted with the
        # plain schema, so every row group has the same schema whatever the metadata.
        self._file_schema = schema.with_metadata({**(schema.metadata or {}), **(metadata or {})})
        folder, _, name = path.rpartition("/")
        # Neither `*.parquet` globs nor Parquet dataset readers pick up this name.
        # The random token keeps two writers of a part (a run and a killed run's straggler) apart.
        self._temp_path = f"{folder}/{IN_PROGRESS_PREFIX}{name}.{uuid.uuid4().hex[:8]}.tmp"
        self._pending = 0  # results in `columns`, not yet in `_chunks`
        self._next_chunk = min(self.ARROW_CHUNK_ROWS, flush_rows)  # `_pending` that converts a chunk
        self._chunks: list[pa.Table] = []
        self._chunked_rows = 0
        self._handle: Any = None
        self._writer: pq.ParquetWriter | None = None

    def add(self, result: ResultT) -> None:
        self._columns.add(result)
        self._pending += 1
        if self._pending >= self._next_chunk:  # a chunk, or the rest of a row group: once per chunk
            self._to_arrow()
            if self._chunked_rows >= self._flush_rows:
                self._flush()

    def _to_arrow(self) -> None:
        if self._pending:
            self._chunks.append(self._columns.take_table())
            self._chunked_rows += self._pending
            self._pending = 0
        self._next_chunk = min(self.ARROW_CHUNK_ROWS, self._flush_rows - self._chunked_rows)

    def _flush(self) -> None:
        self._to_arrow()
        if self._writer is None:
            self._handle = self._fs.open(self._temp_path, "wb")
            self._writer = pq.ParquetWriter(self._handle, self._file_schema)
        if self._chunks:
            # One row group per flush, whatever the chunking.
            table = pa.concat_tables(self._chunks)  # no copy: write_table takes chunked columns
            self._writer.write_table(table, row_group_size=table.num_rows)
            self._chunks, self._chunked_rows = [], 0
            self._next_chunk = min(self.ARROW_CHUNK_ROWS, self._flush_rows)

    def finish(self, metadata: dict[str, str] | None = None) -> None:
        """Writes the last rows and the footer (with `metadata` added), still under the in-progress name."""
        self._flush()  # also creates an empty file with the schema when there were no rows
        if self._writer is not None:
            if metadata:
                self._writer.add_key_value_metadata(metadata)
            self._writer.close()
            self._handle.close()
            self._writer = None

    def publish(self) -> None:
        """Renames the finished file into place (`finish` first)."""
        self._fs.mv(self._temp_path, self._path)


class OutputWriter:
    """Writes the output layout under `output_dir` (local or any fsspec URL).

    Args:
        output_dir: Destination folder.
        answer_schema: Schema of the answers table.
        rejection_schema: Schema of the rejections table.
        top_k: Whether to write the `top_k` column (when > 1).
        overwrite: Replace an existing output; without it, an existing output is an error.
        flush_rows: Rows per Parquet row group.
        part: Number of this writer's part files (`part-00003.parquet`): a job writes one pair per
            planned row range (`qa_core.jobs.parts`), from one or several processes.
        prepare: Clear and create the folder first (`prepare_output`); False when the job prepared it.
        metadata: Footer key-value metadata of both part files (the part's row range).
        owner: The job's owner token (`prepare_output`): checked before the part files are put in place,
            so a job that lost its folder to another never mixes its files into the other's output.
    """

    def __init__(
        self,
        output_dir: str,
        answer_schema: pa.Schema,
        rejection_schema: pa.Schema,
        top_k: int,
        *,
        overwrite: bool = False,
        flush_rows: int = 10_000,
        part: int = 0,
        prepare: bool = True,
        metadata: dict[str, str] | None = None,
        owner: str | None = None,
    ) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(output_dir)
        self.output_dir = output_dir
        self.top_k = top_k
        self.owner = prepare_output(output_dir, overwrite=overwrite) if prepare else owner
        name = part_name(part)
        self._answers = _PartWriter(
            self.fs,
            self._path(ANSWERS_DIR, name),
            AnswerColumns(answer_schema, top_k),
            answer_schema,
            flush_rows=flush_rows,
            metadata=metadata,
        )
        self._rejections = _PartWriter(
            self.fs,
            self._path(REJECTIONS_DIR, name),
            RejectionColumns(rejection_schema),
            rejection_schema,
            flush_rows=flush_rows,
            metadata=metadata,
        )

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def write(self, result: Answer | Rejection) -> None:
        """Adds one answer or rejection.

        Raises:
            OutputError: When the storage refuses a write (no `COMPLETED` is written then).
        """
        try:  # once a row: a plain `try`, not the `storage_errors` context manager
            if isinstance(result, Answer):
                self._answers.add(result)
            else:
                self._rejections.add(result)
        except OSError as err:  # PermissionError, a full disk, a lost connection (a bad value is a bug)
            raise storage_failure(OutputError, "cannot write the output", self.output_dir, err) from err

    def write_all(
        self, results: Iterable[Answer | Rejection], on_rows: Callable[[int], object], every: int = 1
    ) -> int:
        """Writes every result of a stream (an engine's `answer_rows`), reporting progress.

        Args:
            results: Answers and rejections, in output order.
            on_rows: Called with the number of rows written since its last call, every `every` rows and
                once at the end for the rest (a progress bar, a worker's progress message).
            every: Rows between two progress calls.

        Returns:
            The rows written.
        """
        written = 0
        for result in results:
            self.write(result)
            written += 1
            if written % every == 0:
                on_rows(every)
        if written % every:
            on_rows(written % every)
        return written

    def close_tables(self, metadata: dict[str, str] | None = None) -> None:
        """Closes (and renames into place) the answers and rejections part files.

        Args:
            metadata: Footer key-value metadata known only at the end (the part's counters).

        Raises:
            OutputError: When the storage refuses a write, or another job took the folder over.
        """
        with storage_errors(OutputError, "cannot finish the output", self.output_dir):
            self._answers.finish(metadata)
            self._rejections.finish(metadata)
        if self.owner is not None:
            check_owner(self.output_dir, self.owner)
        with storage_errors(OutputError, "cannot finish the output", self.output_dir):
            self._answers.publish()
            self._rejections.publish()

    def close(self, run_info: dict[str, Any]) -> None:
        """Closes the tables, writes `_run.json`, then the `COMPLETED` marker.

        Raises:
            OutputError: When the storage refuses a write; no `COMPLETED` is written then.
        """
        self.close_tables()
        mark_completed(self.output_dir, run_info, owner=self.owner)


def write_json_file(path: str, document: Any) -> None:
    """Writes `document` as indented JSON to a local file (`--json FILE` of the commands).

    Raises:
        OutputError: When the file or its folder cannot be written.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n", "utf-8")
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}") from err


def check_output(output_dir: str, *, overwrite: bool) -> list[str]:
    """Checks, without changing anything, that a run can write to `output_dir`.

    On an object store the bucket must exist (it is never created) and be readable with the credentials
    of the environment.

    Returns:
        The names of an earlier run's entries in the folder (to remove when `overwrite` is on).

    Raises:
        OutputError: The folder already holds a run (finished or not) and `overwrite` is off, the bucket
            is missing, or the location cannot be read.
    """
    problem = bucket_problem(output_dir)
    if problem is not None:
        raise OutputError(f"cannot write output: {problem}")
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    names = (
        COMPLETED_FILE,
        RUN_INFO_FILE,
        JOB_FILE,
        ANSWERS_DIR,
        REJECTIONS_DIR,
        REPORT_FILE,
        REPORT_DIR,
    )  # marker first
    with storage_errors(OutputError, "cannot prepare output", output_dir):
        present = [name for name in names if fs.exists(f"{root}/{name}")]
    if present and not overwrite:
        if COMPLETED_FILE in present:
            raise OutputError(f"output {output_dir} already holds a run; pass --overwrite to replace it")
        raise OutputError(
            f"output {output_dir} holds an unfinished run (it has {present} but no {COMPLETED_FILE}); "
            "pass --overwrite to replace it (or, with docqa predict, --resume to finish it)"
        )
    return present


def prepare_output(output_dir: str, *, overwrite: bool, plan: dict[str, Any] | None = None) -> str:
    """Makes `output_dir` ready for a run: refuses an existing run unless `overwrite`, clears it if so.

    Args:
        output_dir: The output folder.
        overwrite: Replace an earlier run's files.
        plan: What the job will write (its config hash, inputs and part ranges), stored in `_job.json`
            for `docqa predict --resume`.

    Returns:
        The job's owner token (`claim_output`).

    Raises:
        OutputError: See `check_output`; also when the folder cannot be cleared or created.
    """
    present = check_output(output_dir, overwrite=overwrite)
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    # Claimed first: a job still writing here sees that it lost the folder before its next step, and
    # cannot mark it COMPLETED after the old marker is gone.
    with storage_errors(OutputError, "cannot prepare output", output_dir):
        fs.makedirs(root, exist_ok=True)
    owner = claim_output(output_dir, plan or {})
    with storage_errors(OutputError, "cannot prepare output", output_dir):
        # Removing the marker first means an interrupted overwrite never leaves a "complete" folder.
        for name in present:
            if name != JOB_FILE:
                fs.rm(f"{root}/{name}", recursive=True)
        for name in (ANSWERS_DIR, REJECTIONS_DIR):
            fs.makedirs(f"{root}/{name}", exist_ok=True)
    return owner


def part_name(part: int) -> str:
    """The file name of part `part` in answers/ and rejections/."""
    return f"part-{part:05d}.parquet"


def mark_completed(output_dir: str, run_info: dict[str, Any], *, owner: str | None = None) -> None:
    """Writes `_run.json`, then the `COMPLETED` marker (last, so its presence means a finished run).

    Args:
        output_dir: The output folder.
        run_info: The `_run.json` document.
        owner: The job's owner token: checked before each of the two writes.

    Raises:
        OutputError: When the storage refuses the write, or another job took the folder over.
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    if owner is not None:
        check_owner(output_dir, owner)
    with (
        storage_errors(OutputError, "cannot finish the output", output_dir),
        fs.open(f"{root}/{RUN_INFO_FILE}", "w") as handle,
    ):
        handle.write(json.dumps(run_info, indent=2, sort_keys=True, default=str) + "\n")
    if owner is not None:
        check_owner(output_dir, owner)  # the other job's _run.json may be the one just replaced
    with (
        storage_errors(OutputError, "cannot finish the output", output_dir),
        fs.open(f"{root}/{COMPLETED_FILE}", "w") as handle,
    ):
        handle.write("")
    if owner is not None:
        try:
            check_owner(output_dir, owner)  # claimed between the check and the marker: take it back
        except OutputError:
            fs.rm(f"{root}/{COMPLETED_FILE}")
            raise
    logger.info("wrote %s", output_dir)
