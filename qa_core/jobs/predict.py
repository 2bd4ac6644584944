"""`docqa predict`: the in-process job, Parquet in, the output layout out, no Beam.

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

import pyarrow as pa
import torch
from tqdm import tqdm

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.errors import OutputError
from qa_core.evaluation.calibration import apply_model_calibration
from qa_core.io.ownership import claim_output, read_job_file, verify_output_rows
from qa_core.io.read import file_row_counts, output_schemas, read_input_schema, resolve_inputs
from qa_core.io.run_info import run_info
from qa_core.io.write import check_output, mark_completed, prepare_output
from qa_core.jobs.parts import (
    Kept,
    PartRange,
    answer_parts,
    job_plan,
    part_writers,
    plan_parts,
    remove_unfinished,
    resumable_parts,
)
from qa_core.jobs.workers import WorkerJob, run_workers
from qa_core.runtime.cpu import check_cpu_dtype, torch_threads
from qa_core.runtime.fit import check_config_fits_model
from qa_core.runtime.loading import describe_model, load_qa_model, read_model_limits, resolve_device
from qa_core.runtime.torch_runner import TorchRunner
from qa_core.tools.tune import probe_for_job

logger = logging.getLogger(__name__)


def predict(
    config: QAConfig,
    input_pattern: str,
    output_dir: str,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    model: TorchRunner | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Answers every row of the input Parquet files and writes the output layout.

    Args:
        config: The resolved config.
        input_pattern: A Parquet file, directory or glob (local or fsspec URL).
        output_dir: Output folder (local or fsspec URL).
        overwrite: Replace an existing output.
        resume: Keep the parts that an earlier, unfinished run of the same job (same config, model and
            inputs: `_job.json`) wrote, and answer only the rest; a folder without a run starts afresh.
        progress: Show a progress bar with rows/s on stderr.
        model: An already loaded model (tests, benchmarks); loaded from `config.model` when None.
        workers: Processes answering contiguous row ranges (`qa_core.jobs.workers`; for a GPU that one
            process's host work leaves idle), each with its own model copy or all served by one device
            server process (`runtime.worker_models`). 1: in this process. None (the default):
            `config.runtime.workers`.

    Returns:
        The `_run.json` document.

    Raises:
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
    if resume and overwrite:
        raise OutputError("--resume keeps an earlier run's parts and --overwrite removes them: pass one")
    started = time.perf_counter()
    config = apply_model_calibration(config)
    files = resolve_inputs(input_pattern)
    schemas = output_schemas(read_input_schema(files, config.input), config)
    stored = read_job_file(output_dir) if resume else None
    # Before the (slow) model load, changing nothing: an existing run needs --overwrite (or --resume).
    check_output(output_dir, overwrite=overwrite or resume)
    rows = file_row_counts(files)  # footers only: the parts, the bar's total
    worker_parts = plan_parts(sum(rows), workers, config.output.part_rows)
    parts = [part for plan in worker_parts for part in plan]
    revision = model.revision if model else describe_model(config.model)
    # Shapes are tuned per thread count: probe and plan with the threads the answering runs with.
    threads = max(1, torch.get_num_threads() // len(worker_parts)) if len(worker_parts) > 1 else None
    with torch_threads(threads or torch.get_num_threads()):
        # A large untuned job finds this machine's batch shape before it is planned (and recorded).
        probed = probe_for_job(
            config,
            sum(rows),
            revision,
            model.device if model else resolve_device(config.runtime),
            lambda: model or load_qa_model(config.model, config.runtime),
        )
        plan = job_plan(config, revision, files, rows, parts)
    if model is None and threads is None:
        model = probed  # answer here with the model the probe loaded
    del probed  # workers load their own: the probe's copy is not kept
    kept = resumable_parts(output_dir, stored, plan, parts) if resume else Kept()
    todo = [[part for part in plan if part.index not in kept.indices] for plan in worker_parts]
    todo = [plan for plan in todo if plan]
    if resume:
        logger.info(
            "resuming %s: keeping %d of %d parts (%d rows)",
            output_dir,
            len(kept.indices),
            len(parts),
            kept.stats.rows,
        )

    def prepare() -> str:  # once the model (or every worker's) has loaded: an earlier output stays intact
        if stored is None:
            return prepare_output(output_dir, overwrite=overwrite, plan=plan)
        owner = claim_output(output_dir, plan)
        remove_unfinished(output_dir, kept.indices)
        return owner

    total = sum(rows) - kept.stats.rows
    with tqdm(desc="rows", unit="row", total=total, disable=not progress, file=sys.stderr) as bar:
        job = _Job(config, files, output_dir, schemas, prepare)
        if len(todo) > 1:
            ran = _answer_in_workers(job, todo, bar, threads or 1)
        else:
            ran = _answer_here(job, todo[0] if todo else [], model, bar)
    counts = _checked_counts(output_dir, ran.stats, kept, sum(rows), len(parts))
    info = run_info(
        config,
        model_id=ran.model_id,
        revision=ran.revision,
        device=ran.device,
        engine="predict",
        inputs=files,
        counts=counts,
        wall_seconds=time.perf_counter() - started,
        answering=(ran.answering[0] - started, ran.answering[1] - started),
        answered_rows=total if resume else None,
        batch_shape=ran.batch_shape,
    )
    mark_completed(output_dir, info, owner=ran.owner)
    logger.info(
        "rows %d: answered %d, rejected %d", counts["rows_read"], counts["answered"], counts["rejected"]
    )
    return info


def _checked_counts(
    output_dir: str, stats: EngineStats, kept: Kept, rows_read: int, parts: int
) -> dict[str, Any]:
    """The `counts` of `_run.json`: this run's and the kept parts' counters, once the output footers agree.

    The kept parts' counters come from their footers, so a resumed run reports what a clean run would
    (`model_seconds` then includes the earlier attempt's).

    Raises:
        OutputError: When the footers hold other numbers of answers and rejections than the job wrote.
    """
    answered, rejected = verify_output_rows(output_dir, rows_read)
    total = EngineStats()
    total.add(stats)
    total.add(kept.stats)
    if (answered, rejected, rows_read) != (total.answered, sum(total.rejected.values()), total.rows):
        raise OutputError(
            f"{output_dir} holds {answered} answers and {rejected} rejections, but this job wrote "
            f"{total.answered} and {sum(total.rejected.values())}; another job may write to it: the run "
            "is not marked COMPLETED"
        )
    counts = total.to_dict()
    counts.update(parts=parts, reused_parts=len(kept.indices), reused_rows=kept.stats.rows)
    return counts


def _worker_checks(config: QAConfig) -> None:
    """Fails fast on what the workers' model loads would fail on, before N processes start.

    No GPU, a missing or unsafe checkpoint, a tokenizer that is not the model's, windows beyond its
    positions, a dtype this CPU runs slowly.
    """
    device = resolve_device(config.runtime)
    check_config_fits_model(config, read_model_limits(config.model))  # loads and checks the tokenizer
    if device.type == "cpu":
        check_cpu_dtype(config.model.dtype)
    if config.runtime.worker_models == "shared" and device.type != "cuda":
        logger.warning(
            "runtime.worker_models=shared on %s: one server process runs every worker's forwards, which "
            "pays off on a GPU; on a CPU per_worker is as fast or faster",
            device,
        )


@dataclass(frozen=True)
class _Job:
    """What both ways of answering need: the config, inputs, output and its preparation (owner token)."""

    config: QAConfig
    files: list[str]
    output_dir: str
    schemas: tuple[pa.Schema, pa.Schema]
    prepare: Callable[[], str]


@dataclass(frozen=True)
class _Ran:
    """What answering the rows produced: counters, the model, and the job's owner token.

    `answering` holds the `time.perf_counter()` readings at which answering began (the model or models
    loaded, the output prepared) and ended (the last answer handed to the writer).
    """

    stats: EngineStats
    model_id: str
    revision: str
    device: str
    owner: str
    answering: tuple[float, float]
    batch_shape: dict[str, Any]


def _answer_here(job: _Job, parts: list[PartRange], model: TorchRunner | None, bar: tqdm[Any]) -> _Ran:
    """The parts in this process, after loading the model and preparing the folder."""
    config = job.config
    qa_model = model if model is not None else load_qa_model(config.model, config.runtime)
    engine = QAEngine(qa_model, config)  # checks the config against the model: before the folder is touched
    owner = job.prepare()
    began = time.perf_counter()
    writers = part_writers(config, job.output_dir, job.schemas, owner)
    answer_parts(engine, job.files, parts, writers, bar.update)
    answering = (began, time.perf_counter())
    device = str(qa_model.device)
    shape = engine.batch_shape.to_dict()
    return _Ran(engine.stats, qa_model.model_id, qa_model.revision, device, owner, answering, shape)


def _answer_in_workers(job: _Job, worker_parts: list[list[PartRange]], bar: tqdm[Any], threads: int) -> _Ran:
    """The parts split over worker processes (`qa_core.jobs.workers`), `threads` torch threads each.

    With `runtime.worker_models: shared`, one device server process runs every worker's forwards
    (`qa_core.runtime.device_server`).
    """
    config = job.config
    _worker_checks(config)
    shared = config.runtime.worker_models == "shared"
    worker_jobs = [
        WorkerJob(
            worker,
            job.files,
            tuple(parts),
            job.output_dir,
            *job.schemas,
            threads,
            log_level=logging.getLogger().level,
            system_arrow_pool=pa.default_memory_pool().backend_name == "system",
        )
        for worker, parts in enumerate(worker_parts)
    ]
    logger.info(
        "answering %d rows in %d worker processes, %d threads each, %s",
        sum(part.rows for parts in worker_parts for part in parts),
        len(worker_jobs),
        threads,
        "one shared model (device server)" if shared else "a model each",
    )
    marks: list[float] = []  # when answering began (every process loaded) and ended (all done)
    owners: list[str] = []

    def prepare_and_mark() -> str:  # run_workers calls it once every process has loaded
        owners.append(job.prepare())
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
    answering = (marks[0], marks[1])
    return _Ran(stats, first.model_id, first.revision, first.device, owners[0], answering, first.batch_shape)
