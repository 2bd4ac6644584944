"""`docqa spark` / `spark-submit pipelines/spark_job.py`: the native PySpark job over the same engine.

    Parquet (Spark's reader, the job's columns only) -> mapInArrow(answer_partition): each partition
    through QAEngine in one Python worker, into answers/part-K and rejections/part-K -> one summary row
    per partition -> driver: footers checked against the rows read -> _run.json, COMPLETED

The driver checks what `docqa predict` checks before anything runs (inputs and their columns, the output
folder, the model against the config when the model is on this machine), prepares the folder with an
owner token, and writes `_run.json` and `COMPLETED` only once the output footers add up to the rows read
(from the input footers). The tables are written by the executors with `qa_core`'s writer and schemas,
so they are exactly `docqa predict`'s (Spark's own Parquet writer would change types and nullability).
A failed task or stage is one `PipelineError` line naming the cause, and no `COMPLETED`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.failures import PipelineError, summarize_failure
from pipelines.options import SPARK_DESCRIPTION, add_spark_arguments
from pipelines.spark_partition import SUMMARY_SCHEMA, PartitionJob, StatsAccumulator, answer_partition
from qa_core.config import QAConfig, config_from_arguments
from qa_core.engine.stats import EngineStats
from qa_core.errors import ConfigError, JobError, OutputError
from qa_core.evaluation.calibration import apply_model_calibration
from qa_core.io.ownership import verify_output_rows
from qa_core.io.read import count_rows, output_schemas, read_input_schema, resolve_inputs
from qa_core.io.run_info import run_info
from qa_core.io.write import OutputWriter, check_output, mark_completed, prepare_output
from qa_core.jobs.guard import run_guarded
from qa_core.runtime.cpu import torch_threads
from qa_core.runtime.fit import check_config_fits_model
from qa_core.runtime.loading import describe_model, load_qa_model, read_model_limits, resolve_device
from qa_core.tools.tune import probe_for_job

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the job's flags (`pipelines.options.add_spark_arguments`)."""
    parser = argparse.ArgumentParser(prog="docqa spark", description=SPARK_DESCRIPTION)
    add_spark_arguments(parser)
    return parser.parse_args(argv)


def spark_settings(master: str | None, conf: Sequence[str], *, debug: bool = False) -> dict[str, str]:
    """The session's settings: `--conf KEY=VALUE` items, then docqa's defaults.

    Locally the driver binds to loopback. Spark's own log stays quiet unless `--debug` (or a
    `--conf spark.log.level=...`): a failed task is docqa's one error line, not the executors' traces.

    Raises:
        ConfigError: A `--conf` item without `=`.
    """
    settings: dict[str, str] = {}
    for item in conf:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--conf takes KEY=VALUE, got {item!r}")
        settings[key.strip()] = value
    # One machine: loopback, whatever the hostname resolves to.
    if master is not None and master.startswith("local") and "SPARK_LOCAL_IP" not in os.environ:
        settings.setdefault("spark.driver.bindAddress", "127.0.0.1")
        settings.setdefault("spark.driver.host", "127.0.0.1")
    settings.setdefault("spark.ui.showConsoleProgress", "false")
    settings.setdefault("spark.log.level", "WARN" if debug else "FATAL")
    return settings


def default_master(master: str | None) -> str | None:
    """`--master`, else spark-submit's (None: the session's own), else `local[*]` (a plain `docqa spark`)."""
    if master:
        return master
    return None if "PYSPARK_GATEWAY_PORT" in os.environ else "local[*]"


def _check_model(config: QAConfig, master: str | None) -> str:
    """The model's revision, after checking it against the config where this machine has it.

    On a cluster the executors may load the model from their own disk (the wheel's bundled model, a path
    in the image): the driver cannot check it then, and the first task fails with the same message.
    """
    local = master is not None and master.startswith("local")
    if local or Path(config.model.name_or_path).exists():
        check_config_fits_model(config, read_model_limits(config.model))
        return describe_model(config.model)
    logger.info("model %s is not on this machine; the executors must have it", config.model.name_or_path)
    return "unchecked:executors"


