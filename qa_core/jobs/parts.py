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

import copy
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.errors import ConfigError, InputError, OutputError
from qa_core.io.read import iter_rows
from qa_core.io.schema import ANSWERS_DIR, COMPLETED_FILE, REJECTIONS_DIR, RUN_INFO_FILE
from qa_core.io.storage import redact_url, storage_errors
from qa_core.io.write import OutputWriter, part_name
from qa_core.runtime.loaders import resolve_device
from qa_core.runtime.shapes import choose_batch_shape

PART_KEY = "docqa.part"
"""Footer metadata key of a part file: its range and config hash, as JSON."""
COUNTS_KEY = "docqa.part_counts"
"""Footer metadata key of a part file: the engine's counters of its rows (`EngineStats.to_state`)."""
MAX_PARTS = 100_000  # part-00000 ... part-99999 sort in input order by name

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
class Kept:
    """The finished parts of an earlier attempt that `--resume` keeps: their numbers and counters."""

    indices: set[int] = field(default_factory=set)
    stats: EngineStats = field(default_factory=EngineStats)


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

    Raises:
        ConfigError: When the plan has more than `MAX_PARTS` parts.
    """
    if total_rows > MAX_PARTS * part_rows - workers * part_rows:
        raise ConfigError(
            f"output.part_rows={part_rows} cuts {total_rows} rows into more than {MAX_PARTS} parts; raise "
            "output.part_rows"
        )
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
    """What a job writes, stored in `_job.json`: a resume must find the same config, model, inputs, parts.

    An input file is known by its URL, rows, size and version (ETag, or modification time), so a file
    rewritten with the same number of rows is another input. The batch shape is the one a job here runs
    with (`docqa tune` may change it between two attempts: the parts would then be batched differently).
    """
    device = resolve_device(config.runtime)
    shape = choose_batch_shape(config, revision, device)
    return {
        "engine": "predict",
        "config_hash": config.config_hash(),
        "model_revision": revision,
        "batch_shape": [shape.max_batch_windows, shape.max_batch_tokens],
        "inputs": [[redact_url(f), n, *_file_version(f)] for f, n in zip(files, rows, strict=True)],
        "parts": [[p.start, p.stop] for p in parts],
    }


def _file_version(url: str) -> list[Any]:
    """[size, version] of a file: its ETag (object stores) or modification time (local files).

    Raises:
        InputError: When the storage cannot say.
    """
    with storage_errors(InputError, "cannot read input", url):
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    version = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified") if k in info), None)
    return [info.get("size"), str(version) if version is not None else None]


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
        rows = iter_rows(files, engine.config.input, start=part.start, stop=part.stop)
        answer_part(engine, rows, part.start, writer_for(part), on_rows)


def answer_part(
    engine: QAEngine,
    rows: Iterable[Mapping[str, Any]],
    first_position: int,
    writer: OutputWriter,
    on_rows: Callable[[int], object],
) -> EngineStats:
    """Answers one part's rows on their own into its two files, its counters in their footers.

    Args:
        engine: The engine (its `stats` add up over the parts).
        rows: The part's input rows, in order.
        first_position: The input position of its first row (row keys).
        writer: The (open) writer of the part's two files; closed and put in place here.
        on_rows: Progress: called with numbers of rows written.

    Returns:
        The part's own counters (also in its footers, `COUNTS_KEY`).
    """
    before = copy.deepcopy(engine.stats)
    writer.write_all(engine.answer_rows(rows, first_position), on_rows, every=PROGRESS_EVERY_ROWS)
    # The part's own counters, so that a resume that keeps it reports what a clean run would.
    counts = engine.stats.minus(before)
    writer.close_tables({COUNTS_KEY: json.dumps(counts.to_state(), sort_keys=True)})
    return counts


def resumable_parts(
    output_dir: str, stored: dict[str, Any] | None, plan: dict[str, Any], parts: Sequence[PartRange]
) -> Kept:
    """The parts of an earlier attempt that `--resume` keeps, after checking it was the same job.

    Changes nothing: the unfinished parts are removed by `remove_unfinished` once the job owns the folder.

    Args:
        output_dir: The output folder.
        stored: Its `_job.json` (None when it has none).
        plan: This job's plan (`job_plan`).
        parts: This job's parts, as in `plan`.

    Raises:
        OutputError: The folder holds another job (engine, config, model, inputs or parts differ), a
            finished run, output files without a `_job.json`, or a part that cannot be read for a reason
            other than being torn (a storage error: better to stop than to redo finished work).
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    if stored is None:
        if _listing(fs, f"{root}/{ANSWERS_DIR}") or _listing(fs, f"{root}/{REJECTIONS_DIR}"):
            raise OutputError(
                f"cannot resume {output_dir}: it has output files but no _job.json (written by an older "
                "docqa or by docqa run); rerun with --overwrite"
            )
        return Kept()
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
        ("batch_shape", "batch shape (docqa tune ran since?)"),
        ("inputs", "input files"),
        ("parts", "part plan"),
    ):
        if stored.get(key) != plan[key]:
            raise OutputError(
                f"cannot resume {output_dir}: it was started with another {what} ({key} "
                f"{_short(stored.get(key))}, now {_short(plan[key])}); rerun with the same settings and "
                "inputs, or pass --overwrite"
            )
    kept = Kept()
    for part in parts:
        stats = _finished_part(fs, root, part, plan["config_hash"])
        if stats is not None:
            kept.indices.add(part.index)
            kept.stats.add(stats)
    return kept


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _listing(fs: Any, folder: str) -> list[str]:
    """The entries of `folder`; none when it does not exist (an object store has no empty folders)."""
    try:
        return list(fs.ls(folder, detail=False))
    except FileNotFoundError:
        return []


