"""A job's output as planned parts: row ranges written one part file pair each, and resumed.

The rows of a job are cut into parts. `docqa predict` cuts each worker's contiguous range (`row_ranges`)
into pieces of at most `output.part_rows` rows; `docqa spark` and `docqa run` plan work-sized units
(`plan_units`: at least two per core, at most `output.task_rows` rows each), one task each. Part k holds
exactly the answers and rejections of rows `[start, stop)` in `answers/part-k.parquet` and
`rejections/part-k.parquet`, and says so in both footers (`PART_KEY`). Each part is answered on its own,
its sort buffers starting with it, so a part's content depends only on its rows and the config:
`--resume` (`qa_core.jobs.resume`) keeps the parts a killed run finished (both files there, their
footers naming the same range and config hash, their rows adding up to the range) and answers only the
others, and the output equals a clean run's.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.errors import ConfigError
from qa_core.io.sources import InputSource
from qa_core.io.write import OutputWriter
from qa_core.runtime.shapes import BatchShape

PART_KEY = "docqa.part"
"""Footer metadata key of a part file: its range and config hash, as JSON."""
COUNTS_KEY = "docqa.part_counts"
"""Footer metadata key of a part file: the engine's counters of its rows (`EngineStats.to_state`)."""
MAX_PARTS = 100_000  # part-00000 ... part-99999 sort in input order by name

UNITS_PER_CORE = 2  # a cluster job's least units per core (`plan_units`)
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


def plan_parts(
    total_rows: int, workers: int, part_rows: int, boundary: Callable[[int], int] | None = None
) -> list[list[PartRange]]:
    """The parts of each worker: its range (`row_ranges`) cut every `part_rows` rows, numbered in order.

    An empty input has one empty part (so the output has its two files with their schemas).

    Args:
        total_rows: The job's rows.
        workers: Processes to share them.
        part_rows: Rows per part.
        boundary: Where a part may begin (`InputSource.boundary`): each cut moves forward to it, so that
            a two-table job reads each document in one part (a part then holds up to a document's rows
            more or fewer than `part_rows`; a worker left with none is left out). None: any row.

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
        cuts = [start, *range(start + part_rows, stop, part_rows), stop]
        if boundary is not None:
            cuts = [boundary(cut) for cut in cuts]
        parts = []
        for begin, end in itertools.pairwise(cuts):
            if begin < end or not total_rows:  # an empty input: its one empty part
                parts.append(PartRange(index, begin, end))
                index += 1
        if parts:
            plans.append(parts)
    return plans


def plan_units(
    total_rows: int, cores: int, task_rows: int, boundary: Callable[[int], int] | None = None
) -> list[PartRange]:
    """The parts of a cluster job: `UNITS_PER_CORE` per core at least, `task_rows` rows at most each.

    Spark and Beam hand units to whichever core is free, so more units than cores lets a fast executor
    take more and a retried or straggling unit costs a fraction of a core's share; `task_rows` keeps a
    task (and the work a retry repeats) short however large the input. The units are contiguous, in
    input order, and near-equal; `boundary` as in `plan_parts`.

    Raises:
        ConfigError: When the plan has more than `MAX_PARTS` parts.
    """
    return [
        part
        for ranges in plan_parts(total_rows, max(1, cores) * UNITS_PER_CORE, task_rows, boundary)
        for part in ranges
    ]


def job_plan(
    engine: str,
    config: QAConfig,
    revision: str,
    *,
    shape: BatchShape,
    inputs: Any,
    parts: Iterable[PartRange],
) -> dict[str, Any]:
    """What a job writes, stored in `_job.json`: a resume must find the same config, model, inputs, parts.

    `engine` is the job's (`predict`, `run`, `spark`): one engine's output is not resumed by another.

    `inputs` is the input's `InputSource.identity()`: each file known by its URL, rows, size and version
    (ETag, or modification time), so a file rewritten with the same number of rows is another input (a
    two-table job's documents and questions apart). The batch shape is the one a job here runs with
    (`docqa tune` may change it between two attempts: the parts would then be batched differently).
    """
    return {
        "engine": engine,
        "config_hash": config.config_hash(),
        "model_revision": revision,
        "batch_shape": [shape.max_batch_windows, shape.max_batch_tokens],
        "inputs": inputs,
        "parts": [[p.start, p.stop] for p in parts],
    }


def part_metadata(part: PartRange, config_hash: str) -> dict[str, str]:
    """The footer metadata of part `part`'s two files."""
    return {PART_KEY: json.dumps({"start": part.start, "stop": part.stop, "config_hash": config_hash})}


def answer_parts(
    engine: QAEngine,
    source: InputSource,
    parts: Sequence[PartRange],
    writer_for: Callable[[PartRange], OutputWriter],
    on_rows: Callable[[int], object],
) -> None:
    """Answers and writes each part: its rows on their own through the engine, into its own files.

    Args:
        engine: The engine (its `stats` add up over the parts, the documents read included).
        source: The job's input.
        parts: The parts to answer, in order.
        writer_for: The (open) writer of a part's two files.
        on_rows: Progress: called with numbers of rows written.
    """
    for part in parts:
        rows = source.rows(part.start, part.stop, counting_documents(engine.stats))
        answer_part(engine, rows, part.start, writer_for(part), on_rows)


def counting_documents(stats: EngineStats) -> Callable[[int], None]:
    """The `on_documents` of `InputSource.rows` that adds the documents read to `stats`."""

    def count(documents: int) -> None:
        stats.documents_read += documents

    return count


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


def part_writers(
    config: QAConfig, output_dir: str, schemas: tuple[Any, Any], owner: str | None, config_hash: str
) -> Callable[[PartRange], OutputWriter]:
    """The writer factory of `answer_parts`: part files in a prepared folder, owned by `owner`.

    `config_hash` is the job's (`JobPlan.config`, before the batch shape was set), which `--resume`
    finds in each finished part's footer.
    """

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
