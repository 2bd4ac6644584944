"""`docqa predict`: the in-process job, Parquet in, the output layout out, no Beam.

The input is one table, or two (documents and questions: their pairs are the rows, `qa_core.io.pairs`).
The rows are planned as parts (`qa_core.jobs.parts`), answered here or by worker processes, and the job
ends by checking that it still owns the folder and that the output footers add up to the rows read
before it writes `COMPLETED`. `--resume` keeps the parts an earlier attempt of the same job finished.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.io.spec import input_spec
from qa_core.jobs.lifecycle import Answered, AnsweringSite, JobPlan, JobRequest, commit, preflight
from qa_core.jobs.parts import PartRange, answer_parts, part_writers, plan_parts
from qa_core.jobs.resume import parted_output
from qa_core.jobs.workers import WorkerJob, run_workers
from qa_core.runtime import host_tuning
from qa_core.runtime.loaders import load_runner, resolve_device
from qa_core.runtime.runner import ModelRunner

logger = logging.getLogger(__name__)


def predict(
    config: QAConfig,
    input_pattern: str | None,
    output_dir: str,
    *,
    documents: str | None = None,
    questions: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    model: ModelRunner | None = None,
    workers: int | None = None,
    tune_host: bool = False,
) -> dict[str, Any]:
    """Answers every row of the input Parquet files and writes the output layout.

    The job's checks and its ending are the lifecycle's (`qa_core.jobs.lifecycle`); this function
    plans the parts and answers them here or in worker processes.

    Args:
        config: The resolved config.
        input_pattern: A Parquet file, directory or glob (local or fsspec URL); None for two tables.
        output_dir: Output folder (local or fsspec URL).
        documents: Two tables: the documents (`input.doc_id_column`, the context and any pass-through
            columns), a Parquet file, directory or glob; with `questions`, instead of `input_pattern`.
        questions: Two tables: the questions (`input.question_id_column`, the question, optionally a
            doc_id: asked of that document only, else of every document). Each pair is a row, its id
            `doc_id/question_id` (`qa_core.io.pairs_plan`).
        overwrite: Replace an existing output.
        resume: Keep the parts that an earlier, unfinished run of the same job (same config, model and
            inputs: `_job.json`) wrote, and answer only the rest; a folder without a run starts afresh.
        progress: Show a progress bar with rows/s on stderr.
        model: An already loaded model (tests, benchmarks); loaded from `config.model` when None.
        workers: Processes answering contiguous row ranges (`qa_core.jobs.workers`; for a GPU that one
            process's host work leaves idle), each with its own model copy or all served by one device
            server process (`runtime.worker_models`). 1: in this process. None (the default):
            `config.runtime.workers`.
        tune_host: Tune this process and the workers for a long job (`qa_core.runtime.host_tuning`);
            the command line passes `runtime.host_tuning`, the Python API leaves its caller's process
            alone unless asked.

    Returns:
        The `_run.json` document.

    Raises:
        ConfigError: Both an input and two tables, or neither, or one of the two tables alone.
        InputError, OutputError, ModelLoadError: Job-level problems, before any row is processed (with
            workers, a worker's model load fails the job before any `COMPLETED`); OutputError also when
            a resume finds another job's output, another job took the folder over, or the output
            footers do not add up to the rows read.
        ValueError: `workers` < 1, or a loaded `model` with `workers` > 1.
    """
    if workers is None:  # a loaded model runs here, in one process
        workers = config.runtime.workers if model is None else 1
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and model is not None:
        raise ValueError("a loaded model cannot be shared with worker processes: pass workers=1")
    inputs = input_spec(input_pattern, documents, questions)
    request = JobRequest(inputs, output_dir, overwrite=overwrite, resume=resume)
    if tune_host:
        host_tuning.tune_host()  # before any model loads: oneDNN reads its cache caps at the first primitive
    loaded: list[ModelRunner] = [model] if model is not None else []

    def load() -> ModelRunner:  # the probe's model, kept for answering here
        if not loaded:
            loaded.append(load_runner(config.model, config.runtime))
        return loaded[0]

    plan = preflight(config, request, AnsweringSite("predict", True, workers), model=model, load=load)
    worker_parts = plan_parts(plan.rows_read, workers, plan.config.output.part_rows, plan.source.boundary)
    parted = parted_output(plan, [part for ranges in worker_parts for part in ranges], resume=resume)
    todo = [ranges for ranges in (parted.pending(r) for r in worker_parts) if ranges]

    def prepare() -> str:  # once the model (or every worker's) has loaded: an earlier output stays intact
        return parted.prepare(plan)

    kept = parted.kept
    total = plan.rows_read - kept.stats.rows
    with tqdm(desc="rows", unit="row", total=total, disable=not progress, file=sys.stderr) as bar:
        if len(todo) > 1:
            loaded.clear()  # the workers load their own: the probe's copy is not kept
            ran = _answer_in_workers(plan, todo, bar, prepare, tune_host=tune_host)
        else:
            runner = host_tuning.trimming(load()) if tune_host else load()
            ran = _answer_here(plan, todo[0] if todo else [], runner, bar, prepare)
    stats = EngineStats()
    stats.add(ran.stats)
    stats.add(kept.stats)  # their footers' counters: a resumed run reports what a clean run would
    answered = Answered(
        "predict",
        stats,
        exact=True,
        model_id=ran.model_id,
        revision=ran.revision,
        device=ran.device,
        answering=ran.answering,
        answered_rows=total if resume else None,
        counts=parted.counts(),
        details={"host_tuning": ran.host_tuning},
    )
    return commit(plan, answered, ran.owner)


def _worker_checks(config: QAConfig) -> None:
    """Warns where the workers' sharing of one model would not pay off (the model is checked already)."""
    device = resolve_device(config.runtime)
    if config.runtime.worker_models == "shared" and device.type != "cuda":
        logger.warning(
            "runtime.worker_models=shared on %s: one server process runs every worker's forwards, which "
            "pays off on a GPU; on a CPU per_worker is as fast or faster",
            device,
        )


@dataclass(frozen=True)
class _Ran:
    """What answering the rows produced: counters, the model, and the job's owner token.

    `answering` holds the `time.perf_counter()` readings at which answering began (the model or models
    loaded, the output prepared) and ended (the last answer handed to the writer); `host_tuning` what
    the answering processes tuned (`runtime.host_tuning.tuning_report`, their heap trims summed), or
    None when they were left as they started.
    """

    stats: EngineStats
    model_id: str
    revision: str
    device: str
    owner: str
    answering: tuple[float, float]
    host_tuning: dict[str, Any] | None


def _answer_here(
    plan: JobPlan, parts: list[PartRange], runner: ModelRunner, bar: tqdm[Any], prepare: Callable[[], str]
) -> _Ran:
    """The parts in this process, with the loaded model, once the folder is prepared."""
    config = plan.answer_config
    engine = QAEngine(runner, config)  # checks the config against the model: before the folder is touched
    owner = prepare()
    began = time.perf_counter()
    writers = part_writers(config, plan.output_dir, plan.schemas, owner, plan.config.config_hash())
    answer_parts(engine, plan.source, parts, writers, bar.update)
    answering = (began, time.perf_counter())
    device = str(runner.device)
    tuned = host_tuning.tuning_report()
    return _Ran(engine.stats, runner.model_id, runner.revision, device, owner, answering, tuned)


def _answer_in_workers(
    plan: JobPlan,
    worker_parts: list[list[PartRange]],
    bar: tqdm[Any],
    prepare: Callable[[], str],
    *,
    tune_host: bool,
) -> _Ran:
    """The parts split over worker processes (`qa_core.jobs.workers`), `plan.threads` torch threads each.

    With `runtime.worker_models: shared`, one device server process runs every worker's forwards
    (`qa_core.runtime.device_server`). With `tune_host`, each process tunes itself (`runtime.host_tuning`).
    """
    config = plan.answer_config
    _worker_checks(config)
    shared = config.runtime.worker_models == "shared"
    worker_jobs = [
        WorkerJob(
            worker,
            plan.source,
            tuple(parts),
            plan.output_dir,
            *plan.schemas,
            plan.threads,
            plan.config.config_hash(),
            log_level=logging.getLogger().level,
            host_tuning=tune_host,
        )
        for worker, parts in enumerate(worker_parts)
    ]
    logger.info(
        "answering %d rows in %d worker processes, %d threads each, %s",
        sum(part.rows for parts in worker_parts for part in parts),
        len(worker_jobs),
        plan.threads,
        "one shared model (device server)" if shared else "a model each",
    )
    marks: list[float] = []  # when answering began (every process loaded) and ended (all done)
    owners: list[str] = []

    def prepare_and_mark() -> str:  # run_workers calls it once every process has loaded
        owners.append(prepare())
        marks.append(time.perf_counter())
        return owners[0]

    results = run_workers(
        config,
        worker_jobs,
        bar.update,
        prepare_and_mark,
        shared=shared,
        on_finished=lambda: marks.append(time.perf_counter()),
    )
    stats = EngineStats()
    for result in results:
        stats.add(result.stats)
    first = results[0]
    tuned = first.host_tuning
    if tuned is not None:
        tuned = {**tuned, "heap_trims": sum((r.host_tuning or {}).get("heap_trims", 0) for r in results)}
    answering = (marks[0], marks[1])
    return _Ran(stats, first.model_id, first.revision, first.device, owners[0], answering, tuned)
