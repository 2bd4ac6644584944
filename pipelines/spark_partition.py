"""The executor half of `docqa spark`: one Spark partition through the engine, into its own part files.

    Arrow record batches of the partition (mapInArrow) -> rows -> QAEngine.answer_rows (validate,
    featurize, length-bucketed batches, forward, decode, merge) -> answers/part-K, rejections/part-K

A partition is answered whole in the Python worker that receives it, so a row's windows never leave it
(no shuffle). The engine, with its model, is built once per Python worker process and kept in this
module for every later partition of the job (Spark reuses its Python workers: `spark.python.worker.reuse`,
on by default). The partition's counters travel back twice: through an accumulator (`StatsAccumulator`,
into `_run.json`) and in its part files' footers (`qa_core.jobs.parts.COUNTS_KEY`), which the driver
prefers when a retried task made an accumulator count twice.

Nothing here imports pyspark at module level except `TaskContext` inside the task: the module is
imported by executors, whose pyspark is the cluster's.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.io.read import rows_of_batch
from qa_core.io.write import OutputWriter
from qa_core.jobs.parts import PART_KEY, answer_part

logger = logging.getLogger(__name__)

SUMMARY_SCHEMA = (
    "partition INT, attempt INT, rows LONG, pid INT, model_loads INT, model_id STRING, revision STRING, "
    "device STRING, counts STRING"
)
"""The one row a partition's task returns to the driver (Spark DDL)."""

# Partitions are numbered from here in the engine's row keys: keys stay unique within a process, and
# the same input gives the same keys (batch planning is deterministic).
POSITIONS_PER_PARTITION = 10**12


@dataclass(frozen=True)
class PartitionJob:
    """What every task needs, pickled to the executors once per job.

    Attributes:
        config: The config the engine answers with (`JobPlan.answer_config`: its batch caps set).
        output_dir: The prepared output folder (an URL every executor can write).
        answer_schema: The answers table's schema (as `docqa predict` writes it).
        rejection_schema: The rejections table's schema.
        owner: The job's owner token (`qa_core.io.ownership`), checked before each part file is put in
            place.
        config_hash: The job's config hash (`_run.json`), written into each part's footer.
        accumulator: A Spark accumulator of `StatsAccumulator` (None: counters only in the footers).
    """

    config: QAConfig
    output_dir: str
    answer_schema: Any  # pa.Schema
    rejection_schema: Any
    owner: str
    config_hash: str
    accumulator: Any = None


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


def partition_metadata(partition: int, config_hash: str) -> dict[str, str]:
    """The footer metadata of a Spark partition's two part files."""
    return {PART_KEY: json.dumps({"spark_partition": partition, "config_hash": config_hash})}


def answer_partition(job: PartitionJob, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The mapInArrow function: answers a partition's rows and yields its one summary row.

    Args:
        job: The job (bound with `functools.partial` on the driver).
        batches: The partition's rows, as Arrow record batches of the input columns.

    Yields:
        One record batch of `SUMMARY_SCHEMA`: the partition, its rows and counters, and the model.
    """
    from pyspark import TaskContext

    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    attempt = context.attemptNumber() if context is not None else 0
    config = job.config
    engine = engine_for(config)
    writer = OutputWriter(
        job.output_dir,
        job.answer_schema,
        job.rejection_schema,
        config.decode.top_k,
        part=partition,
        prepare=False,
        metadata=partition_metadata(partition, job.config_hash),
        owner=job.owner,
    )
    rows = (row for batch in batches for row in rows_of_batch(batch))
    stats = answer_part(engine, rows, partition * POSITIONS_PER_PARTITION, writer, lambda _: None)
    if job.accumulator is not None:
        job.accumulator.add(stats.to_state())
    runner = engine.runner
    summary = {
        "partition": partition,
        "attempt": attempt,
        "rows": stats.rows,
        "pid": os.getpid(),
        "model_loads": _MODEL_LOADS[0],
        "model_id": runner.model_id,
        "revision": runner.revision,
        "device": str(runner.device),
        "counts": json.dumps(stats.to_state()),
    }
    yield pa.RecordBatch.from_pylist([summary], schema=summary_arrow_schema())


def summary_arrow_schema() -> pa.Schema:
    """`SUMMARY_SCHEMA` as Arrow (what mapInArrow's function must yield)."""
    return pa.schema(
        [
            ("partition", pa.int32()),
            ("attempt", pa.int32()),
            ("rows", pa.int64()),
            ("pid", pa.int32()),
            ("model_loads", pa.int32()),
            ("model_id", pa.string()),
            ("revision", pa.string()),
            ("device", pa.string()),
            ("counts", pa.string()),
        ]
    )
