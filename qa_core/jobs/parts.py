"""A predict job's output as planned parts: row ranges written one part file pair each, and resumed.

The rows of a job are cut into parts: each worker's contiguous range (`row_ranges`) into pieces of at
most `output.part_rows` rows. Part k holds exactly the answers and rejections of rows `[start, stop)` in
`answers/part-k.parquet` and `rejections/part-k.parquet`, and says so in both footers (`PART_KEY`). Each
part is answered on its own, its sort buffers starting with it, so a part's content depends only on its
rows and the config: `docqa predict --resume` keeps the parts a killed run finished (both files there,
their footers naming the same range and config hash, their rows adding up to the range) and answers
only the others, and the output equals a clean run's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.errors import OutputError
from qa_core.io.read import iter_rows
from qa_core.io.schema import ANSWERS_DIR, COMPLETED_FILE, REJECTIONS_DIR
from qa_core.io.storage import describe_storage_error, redact_url
from qa_core.io.write import IN_PROGRESS_PREFIX, OutputWriter, part_name

PART_KEY = "docqa.part"
"""Footer metadata key of a part file: its range and config hash, as JSON."""

PROGRESS_EVERY_ROWS = 256  # rows between two progress calls


@dataclass(frozen=True)
class PartRange:
    """Rows `[start, stop)` of the job's input (counted over all files), written as part `index`."""

    index: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """Rows in the part."""
        return self.stop - self.start


@dataclass
class PartCounts:
    """What the finished parts of an earlier attempt hold (kept by `--resume`)."""

    parts: int = 0
    answered: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        """Rows the parts cover."""
        return self.answered + sum(self.rejected_by_reason.values())


