"""`docqa predict`: the in-process job, Parquet in, the output layout out, no Beam."""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from tqdm import tqdm

from qa_core import __version__
from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.evaluation.calibration import apply_model_calibration
from qa_core.io.read import count_rows, iter_rows, read_input_schema, resolve_inputs
from qa_core.io.schema import answer_schema, rejection_schema
from qa_core.io.storage import redact_url
from qa_core.io.write import OutputWriter, check_output, mark_completed, prepare_output
from qa_core.jobs.workers import WorkerJob, row_ranges, run_workers
from qa_core.runtime.loading import load_qa_model, load_tokenizer, resolve_device
from qa_core.runtime.torch_runner import TorchRunner

logger = logging.getLogger(__name__)


def run_info(
    config: QAConfig,
    *,
    model_id: str,
    revision: str,
    device: str,
    engine: str,
    inputs: list[str],
    counts: dict[str, Any],
    wall_seconds: float,
    answering: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The `_run.json` document shared by both engines.

    Args:
        config: The resolved config (stored whole, with its hash).
        model_id: The checkpoint's id or path.
        revision: Its revision (a content hash for a local directory).
        device: Where it ran.
        engine: `predict`, or `beam:<runner class>`.
        inputs: The input files (URLs redacted here).
        counts: The engine's counters.
        wall_seconds: The whole job's seconds.
        answering: Seconds from the job's start to the first and to the end of answering, when the
            engine knows them (`docqa predict`). Before it: reading the footers, loading the model (every
            worker's, or the device server's) and preparing the output; after it: closing the files and
            waiting for worker processes to exit. The timings then give start-up and the answering's own
            rate, which a longer input approaches (start-up is paid once per job: on a GPU with
            `--workers`, tens of seconds).
    """
    rows = counts.get("rows_read", 0)
    timings: dict[str, Any] = {
        "wall_seconds": round(wall_seconds, 3),
        "rows_per_second": round(rows / wall_seconds, 3) if wall_seconds > 0 else None,
    }
    if answering is not None:
        startup_seconds, answered_at = answering
        answer_seconds = answered_at - startup_seconds
        timings["startup_seconds"] = round(startup_seconds, 3)
        timings["answer_seconds"] = round(answer_seconds, 3)
        timings["answer_rows_per_second"] = round(rows / answer_seconds, 3) if answer_seconds > 0 else None
    return {
        "docqa_version": __version__,
        "engine": engine,
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "model": {
            "id": model_id,
            "revision": revision,
            "device": device,
            "dtype": config.model.dtype,
        },
        "inputs": [redact_url(f) for f in inputs],
        "counts": counts,
        "timings": timings,
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }


def predict(
    config: QAConfig,
    input_pattern: str,
    output_dir: str,
    *,
    overwrite: bool = False,
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
            workers, a worker's model load fails the job before any `COMPLETED`).
        ValueError: `workers` < 1, or a loaded `model` with `workers` > 1.
    """
    if workers is None:
        workers = config.runtime.workers
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and model is not None:
        raise ValueError("a loaded model cannot be shared with worker processes: pass workers=1")
    started = time.perf_counter()
    config = apply_model_calibration(config)
    files = resolve_inputs(input_pattern)
    schema = read_input_schema(files, config.input)
    check_output(output_dir, overwrite=overwrite)  # before the (slow) model load; changes nothing
    passthrough = [schema.field(c) for c in config.input.passthrough_columns]
    schemas = (
        answer_schema(schema.id_field.type, passthrough, config.decode.top_k),
        rejection_schema(schema.id_field.type, schema.fields),
    )
    # Footers only: gives the bar its ETA, and the workers their ranges.
    total = count_rows(files) if progress or workers > 1 else None
    with tqdm(desc="rows", unit="row", total=total, disable=not progress, file=sys.stderr) as bar:
        if workers > 1 and total:
            # Fail fast here, before the folder is touched and N processes start: no GPU, a missing or
            # unsafe checkpoint, no fast tokenizer (what the workers' loads would fail on).
            device = resolve_device(config.runtime)
            load_tokenizer(config.model)
            ranges = row_ranges(total, workers)
            shared = config.runtime.worker_models == "shared"
            if shared and device.type != "cuda":
                logger.warning(
                    "runtime.worker_models=shared on %s: one server process runs every worker's forwards, "
                    "which pays off on a GPU; on a CPU per_worker is as fast or faster",
                    device,
                )
            ran = _answer_in_workers(
                config,
                files,
                output_dir=output_dir,
                schemas=schemas,
                ranges=ranges,
                bar=bar,
                prepare=lambda: prepare_output(output_dir, overwrite=overwrite),
                shared=shared,
            )
        else:
            ran = _answer_here(
                config,
                files,
                output_dir=output_dir,
                schemas=schemas,
                overwrite=overwrite,
                model=model,
                bar=bar,
            )
    info = run_info(
        config,
        model_id=ran.model_id,
        revision=ran.revision,
        device=ran.device,
        engine="predict",
        inputs=files,
        counts=ran.stats.to_dict(),
        wall_seconds=time.perf_counter() - started,
        answering=(ran.answering[0] - started, ran.answering[1] - started),
    )
    if ran.writer is not None:
        ran.writer.close(info)
    else:
        mark_completed(output_dir, info)
    counts = info["counts"]
    logger.info(
        "rows %d: answered %d, rejected %d", counts["rows_read"], counts["answered"], counts["rejected"]
    )
    return info


@dataclass(frozen=True)
class _Ran:
    """What answering the rows produced: counters, the model, and the writer still to close (or None).

    `answering` holds the `time.perf_counter()` readings at which answering began (the model or models
    loaded, the output prepared) and ended (the last answer handed to the writer).
    """

    stats: EngineStats
    model_id: str
    revision: str
    device: str
    writer: OutputWriter | None
    answering: tuple[float, float]


def _answer_here(
    config: QAConfig,
    files: list[str],
    *,
    output_dir: str,
    schemas: tuple[pa.Schema, pa.Schema],
    overwrite: bool,
    model: TorchRunner | None,
    bar: tqdm[Any],
) -> _Ran:
    """All rows in this process, into part 0; the writer is left open for `_run.json`."""
    qa_model = model if model is not None else load_qa_model(config.model, config.runtime)
    writer = OutputWriter(output_dir, *schemas, config.decode.top_k, overwrite=overwrite)
    engine = QAEngine(qa_model, config)
    began = time.perf_counter()
    writer.write_all(engine.answer_rows(iter_rows(files, config.input)), bar.update)
    answering = (began, time.perf_counter())
    return _Ran(engine.stats, qa_model.model_id, qa_model.revision, str(qa_model.device), writer, answering)


def _answer_in_workers(
    config: QAConfig,
    files: list[str],
    *,
    output_dir: str,
    schemas: tuple[pa.Schema, pa.Schema],
    ranges: list[tuple[int, int]],
    bar: tqdm[Any],
    prepare: Callable[[], None],
    shared: bool,
) -> _Ran:
    """Rows split over worker processes (`qa_core.jobs.workers`), one part file pair each.

    With `shared`, one device server process runs every worker's forwards (`qa_core.runtime.device_server`).
    """
    threads = max(1, torch.get_num_threads() // len(ranges))
    jobs = [
        WorkerJob(
            part,
            files,
            start,
            stop,
            output_dir,
            *schemas,
            threads,
            log_level=logging.getLogger().level,
            system_arrow_pool=pa.default_memory_pool().backend_name == "system",
        )
        for part, (start, stop) in enumerate(ranges)
    ]
    logger.info(
        "answering %d rows in %d worker processes, %d threads each, %s",
        ranges[-1][1],
        len(jobs),
        threads,
        "one shared model (device server)" if shared else "a model each",
    )
    marks: list[float] = []  # when answering began (every process loaded) and ended (all done)

    def prepare_and_mark() -> None:  # run_workers calls it once every process has loaded
        prepare()
        marks.append(time.perf_counter())

    results = run_workers(
        config,
        jobs,
        bar.update,
        prepare_and_mark,
        shared=shared,
        on_finished=lambda: marks.append(time.perf_counter()),
    )
    stats = EngineStats()
    for result in results:
        stats.add(result.stats)
    first = results[0]
    return _Ran(stats, first.model_id, first.revision, first.device, None, (marks[0], marks[1]))
