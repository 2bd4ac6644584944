"""`docqa spark` / `spark-submit pipelines/spark_job.py`: the native PySpark job over the same engine.

    Parquet (Spark's reader, the job's columns only) -> mapInArrow(answer_partition): each partition
    through QAEngine in one Python worker, into answers/part-K and rejections/part-K -> one summary row
    per partition -> driver: footers checked against the rows read -> _run.json, COMPLETED

The driver runs the job's lifecycle (`qa_core.jobs.lifecycle`), as `docqa predict` and `docqa run` do:
its checks before Spark starts (inputs and their columns, the output folder, the model against the
config when the model is on this machine, the batch shape), the folder prepared with an owner token, and
`_run.json` and `COMPLETED` only once the output footers add up to the rows read and to the partitions'
own counts. The tables are written by the executors with `qa_core`'s writer and schemas,
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
from typing import Any

from pipelines.failures import PipelineError, summarize_failure
from pipelines.options import SPARK_DESCRIPTION, add_spark_arguments
from pipelines.spark_partition import SUMMARY_SCHEMA, PartitionJob, StatsAccumulator, answer_partition
from qa_core.config import QAConfig, config_from_arguments
from qa_core.engine.stats import EngineStats
from qa_core.errors import ConfigError, JobError
from qa_core.io.write import OutputWriter
from qa_core.jobs.guard import run_guarded
from qa_core.jobs.lifecycle import Answered, AnsweringSite, JobRequest, commit, open_output, preflight
from qa_core.runtime import host_tuning
from qa_core.runtime.loaders import load_runner

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the job's flags (`pipelines.options.add_spark_arguments`)."""
    parser = argparse.ArgumentParser(prog="docqa spark", description=SPARK_DESCRIPTION)
    add_spark_arguments(parser)
    return parser.parse_args(argv)


