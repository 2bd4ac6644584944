"""`docqa spark` / `spark-submit pipelines/spark_job.py`: the native PySpark job over the same engine.

    preflight -> Spark session -> executor probe (`spark_probe`: docqa and the model on the executors)
    -> units planned by rows (`plan_units`: cores = sparkContext.defaultParallelism once the probe's
    executors registered, at least 2 units per core, at most output.task_rows rows each, each beginning
    where the input allows: a two-table job's at a document's first row) -> `--resume`: the units an
    earlier attempt finished are kept -> a two-table job's input (it holds the questions) broadcast
    -> sc.parallelize(pending, len(pending)).mapPartitions(answer_units): one task per unit, which reads
    its row range through the job's `InputSource` and writes answers/part-K, rejections/part-K -> one
    summary per unit -> footers checked -> _run.json, COMPLETED -> the broadcast destroyed

Spark sizes its own file splits by bytes and never below a Parquet row group, so a small or
one-row-group input would run as one task on one executor, and a retry would repeat all of it. Units
sized by rows give every executor work, let a free executor take the next unit, and keep what a retry
or a speculative copy repeats to one unit; part K is always rows `[start, stop)` of the input, which is
what `--resume` (`qa_core.jobs.resume`, shared with `docqa predict`) keeps.

A two-table job (`--documents DOCS --questions QS`) is planned on the driver as `docqa predict`'s is
(`qa_core.io.pairs`: the questions read whole, at most `input.max_questions` of them, and the join planned
from the keys). That plan is the small side, and every task needs it whole: it goes to the executors as
one Spark broadcast (`sc.broadcast`, fetched once per executor and read through `.value`), not inside
every task's closure; `_run.json` `two_table.join` says `broadcast`. Questions beyond
`input.max_questions` are planned from their keys alone and each is shuffled to the unit of its document
(`pipelines.spark_keyed`: a `cogroup` by doc_id, a `partitionBy` unit; "keyed join"); the documents
stay where their unit's task reads them.

The driver runs the job's lifecycle (`qa_core.jobs.lifecycle`), as `docqa predict` and `docqa run` do:
its checks before Spark starts (inputs and their columns, the output folder, the model against the
config when the model is on this machine, the batch shape), the folder prepared with an owner token (or
claimed by `--resume`), and `_run.json` and `COMPLETED` only once the output footers add up to the rows
read and to the units' own counts. The tables are written by the executors with `qa_core`'s writer and
schemas, so they are exactly `docqa predict`'s (Spark's own Parquet writer would change types and
nullability). A failed task or stage is one `PipelineError` line naming the cause, and no `COMPLETED`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from pipelines.failures import PipelineError, summarize_failure
from pipelines.options import SPARK_DESCRIPTION, add_spark_arguments
from pipelines.spark_keyed import routed_questions
from pipelines.spark_partition import StatsAccumulator, UnitJob, answer_joined_unit, answer_units
from pipelines.spark_probe import executor_pythons, probe_executors
from qa_core.config import config_from_arguments
from qa_core.engine.stats import EngineStats
from qa_core.errors import ConfigError, JobError
from qa_core.io.joins import Joins
from qa_core.io.pairs import PairsSource
from qa_core.io.sources import InputSource, TableSource
from qa_core.io.spec import input_of_arguments
from qa_core.jobs.guard import run_guarded
from qa_core.jobs.lifecycle import Answered, AnsweringSite, JobRequest, commit, preflight
from qa_core.jobs.parts import PartRange, plan_units
from qa_core.jobs.resume import parted_output
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
        JobError: The executors' Python cannot import docqa or read the model (the probe).
        OutputError: An unusable output folder (or one `--resume` cannot continue), or footers that do
            not add up to the rows read.
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
        joins=SPARK_JOINS,
    )
    request = JobRequest(input_of_arguments(args), args.output, overwrite=args.overwrite, resume=args.resume)
    plan = preflight(config, request, site, load=lambda: load_runner(config.model, config.runtime))
    session, created = _start_session(master, settings, packed_env=args.packed_env is not None)
    session_ready = time.perf_counter()
    shared: Any = None  # the two-table input's broadcast
    try:
        context = session.sparkContext
        # Before any row is read or the folder is touched; on local[N] too (its Python workers run this
        # interpreter, so it passes, and the worker it starts is reused by the first units).
        probed = probe_executors(context, plan.config.model, max(2, context.defaultParallelism))
        # The probe's tasks waited for executors to register: the task slots they offer now size the
        # units (an executor that registers later still takes units: there are two per slot at least).
        cores = context.defaultParallelism
        task_rows = plan.config.output.task_rows
        units = plan_units(plan.rows_read, cores, task_rows, plan.source.boundary)
        parted = parted_output(plan, units, resume=args.resume, adopt_stored_parts=True)
        owner = parted.prepare(plan)
        accumulator = context.accumulator(EngineStats().to_state(), StatsAccumulator())
        pending = parted.pending()
        shared = share_source(context, plan.source) if pending else None
        job = UnitJob(
            plan.answer_config,
            args.output,
            *plan.schemas,
            owner,
            plan.config.config_hash(),
            accumulator,
            source=plan.source if shared is None else None,
            shared_source=shared,
        )
        began = time.perf_counter()
        summaries = _answer(context, pending, job) if pending else []
        answered_at = time.perf_counter()
        master_url = context.master
        stats = _unit_stats(summaries, accumulator.value)
    finally:
        if shared is not None:
            _destroy(shared)
        if created:
            session.stop()
    stats.add(parted.kept.stats)  # their footers' counters: a resumed run reports what a clean run would
    first = summaries[0] if summaries else {}
    figures = _spark_figures(summaries)
    figures.update(
        plan={"cores": cores, "task_rows": task_rows, "units": len(parted.parts)},
        executor_python=executor_pythons(probed),
    )
    answered = Answered(
        f"spark:{master_url}",
        stats,
        exact=True,  # each unit's last attempt, once
        model_id=first.get("model_id", config.model.name_or_path),
        revision=first.get("revision", plan.revision),
        device=first.get("device", config.runtime.device),
        answering=(began, answered_at),
        answered_rows=plan.rows_read - parted.kept.stats.rows if args.resume else None,
        counts={"partitions": len(parted.parts), **parted.counts()},
        # The JVM's start, apart from answering (the executors' model loads fall in answering).
        timings={"spark_start_seconds": round(session_ready - plan.started, 3)},
        details={"spark": figures},
    )
    return commit(plan, answered, owner)


SPARK_JOINS = Joins(held="broadcast", keyed="keyed join")
"""How `docqa spark` joins two tables (`_run.json` `two_table.join`): the questions broadcast, or when they
are more than `input.max_questions`, each shuffled to its document's unit (`pipelines.spark_keyed`)."""


