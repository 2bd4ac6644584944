"""The executor half of `docqa spark`: one unit of rows through the engine, into its own part files.

    unit K = rows [start, stop) of the job's input (`InputSource.rows`: one table's rows, or two tables'
    pairs) -> QAEngine.answer_rows (validate, featurize, length-bucketed batches, forward, decode, merge)
    -> answers/part-K, rejections/part-K (footers: the range, the config hash, the unit's counters)
    -> one summary

Each unit is one Spark task (`pipelines.spark_job` plans them by rows, `qa_core.jobs.parts.plan_units`),
answered whole in the Python worker that receives it, so a row's windows never leave it (no shuffle).
The rows are read here, by position range, through the job's `InputSource` (`qa_core.io.sources`) rather
than with Spark's Parquet reader: a Parquet row group is the smallest split Spark's reader makes (a
one-row-group file would be one task), and `--resume` needs each part file to be a known row range of the
input, which Spark's file splits are not. A two-table job's units begin where a document's rows begin
(`InputSource.boundary`), so each document is read, and its context tokenized, by one unit only; its
source holds the questions and reaches the task as a Spark broadcast (`UnitJob.shared_source`). The part
files and row keys (input positions) are exactly `docqa predict`'s (`part_writers`, `answer_part`).

The engine, with its model, is built once per Python worker process and kept in this module for every
later unit of the job (Spark reuses its Python workers: `spark.python.worker.reuse`, on by default). A
unit's counters (the documents it read among them) travel back twice: through an accumulator
(`StatsAccumulator`, into `_run.json`) and in its summary (the same as its footers'
`qa_core.jobs.parts.COUNTS_KEY`), which the driver prefers when a retried task made an accumulator count
twice.

Nothing here imports pyspark at module level except `TaskContext` inside the task: the module is
imported by executors, whose pyspark is the cluster's.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pipelines.spark_keyed import Routed
from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.errors import JobError
from qa_core.io.pairs import PairsSource
from qa_core.io.sources import InputSource
from qa_core.jobs.parts import PartRange, answer_part, counting_documents, part_writers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitJob:
    """What every task needs, pickled into each task's closure: the job's input travels one of two ways.

    A one-table source is a few file names and row counts, pickled with the rest (`source`). A two-table
    source holds the questions, the join's plan and the documents' keys, so it is shipped once per
    executor as a Spark broadcast (`shared_source`), which the closure only names: exactly one of the two
    is set.

    Attributes:
        config: The config the engine answers with (`JobPlan.answer_config`: its batch caps set).
        output_dir: The prepared output folder (an URL every executor can write).
        answer_schema: The answers table's schema (as `docqa predict` writes it).
        rejection_schema: The rejections table's schema.
        owner: The job's owner token (`qa_core.io.ownership`), checked before each part file is put in
            place.
        config_hash: The job's config hash (`_run.json`), written into each part's footer.
        accumulator: A Spark accumulator of `StatsAccumulator` (None: counters only in the summaries).
        source: The job's input (`JobPlan.source`), pickled with the job; None when `shared_source` is set.
        shared_source: A Spark broadcast of the job's input (its `.value` is read in the task); None when
            `source` is set.

    Raises:
        JobError: Both sources set, or neither.
    """

    config: QAConfig
    output_dir: str
    answer_schema: Any  # pa.Schema
    rejection_schema: Any
    owner: str
    config_hash: str
    accumulator: Any = None
    source: InputSource | None = None
    shared_source: Any = None  # pyspark.Broadcast[InputSource]

    def __post_init__(self) -> None:
        if (self.source is None) == (self.shared_source is None):
            raise JobError("a Spark unit job reads one input: its source or a broadcast of it, not both")

    def input_source(self) -> InputSource:
        """The job's input: the broadcast's value (fetched once per executor), else the pickled source."""
        # One of the two is set (`__post_init__`).
        return cast(InputSource, self.source if self.shared_source is None else self.shared_source.value)


class StatsAccumulator:
    """A Spark `AccumulatorParam` over engine counters (`EngineStats.to_state` documents).

    Spark calls `zero` and `addInPlace`; it is duck-typed here so that this module needs no pyspark at
    import time.
    """

    def zero(self, value: dict[str, Any]) -> dict[str, Any]:
        """An empty set of counters."""
        return EngineStats().to_state()

    def addInPlace(self, total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """The sum of two sets of counters (Spark's name)."""
        stats = EngineStats.from_state(total)
        stats.add(EngineStats.from_state(more))
        return stats.to_state()


_ENGINES: dict[str, QAEngine] = {}
"""This Python worker's engines, by config hash: the model is loaded once per process and job config."""
_MODEL_LOADS = [0]  # models this process has loaded (the summary says it: once per process is the aim)


def engine_for(config: QAConfig) -> QAEngine:
    """This process's engine for `config`, loading the model on first use.

    Torch and the tokenizer get the task's cores (`OMP_NUM_THREADS`, which PySpark sets to
    `spark.task.cpus` unless the executor environment sets it): concurrent tasks share the executor's.
    With `runtime.host_tuning` the Python worker tunes its process before the model loads and trims its
    heap after CPU batches (`qa_core.runtime.host_tuning`): it is the job's process, not a caller's.

    Raises:
        ModelLoadError, ConfigError: As `docqa predict` would, on the executor (the task fails with it).
    """
    key = config.config_hash()
    engine = _ENGINES.get(key)
    if engine is None:
        import torch

        from qa_core.runtime.host_tuning import trimming, tune_host
        from qa_core.runtime.loaders import load_runner

        threads = max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # read when the tokenizer pool starts
        torch.set_num_threads(threads)
        if config.runtime.host_tuning:
            tune_host()
        runner = load_runner(config.model, config.runtime)
        engine = QAEngine(trimming(runner) if config.runtime.host_tuning else runner, config)
        _ENGINES[key] = engine
        _MODEL_LOADS[0] += 1
        logger.info("loaded %s in process %d (%d threads)", config.model.name_or_path, os.getpid(), threads)
    return engine


def executor_id() -> str:
    """A stable id of the executor this Python worker serves: `host/pid of its pyspark.daemon`.

    PySpark forks an executor's Python workers from one `pyspark.daemon` process per executor, so the
    parent's pid names the executor on its host (a restarted executor has a new daemon, so a new id).
    """
    return f"{socket.gethostname()}/{os.getppid()}"


def answer_units(job: UnitJob, units: Iterable[PartRange]) -> Iterator[dict[str, Any]]:
    """The mapPartitions function: answers the task's unit (one per task) and yields its summary.

    A unit's rows are read through the job's input (`UnitJob.input_source`), which counts the documents
    a two-table unit reads into the unit's counters (`EngineStats.documents_read`), as `docqa predict`'s
    parts count theirs.

    Args:
        job: The job (bound with `functools.partial` on the driver).
        units: The task's units: one, as the driver slices them.

    Yields:
        Per unit: its index and rows, the task attempt, the executor and Python worker, the model
        they loaded, and the unit's counters (`EngineStats.to_state`).
    """
    source = job.input_source()
    for unit in units:
        yield _answer_unit(job, unit, _range_reader(source, unit))


def _range_reader(
    source: InputSource, unit: PartRange
) -> Callable[[EngineStats], Iterable[Mapping[str, Any]]]:
    """Reads the unit's rows, counting the documents it reads in the engine's counters (its footers)."""

    def rows(stats: EngineStats) -> Iterable[Mapping[str, Any]]:
        return source.rows(unit.start, unit.stop, counting_documents(stats))

    return rows


def answer_joined_unit(
    job: UnitJob, units: Sequence[PartRange], slot: int, routed: Iterable[tuple[int, Routed]]
) -> Iterator[dict[str, Any]]:
    """The mapPartitionsWithIndex function of a keyed join: partition `slot` answers `units[slot]`.

    Its rows are formed from its documents, read here, and the questions the shuffle routed to them
    (`pipelines.spark_keyed.routed_questions`); then answered and written as `answer_units` does.

    Args:
        job: The job; its source is a keyed two-table join.
        units: The units of this attempt, in the order of the partitions.
        slot: This partition's index.
        routed: `(slot, (document index, question))` of the unit's documents' questions.

    Yields:
        The unit's summary, as `answer_units`.
    """
    keyed = job.input_source()
    if not isinstance(keyed, PairsSource) or keyed.keyed is None:
        raise JobError("answer_joined_unit answers a keyed two-table join only")
    join, unit = keyed.keyed, units[slot]
    questions = (question for _, question in routed)
    yield _answer_unit(
        job,
        unit,
        lambda stats: join.unit_rows(unit.start, unit.stop, questions, None, counting_documents(stats)),
    )


def _answer_unit(
    job: UnitJob, unit: PartRange, rows_of: Callable[[EngineStats], Iterable[Mapping[str, Any]]]
) -> dict[str, Any]:
    """Answers one unit's rows (`rows_of(the engine's counters)`) into its part files; its summary."""
    from pyspark import TaskContext

    context = TaskContext.get()
    attempt = context.attemptNumber() if context is not None else 0
    config = job.config
    engine = engine_for(config)
    schemas = (job.answer_schema, job.rejection_schema)
    writer_for = part_writers(config, job.output_dir, schemas, job.owner, job.config_hash)
    stats = answer_part(engine, rows_of(engine.stats), unit.start, writer_for(unit), lambda _: None)
    if job.accumulator is not None:
        job.accumulator.add(stats.to_state())
    runner = engine.runner
    return {
        "unit": unit.index,
        "attempt": attempt,
        "rows": stats.rows,
        "executor": executor_id(),
        "pid": os.getpid(),
        "model_loads": _MODEL_LOADS[0],
        "model_id": runner.model_id,
        "revision": runner.revision,
        "device": str(runner.device),
        "counts": stats.to_state(),
    }