def spark_settings(
    master: str | None, conf: Sequence[str], *, debug: bool = False, packed_env: str | None = None
) -> dict[str, str]:
    """The session's settings: `--conf KEY=VALUE` items, then docqa's defaults.

    Locally the driver binds to loopback. Spark's own log stays quiet unless `--debug` (or a
    `--conf spark.log.level=...`): a failed task is docqa's one error line, not the executors' traces.
    A packed environment (`--packed-env`) is added to `spark.archives` under `PACKED_ENV_ALIAS`, the
    folder each executor unpacks it into (`_start_session` points the Python workers at its interpreter).

    Raises:
        ConfigError: A `--conf` item without `=`; a packed environment for a local master, or one that
            is not there.
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
    if packed_env is not None:
        settings["spark.archives"] = ",".join(
            filter(
                None,
                [settings.get("spark.archives"), f"{_packed_env_url(packed_env, master)}#{PACKED_ENV_ALIAS}"],
            )
        )
    settings.setdefault("spark.ui.showConsoleProgress", "false")
    settings.setdefault("spark.log.level", "WARN" if debug else "FATAL")
    return settings


PACKED_ENV_ALIAS = "docqa_env"
"""The folder name under which executors unpack `--packed-env` (`spark.archives`' `#alias`)."""


def _packed_env_url(archive: str, master: str | None) -> str:
    """The archive as `spark.archives` takes it: a local file made absolute, a URL as it is.

    Raises:
        ConfigError: For a local master (its Python workers run this interpreter), or a local file that
            does not exist.
    """
    if master is None:  # under spark-submit, whose context exists before this job can set anything
        raise ConfigError(
            f"--packed-env under spark-submit: pass spark-submit --archives {archive}#{PACKED_ENV_ALIAS} "
            f"--conf spark.pyspark.python=./{PACKED_ENV_ALIAS}/bin/python instead"
        )
    if master.startswith("local"):
        raise ConfigError(
            f"--packed-env ships docqa to a cluster's executors; {master} runs this Python: drop --packed-env"
        )
    if "://" in archive:
        return archive
    path = os.path.abspath(archive)
    if not os.path.isfile(path):
        raise ConfigError(
            f"--packed-env {archive}: no such file (make spark-env writes dist/docqa-spark-env.tar.gz)"
        )
    return path


def default_master(master: str | None) -> str | None:
    """`--master`, else spark-submit's (None: the session's own), else `local[*]` (a plain `docqa spark`)."""
    if master:
        return master
    return None if "PYSPARK_GATEWAY_PORT" in os.environ else "local[*]"


def _start_session(
    master: str | None, settings: dict[str, str], *, packed_env: bool = False
) -> tuple[Any, bool]:
    """The Spark session (and whether this job created it, so stops it).

    With a packed environment the executors' Python workers run its interpreter, relative to the
    executor's working folder where Spark unpacked it. PySpark's driver takes the workers' interpreter
    from `PYSPARK_PYTHON` only, so this command sets it (Spark's documented recipe for `spark.archives`).

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
    if packed_env:
        os.environ["PYSPARK_PYTHON"] = f"./{PACKED_ENV_ALIAS}/bin/python"
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
    config = config_from_arguments(args)
    # The command's own process, tuned before any model loads: the driver probes the batch shape of a
    # local job's executors.
    if config.runtime.host_tuning:
        host_tuning.tune_host()
    master = default_master(args.master)
    settings = spark_settings(
        master, args.conf, debug=getattr(args, "debug", False), packed_env=args.packed_env
    )
    local = master is not None and master.startswith("local")
    site = AnsweringSite(
        "spark",
        answers_here=local,
        # Each task's Python worker runs torch with spark.task.cpus threads (PySpark's OMP_NUM_THREADS).
        threads=int(settings.get("spark.task.cpus", "1")),
        workers="executors",
    )
    request = JobRequest(args.input, args.output, overwrite=args.overwrite)
    plan = preflight(config, request, site, load=lambda: load_runner(config.model, config.runtime))
    session, created = _start_session(master, settings, packed_env=args.packed_env is not None)
    session_ready = time.perf_counter()
    try:
        owner = open_output(plan)
        accumulator = session.sparkContext.accumulator(EngineStats().to_state(), StatsAccumulator())
        job = PartitionJob(
            plan.answer_config, args.output, *plan.schemas, owner, plan.config.config_hash(), accumulator
        )
        began = time.perf_counter()
        summaries = _answer(session, list(plan.files), plan.config, job)
        answered_at = time.perf_counter()
        master_url = session.sparkContext.master
        if not summaries:  # an empty input: Spark ran no task, so the empty tables are written here
            OutputWriter(
                args.output, *plan.schemas, config.decode.top_k, prepare=False, owner=owner
            ).close_tables()
        stats = _partition_stats(summaries, accumulator.value)
    finally:
        if created:
            session.stop()
    first = summaries[0] if summaries else {}
    answered = Answered(
        f"spark:{master_url}",
        stats,
        exact=True,  # each partition's last attempt, once
        model_id=first.get("model_id", config.model.name_or_path),
        revision=first.get("revision", plan.revision),
        device=first.get("device", config.runtime.device),
        answering=(began, answered_at),
        counts={"partitions": len(summaries)},
        # The JVM's start, apart from answering (the executors' model loads fall in answering).
        timings={"spark_start_seconds": round(session_ready - plan.started, 3)},
        details={"spark": _spark_figures(summaries)},
    )
    return commit(plan, answered, owner)


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


def _partition_stats(summaries: list[dict[str, Any]], accumulated: dict[str, Any]) -> EngineStats:
    """The job's counters: the accumulator's when they agree with the partitions' own, else theirs.

    A task that Spark ran twice (a retry, a speculative copy) adds to an accumulator twice; each
    partition's summary is its last attempt's, whose counters its footers hold.
    """
    partitions = EngineStats()
    for summary in summaries:
        partitions.add(EngineStats.from_state(json.loads(summary["counts"])))
    stats = EngineStats.from_state(accumulated)
    if stats.to_state() != partitions.to_state():
        logger.warning("the Spark accumulator counted a retried task twice: using the partitions' counters")
        return partitions
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `spark-submit pipelines/spark_job.py ...`; job errors exit with one line and code 2."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    return run_guarded("spark", lambda: run_spark(argv) and 0, debug)


if __name__ == "__main__":
    raise SystemExit(main())