def _probe_for_executors(config: QAConfig, rows: int, revision: str, settings: dict[str, str]) -> None:
    """Probes this machine's batch shape for a large untuned local job, as its executors' tasks run.

    Each task's Python worker runs torch with `spark.task.cpus` threads (PySpark's OMP_NUM_THREADS,
    `spark_partition.engine_for`), and the tuned shape is keyed by threads, so the probe runs with as many.
    On a cluster the executors run elsewhere: `docqa tune` on an executor machine gives the caps to set.
    """
    with torch_threads(int(settings.get("spark.task.cpus", "1"))):
        device = resolve_device(config.runtime)
        probe_for_job(config, rows, revision, device, lambda: load_qa_model(config.model, config.runtime))


def _start_session(master: str | None, settings: dict[str, str]) -> tuple[Any, bool]:
    """The Spark session (and whether this job created it, so stops it).

    Raises:
        JobError: pyspark is not installed, or Spark (Java) does not start.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:
        raise JobError(
            "docqa spark needs pyspark: pip install 'docqa-beam[spark]' (and a Java 17 runtime)"
        ) from err
    if master is not None and master.startswith("local"):
        # Local Python workers run this interpreter, so they import this docqa. PySpark's driver reads
        # the workers' interpreter from PYSPARK_PYTHON only (spark.pyspark.python is spark-submit's); on
        # a cluster it is the cluster's setting.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    existing = SparkSession.getActiveSession()
    builder = SparkSession.builder.appName("docqa")
    if master is not None:
        builder = builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as err:  # py4j and Java start-up failures have no common type
        raise JobError(
            f"cannot start Spark: {summarize_failure(err)} (is a Java 17 runtime installed?)"
        ) from err
    return session, existing is None


def run_spark(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the Spark job and writes `_run.json` and `COMPLETED` once every row is accounted for.

    Args:
        argv: The job's arguments (`docqa spark --help`).

    Returns:
        The `_run.json` document.

    Raises:
        InputError, ModelLoadError, ConfigError: Job-level problems found before Spark runs a task.
        OutputError: An unusable output folder, or footers that do not add up to the rows read.
        PipelineError: A task or stage failed (a model that does not load on an executor, a corrupt file).
    """
    args = parse_args(argv)
    started = time.perf_counter()
    config = apply_model_calibration(config_from_arguments(args))
    master = default_master(args.master)
    settings = spark_settings(master, args.conf, debug=getattr(args, "debug", False))
    files = resolve_inputs(args.input)
    schemas = output_schemas(read_input_schema(files, config.input), config)
    check_output(args.output, overwrite=args.overwrite)  # changes nothing
    revision = _check_model(config, master)
    rows_read = count_rows(files)
    if master is not None and master.startswith("local"):
        _probe_for_executors(config, rows_read, revision, settings)
    session, created = _start_session(master, settings)
    session_ready = time.perf_counter()
    try:
        owner = prepare_output(
            args.output,
            overwrite=args.overwrite,
            plan={"engine": "spark", "config_hash": config.config_hash()},
        )
        accumulator = session.sparkContext.accumulator(EngineStats().to_state(), StatsAccumulator())
        job = PartitionJob(config, args.output, *schemas, owner, accumulator)
        began = time.perf_counter()
        summaries = _answer(session, files, config, job)
        answered_at = time.perf_counter()
        master_url = session.sparkContext.master
        if not summaries:  # an empty input: Spark ran no task, so the empty tables are written here
            OutputWriter(
                args.output, *schemas, config.decode.top_k, prepare=False, owner=owner
            ).close_tables()
        counts = _checked_counts(args.output, rows_read, summaries, accumulator.value)
    finally:
        if created:
            session.stop()
    first = summaries[0] if summaries else {}
    info = run_info(
        config,
        model_id=first.get("model_id", config.model.name_or_path),
        revision=first.get("revision", revision),
        device=first.get("device", config.runtime.device),
        engine=f"spark:{master_url}",
        inputs=files,
        counts=counts,
        wall_seconds=time.perf_counter() - started,
        answering=(began - started, answered_at - started),
        batch_shape=json.loads(first["batch_shape"]) if first else None,
    )
    # The JVM's start, apart from answering (the executors' model loads fall in answering).
    info["timings"]["spark_start_seconds"] = round(session_ready - started, 3)
    info["spark"] = _spark_figures(summaries)
    mark_completed(args.output, info, owner=owner)
    logger.info(
        "rows %d: answered %d, rejected %d -> %s",
        rows_read,
        counts["answered"],
        counts["rejected"],
        args.output,
    )
    return info