def row_ranges(total_rows: int, workers: int) -> list[tuple[int, int]]:
    """Splits `total_rows` into `workers` contiguous, near-equal, non-empty ranges (fewer if few rows)."""
    workers = max(1, min(workers, total_rows))
    size, extra = divmod(total_rows, workers)
    ranges = []
    start = 0
    for k in range(workers):
        stop = start + size + (1 if k < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


def plan_parts(total_rows: int, workers: int, part_rows: int) -> list[list[PartRange]]:
    """The parts of each worker: its range (`row_ranges`) cut every `part_rows` rows, numbered in order.

    An empty input has one empty part (so the output has its two files with their schemas).
    """
    plans: list[list[PartRange]] = []
    index = 0
    for start, stop in row_ranges(total_rows, workers) if total_rows else [(0, 0)]:
        parts = []
        for begin in range(start, max(stop, start + 1), part_rows):
            parts.append(PartRange(index, begin, min(begin + part_rows, stop)))
            index += 1
        plans.append(parts)
    return plans


def job_plan(
    config: QAConfig, revision: str, files: Sequence[str], rows: Sequence[int], parts: Iterable[PartRange]
) -> dict[str, Any]:
    """What a job writes, stored in `_job.json`: a resume must find the same config, model, inputs, parts."""
    return {
        "engine": "predict",
        "config_hash": config.config_hash(),
        "model_revision": revision,
        "inputs": [[redact_url(f), n] for f, n in zip(files, rows, strict=True)],
        "parts": [[p.start, p.stop] for p in parts],
    }


def part_metadata(part: PartRange, config_hash: str) -> dict[str, str]:
    """The footer metadata of part `part`'s two files."""
    return {PART_KEY: json.dumps({"start": part.start, "stop": part.stop, "config_hash": config_hash})}


def answer_parts(
    engine: QAEngine,
    files: list[str],
    parts: Sequence[PartRange],
    writer_for: Callable[[PartRange], OutputWriter],
    on_rows: Callable[[int], object],
) -> None:
    """Answers and writes each part: its rows on their own through the engine, into its own files.

    Args:
        engine: The engine (its `stats` add up over the parts).
        files: The job's input files.
        parts: The parts to answer, in order.
        writer_for: The (open) writer of a part's two files.
        on_rows: Progress: called with numbers of rows written.
    """
    for part in parts:
        writer = writer_for(part)
        rows = iter_rows(files, engine.config.input, start=part.start, stop=part.stop)
        writer.write_all(
            engine.answer_rows(rows, first_position=part.start), on_rows, every=PROGRESS_EVERY_ROWS
        )
        writer.close_tables()


def resumable_parts(
    output_dir: str, stored: dict[str, Any] | None, plan: dict[str, Any], parts: Sequence[PartRange]
) -> tuple[dict[int, PartCounts], PartCounts]:
    """The parts of an earlier attempt that `--resume` keeps, after checking it was the same job.

    Unfinished parts (a missing or partial file, a footer of another range or config) and in-progress
    files are removed, so only the kept parts remain for the rest of the job to add to.

    Args:
        output_dir: The output folder.
        stored: Its `_job.json` (None when it has none).
        plan: This job's plan (`job_plan`).
        parts: This job's parts, as in `plan`.

    Returns:
        Per kept part its counts, and their total.

    Raises:
        OutputError: The folder holds another job (config, model, inputs or parts differ), a finished
            run, or output files without a `_job.json`.
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    if stored is None:
        if _listing(fs, f"{root}/{ANSWERS_DIR}") or _listing(fs, f"{root}/{REJECTIONS_DIR}"):
            raise OutputError(
                f"cannot resume {output_dir}: it has output files but no _job.json (written by an older "
                "docqa or by docqa run); rerun with --overwrite"
            )
        return {}, PartCounts()
    if stored.get("engine") != "predict":
        raise OutputError(
            f"cannot resume {output_dir}: it holds a run of docqa {stored.get('engine', 'run')}, which "
            "docqa predict cannot continue; rerun with --overwrite"
        )
    if fs.exists(f"{root}/{COMPLETED_FILE}"):
        raise OutputError(f"cannot resume {output_dir}: its run is COMPLETED; pass --overwrite to redo it")
    for key, what in (
        ("config_hash", "config"),
        ("model_revision", "model"),
        ("inputs", "input files"),
        ("parts", "part plan"),
    ):
        if stored.get(key) != plan[key]:
            raise OutputError(
                f"cannot resume {output_dir}: it was started with another {what} ({key} "
                f"{_short(stored.get(key))}, now {_short(plan[key])}); rerun with the same settings and "
                "inputs, or pass --overwrite"
            )
    kept: dict[int, PartCounts] = {}
    for part in parts:
        counts = _finished_part(fs, root, part, plan["config_hash"])
        if counts is not None:
            kept[part.index] = counts
    _remove_unfinished(fs, root, {part_name(k) for k in kept})
    total = PartCounts()
    for counts in kept.values():
        total.parts += 1
        total.answered += counts.answered
        total.rejected_by_reason.update(counts.rejected_by_reason)
    return kept, total


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _listing(fs: Any, folder: str) -> list[str]:
    try:
        return [p for p in fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1].endswith(".parquet")]
    except FileNotFoundError:
        return []


def _finished_part(fs: Any, root: str, part: PartRange, config_hash: str) -> PartCounts | None:
    """The counts of part `part` when both its files are finished and name its range and config."""
    answers = f"{root}/{ANSWERS_DIR}/{part_name(part.index)}"
    rejections = f"{root}/{REJECTIONS_DIR}/{part_name(part.index)}"
    expected = json.loads(part_metadata(part, config_hash)[PART_KEY])
    rows = []
    try:
        for path in (answers, rejections):
            if not fs.exists(path):
                return None
            with fs.open(path, "rb") as handle:
                metadata = pq.ParquetFile(handle).metadata
                stored = (metadata.metadata or {}).get(PART_KEY.encode())
                if stored is None or json.loads(stored) != expected:
                    return None
                rows.append(metadata.num_rows)
        if sum(rows) != part.rows:
            return None
        with fs.open(rejections, "rb") as handle:
            reasons = pq.read_table(handle, columns=["reason"]).column("reason").to_pylist()
    except (OSError, ValueError) as err:  # a torn file: answer the part again
        if isinstance(err, PermissionError):
            raise OutputError(f"cannot resume: {describe_storage_error(err, root)}") from err
        return None
    return PartCounts(1, rows[0], Counter(str(r) for r in reasons))


def _remove_unfinished(fs: Any, root: str, kept: set[str]) -> None:
    """Removes every file of answers/ and rejections/ but the kept parts (torn parts, in-progress files)."""
    try:
        for folder in (ANSWERS_DIR, REJECTIONS_DIR):
            path = f"{root}/{folder}"
            fs.makedirs(path, exist_ok=True)
            for entry in fs.ls(path, detail=False):
                name = entry.rsplit("/", 1)[-1]
                if name not in kept or name.startswith(IN_PROGRESS_PREFIX):
                    fs.rm(entry, recursive=True)
    except Exception as err:  # storage client errors are not all OSErrors
        raise OutputError(f"cannot resume: {describe_storage_error(err, root)}") from err


def part_writers(
    config: QAConfig, output_dir: str, schemas: tuple[Any, Any], owner: str | None
) -> Callable[[PartRange], OutputWriter]:
    """The writer factory of `answer_parts`: part files in a prepared folder, owned by `owner`."""
    config_hash = config.config_hash()

    def writer_for(part: PartRange) -> OutputWriter:
        return OutputWriter(
            output_dir,
            *schemas,
            config.decode.top_k,
            part=part.index,
            prepare=False,
            metadata=part_metadata(part, config_hash),
            owner=owner,
        )

    return writer_for