def _finished_part(fs: Any, root: str, part: PartRange, config_hash: str) -> EngineStats | None:
    """The counters of part `part` when both its files are finished and name its range and config.

    None (answer the part again) for a missing file, a file that is not valid Parquet (cut short by a
    kill), or footers of another range, config or row count.

    Raises:
        OutputError: Any other failure to read the files (permissions, the network).
    """
    expected = json.loads(part_metadata(part, config_hash)[PART_KEY])
    rows, counters = [], []
    for folder in (ANSWERS_DIR, REJECTIONS_DIR):
        path = f"{root}/{folder}/{part_name(part.index)}"
        with storage_errors(OutputError, "cannot resume", path):
            try:
                with fs.open(path, "rb") as handle:
                    metadata = pq.ParquetFile(handle).metadata
            except FileNotFoundError:
                return None
            except pa.ArrowInvalid:  # no valid footer: the file was being written when the job died
                return None
        stored = metadata.metadata or {}
        try:
            if json.loads(stored.get(PART_KEY.encode(), b"null")) != expected:
                return None
            counters.append(EngineStats.from_state(json.loads(stored[COUNTS_KEY.encode()])))
        except (KeyError, ValueError, TypeError):
            return None
        rows.append(metadata.num_rows)
    stats = counters[0]
    if (stats.rows, stats.answered, sum(stats.rejected.values())) != (part.rows, *rows):
        return None
    return stats


def remove_unfinished(output_dir: str, kept: set[int]) -> None:
    """Clears what the kept parts do not cover: other part files, in-progress files, an old `_run.json`.

    Called once this job owns the folder (`claim_output`), so a refused or failed start changes nothing.

    Raises:
        OutputError: When the storage refuses.
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    names = {part_name(k) for k in kept}
    with storage_errors(OutputError, "cannot resume", output_dir):
        for name in (COMPLETED_FILE, RUN_INFO_FILE):
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}")
        for folder in (ANSWERS_DIR, REJECTIONS_DIR):
            path = f"{root}/{folder}"
            fs.makedirs(path, exist_ok=True)
            for entry in _listing(fs, path):
                if entry.rstrip("/").rsplit("/", 1)[-1] not in names:
                    fs.rm(entry, recursive=True)


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
