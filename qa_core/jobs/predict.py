"""`docqa predict`: the in-process job, Parquet in, the output layout out, no Beam."""

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
from qa_core.evaluation.calibration import apply_model_calibration
from qa_core.io.read import count_rows, iter_rows, output_schemas, read_input_schema, resolve_inputs
from qa_core.io.run_info import run_info
from qa_core.io.write import OutputWriter, check_output, mark_completed, prepare_output
from qa_core.jobs.workers import WorkerJob, row_ranges, run_workers
from qa_core.runtime.loading import load_qa_model, load_tokenizer, resolve_device
from qa_core.runtime.torch_runner import TorchRunner

logger = logging.getLogger(__name__)


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
    if workers is None:  # a loaded model runs here, in one process
        workers = config.runtime.workers if model is None else 1
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and model is not None:
        raise ValueError("a loaded model cannot be shared with worker processes: pass workers=1")
    started = time.perf_counter()
    config = apply_model_calibration(config)
    files = resolve_inputs(input_pattern)
    schemas = output_schemas(read_input_schema(files, config.input), config)
    check_output(output_dir, overwrite=overwrite)  # before the (slow) model load; changes nothing
    # Footers only: gives the bar its ETA, and the workers their ranges.
    total = count_rows(files) if progress or workers > 1 else None
    with tqdm(desc="rows", unit="row", total=total, disable=not progress, file=sys.stderr) as bar:
        if workers > 1 and total:
            ran = _answer_in_workers(
                config,
                files,
                output_dir=output_dir,
                schemas=schemas,
                ranges=_worker_ranges(config, total, workers),
                bar=bar,
                prepare=lambda: prepare_output(output_dir, overwrite=overwrite),
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


def _worker_ranges(config: QAConfig, total: int, workers: int) -> list[tuple[int, int]]:
    """The workers' row ranges, after failing fast on what their model loads would fail on.

    Checked here, before the output folder is touched and N processes start: no GPU, a missing or unsafe
    checkpoint, no fast tokenizer.
    """
    device = resolve_device(config.runtime)
    load_tokenizer(config.model)
    if config.runtime.worker_models == "shared" and device.type != "cuda":
        logger.warning(
            "runtime.worker_models=shared on %s: one server process runs every worker's forwards, which "
            "pays off on a GPU; on a CPU per_worker is as fast or faster",
            device,
        )
    return row_ranges(total, workers)


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
) -> _Ran:
    """Rows split over worker processes (`qa_core.jobs.workers`), one part file pair each.

    With `runtime.worker_models: shared`, one device server process runs every worker's forwards
    (`qa_core.runtime.device_server`).
    """
    shared = config.runtime.worker_models == "shared"
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