def share_source(context: Any, source: InputSource) -> Any:
    """The broadcast of a two-table job's input, or None for one table (pickled with each task instead).

    A two-table source holds the questions and the join's plan (up to `input.max_questions` questions and
    a key per document): broadcast, it is sent once per executor and kept there for every task, where a
    task's closure would carry it to every task. One table's source is its file names and row counts.

    Args:
        context: The job's SparkContext.
        source: The job's input (`JobPlan.source`).
    """
    if isinstance(source, TableSource):
        return None
    return context.broadcast(source)


def _destroy(shared: Any) -> None:
    """Removes a broadcast from the executors and the driver once the job's tasks ended.

    A failure to remove it is logged, not raised: the job's outcome is already decided, and the session's
    end removes what is left.
    """
    try:
        shared.destroy()
    except Exception as err:  # py4j errors have no common type
        logger.warning("could not remove the input's broadcast: %s", summarize_failure(err))


def _answer(context: Any, units: list[PartRange], job: UnitJob) -> list[dict[str, Any]]:
    """Runs the job's one Spark stage, one task per unit; returns one summary per unit (its last attempt).

    Raises:
        PipelineError: When Spark fails the job.
    """
    try:
        # A list of N items in N slices: PySpark batches one item per slice, so each task gets one unit.
        source = job.input_source()
        if isinstance(source, PairsSource) and source.keyed is not None:
            # Each question shuffled to its document's unit: partition k answers units[k].
            routed = routed_questions(context, job.shared_source, units)
            rows = routed.mapPartitionsWithIndex(functools.partial(answer_joined_unit, job, units)).collect()
        else:
            tasks = context.parallelize(units, len(units))
            rows = tasks.mapPartitions(functools.partial(answer_units, job)).collect()
    except Exception as err:  # Py4JJavaError, PythonException: no common type
        raise PipelineError(
            f"the Spark job failed: {summarize_failure(err)}; {job.output_dir} is not marked COMPLETED "
            "(fix the cause, then rerun with --resume or --overwrite)"
        ) from err
    latest: dict[int, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["unit"], r["attempt"])):
        latest[row["unit"]] = row
    return [latest[k] for k in sorted(latest)]


def _spark_figures(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """How the units ran: per executor, its tasks and rows; the Python workers and their model loads.

    Each unit counts once, with its last attempt; a process's model loads count once each.
    """
    loads: dict[int, int] = {}
    executors: dict[str, dict[str, int]] = {}
    retried = 0  # units whose output came from a retry or a speculative copy (attempt > 0)
    for summary in summaries:
        retried += summary["attempt"] > 0
        # A process's count only grows: its largest is its total.
        loads[summary["pid"]] = max(loads.get(summary["pid"], 0), summary["model_loads"])
        ran = executors.setdefault(summary["executor"], {"tasks": 0, "rows": 0})
        ran["tasks"] += 1
        ran["rows"] += summary["rows"]
    return {
        "executors": dict(sorted(executors.items())),
        "retried_units": retried,
        "python_workers": len(loads),
        "model_loads": sum(loads.values()),
    }


def _unit_stats(summaries: list[dict[str, Any]], accumulated: dict[str, Any]) -> EngineStats:
    """The counters of the units answered: the accumulator's when they agree with the units' own, else theirs.

    A task that Spark ran twice (a retry, a speculative copy) adds to an accumulator twice; each
    unit's summary is its last attempt's, whose counters its footers hold.
    """
    units = EngineStats()
    for summary in summaries:
        units.add(EngineStats.from_state(summary["counts"]))
    stats = EngineStats.from_state(accumulated)
    if stats.to_state() != units.to_state():
        logger.warning("the Spark accumulator counted a retried task twice: using the units' counters")
        return units
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `spark-submit pipelines/spark_job.py ...`; job errors exit with one line and code 2."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    return run_guarded("spark", lambda: run_spark(argv) and 0, debug)


if __name__ == "__main__":
    raise SystemExit(main())