def _answer(session: Any, files: list[str], config: QAConfig, job: PartitionJob) -> list[dict[str, Any]]:
    """Runs the job's one Spark stage; returns one summary per partition (the last attempt of each).

    Raises:
        PipelineError: When Spark fails the job.
    """
    columns = list(dict.fromkeys(config.input.columns))
    try:
        frame = session.read.parquet(*files).select(*columns)
        rows = frame.mapInArrow(functools.partial(answer_partition, job), SUMMARY_SCHEMA).collect()
    except Exception as err:  # Py4JJavaError, PythonException, AnalysisException: no common type
        raise PipelineError(
            f"the Spark job failed: {summarize_failure(err)}; {job.output_dir} is not marked COMPLETED "
            "(fix the cause, then rerun with --overwrite)"
        ) from err
    latest: dict[int, dict[str, Any]] = {}
    for row in sorted((r.asDict() for r in rows), key=lambda r: (r["partition"], r["attempt"])):
        latest[row["partition"]] = row
    return [latest[k] for k in sorted(latest)]


def _spark_figures(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """How the partitions ran: the Python worker processes and the models they loaded (once each)."""
    loads: dict[int, int] = {}
    for summary in summaries:  # a process's count only grows: its largest is its total
        loads[summary["pid"]] = max(loads.get(summary["pid"], 0), summary["model_loads"])
    return {"partitions": len(summaries), "python_workers": len(loads), "model_loads": sum(loads.values())}


def _checked_counts(
    output_dir: str, rows_read: int, summaries: list[dict[str, Any]], accumulated: dict[str, Any]
) -> dict[str, Any]:
    """The `counts` of `_run.json`, once the output footers add up to the rows read.

    The accumulator's counters are used when they agree with the partitions' own (which their footers
    hold); a task that Spark ran twice adds to an accumulator twice, and the partitions' counters win.

    Raises:
        OutputError: When answers + rejections in the footers differ from the rows read.
    """
    answered, rejected = verify_output_rows(output_dir, rows_read)
    partitions = EngineStats()
    for summary in summaries:
        partitions.add(EngineStats.from_state(json.loads(summary["counts"])))
    stats = EngineStats.from_state(accumulated)
    if stats.to_state() != partitions.to_state():
        logger.warning("the Spark accumulator counted a retried task twice: using the partitions' counters")
        stats = partitions
    if (stats.rows, stats.answered, sum(stats.rejected.values())) != (rows_read, answered, rejected):
        raise OutputError(
            f"{output_dir} holds {answered} answers and {rejected} rejections for {rows_read} rows read, but "
            f"the job's tasks counted {stats.answered} and {sum(stats.rejected.values())}: the run is not "
            "marked COMPLETED"
        )
    counts = stats.to_dict()
    counts["partitions"] = len(summaries)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `spark-submit pipelines/spark_job.py ...`; job errors exit with one line and code 2."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    return run_guarded("spark", lambda: run_spark(argv) and 0, debug)


if __name__ == "__main__":
    raise SystemExit(main())
