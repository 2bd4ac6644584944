"""`docqa bench`'s modes: one runner per mode, each timing its engine on the same rows and model.

`RUNNERS` maps a mode to `runner(model, config, rows, workdir) -> figures` (seconds and token counts);
`bench_predict_workers` and `bench_spark` take no model, since their workers load their own. The
figures go to `docqa.bench_table`; `docqa.bench` picks the mode and runs each in its own process.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from docqa.bench_host import bench_host
from qa_core.config import QAConfig
from qa_core.engine.assembly import assemble_row
from qa_core.engine.contained import run_batch_contained
from qa_core.engine.host import RowPreparer
from qa_core.errors import JobError
from qa_core.records import Feature, RowWindows
from qa_core.runtime.loaders import load_runner
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.torch_runner import TorchRunner
from qa_core.stages.batch import collate, plan_batches


class BenchError(JobError, RuntimeError):
    """A bench mode failed in its child process; the message holds the end of its stderr."""


def _windows(model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]]) -> list[Feature]:
    """Every window of the rows, from the engine's host half (validate, featurize)."""
    prepared = RowPreparer(model.tokenizer, config).prepare_chunks(rows)
    return [f for chunk in prepared for item in chunk if isinstance(item, RowWindows) for f in item.windows]


def _warm_up(model: ModelRunner, windows: list[Feature]) -> None:
    model.forward(collate(windows[:4], model.pad_token_id, 8))


def _full_warm_up(model: ModelRunner) -> bool:
    """Whether a mode runs once untimed over all its rows before the timed run.

    On CUDA the first batch of each new (B, P) shape pays one-time costs (kernel selection, attention
    plan building, allocator growth) that a long job amortizes; measured on an H200, they made the bf16
    forward bound 10x slower than fp32 on 2,000 rows. The same rows run twice, the second timed, is the
    steady state of a long job. On a CPU these costs are negligible and a second pass would double the
    bench's time.
    """
    return model.device.type == "cuda"


def bench_seed(
    model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    """One question at a time, its windows in one batch padded to their own longest."""
    preparer = RowPreparer(model.tokenizer, config)

    def one_at_a_time() -> dict[str, Any]:
        real = padded = 0
        started = time.perf_counter()
        for position, row in enumerate(rows):
            (item,) = preparer.prepare([row], position)
            if not isinstance(item, RowWindows):
                continue
            batch = collate(item.windows, model.pad_token_id, 1)  # the seed pads to the question's longest
            candidates, failures = run_batch_contained(model, batch, config)
            assemble_row(item.record, candidates, [error for _, error in failures], config.decode)
            real, padded = real + batch.real_tokens, padded + batch.padded_tokens
        return {"seconds": time.perf_counter() - started, "real_tokens": real, "padded_tokens": padded}

    _warm_up(model, _windows(model, config, rows[:4]))
    if _full_warm_up(model):
        one_at_a_time()
    return one_at_a_time()


# Window caps the bound also tries beside the job's own (its tokens cap then allows that many full windows):
# the bound is the fastest of them, the job runs the shape it chose (`qa_core.runtime.shapes`).
BOUND_WINDOW_CAPS = (8, 16, 32)
BOUND_SLICES = 8  # slices of the sorted windows, each timed at every shape before the next


def bench_bound(
    model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    """Forward only over length-sorted, pre-tokenized, pre-padded batches, at the best of a few shapes.

    The figure is the fastest of the job's shape and `BOUND_WINDOW_CAPS`, so a job's ratio to it says
    how close its chosen shape comes. The shapes are timed interleaved: each shape's batches (planned
    over all windows, as a job plans them) are cut into `BOUND_SLICES` runs by where they start in the
    length-sorted windows, and each run is timed at every shape in a fresh random order before the
    next, so a shared machine's drift over the minutes of a run falls on every shape alike (timed one
    shape after the other, the fastest shape moved from run to run by more than the shapes differ).
    """
    windows = sorted(_windows(model, config, rows), key=lambda f: (f.length, f.row_key, f.window_index))
    chosen = (config.batch.windows_cap, config.batch.tokens_cap)
    shapes = [chosen, *((w, w * config.featurize.max_seq_len) for w in BOUND_WINDOW_CAPS)]
    shapes = list(dict.fromkeys(shapes))
    size = -(-len(windows) // BOUND_SLICES)

    def batches_of(shape: tuple[int, int]) -> list[list[Any]]:
        caps = dataclasses.replace(config.batch, max_batch_windows=shape[0], max_batch_tokens=shape[1])
        runs: list[list[Any]] = [[] for _ in range(BOUND_SLICES)]
        start = 0
        for group in plan_batches(windows, caps):
            # Sorted by length, capped and padded like docqa's batches: on a GPU, widths that are not
            # a multiple of 8 leave the bf16 tensor-core kernels misaligned. As in a job, shortest first.
            runs[start // size].append(collate(group, model.pad_token_id, config.batch.pad_to_multiple_of))
            start += len(group)
        return runs

    def forward_all(batches: list[Any]) -> float:
        started = time.perf_counter()
        for batch in batches:
            model.forward(batch)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    _warm_up(model, windows)
    planned = {shape: batches_of(shape) for shape in shapes}
    if _full_warm_up(model):
        for shape in shapes:
            forward_all([batch for part in planned[shape] for batch in part])
    seconds = dict.fromkeys(shapes, 0.0)
    order = random.Random(0)
    for k in range(BOUND_SLICES):
        for shape in order.sample(shapes, len(shapes)):
            seconds[shape] += forward_all(planned[shape][k])
    best = min(shapes, key=lambda shape: seconds[shape])

    def tokens(shape: tuple[int, int], kind: str) -> int:
        return sum(getattr(batch, kind) for part in planned[shape] for batch in part)

    return {
        "seconds": seconds[best],
        "best_shape": list(best),
        "chosen_shape": list(chosen),
        "chosen_seconds": seconds[chosen],
        "real_tokens": tokens(best, "real_tokens"),
        "padded_tokens": tokens(best, "padded_tokens"),
        "chosen_padded_tokens": tokens(chosen, "padded_tokens"),
    }


def bench_predict(
    model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    """`docqa predict` in-process, Parquet to Parquet."""
    from qa_core.jobs.predict import predict

    source = workdir / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    _warm_up(model, _windows(model, config, rows[:4]))

    def answer() -> dict[str, Any]:  # as docqa predict does, its host tuning included
        output = str(workdir / "predict")
        tune = config.runtime.host_tuning
        return predict(
            config, str(source), output, overwrite=True, progress=False, model=model, tune_host=tune
        )

    if _full_warm_up(model):
        answer()
    started = time.perf_counter()
    info = answer()
    figures = _job_figures(started, info)
    figures["whole_seconds"] = _whole_command(
        ["predict", "--input", str(source), "--output", str(workdir / "cli"), "--no-progress"],
        config,
        workdir,
    )
    return figures


def _job_figures(started: float, info: dict[str, Any]) -> dict[str, Any]:
    """A whole job's seconds since `started`, and its tokens from its `_run.json` document."""
    counts = info["counts"]
    return {
        "seconds": time.perf_counter() - started,
        "real_tokens": counts["real_tokens"],
        "padded_tokens": counts["padded_tokens"],
    }


def bench_predict_workers(
    config: QAConfig, rows: list[dict[str, Any]], workdir: Path, workers: int
) -> dict[str, Any]:
    """`docqa predict --workers N` in-process, Parquet to Parquet; the figure is the answering alone.

    Like the one-process mode, the time excludes loading the model: it runs from the moment every
    worker (and the device server, with `runtime.worker_models=shared`) has loaded to every worker's last
    answer (`_run.json`'s `answer_seconds`; the processes' exit is left out too). The start-up and the
    whole command's time are kept beside it. There is no untimed first pass (each run starts fresh
    processes), so on a GPU each worker's first batch of every shape is inside the time: give it enough
    rows (`--repeat`) to amortize that as a long job does.
    """
    from qa_core.jobs.predict import predict

    source = workdir / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    info = predict(
        config,
        str(source),
        str(workdir / "predict"),
        progress=False,
        workers=workers,
        tune_host=config.runtime.host_tuning,
    )
    counts, timings = info["counts"], info["timings"]
    return {
        "seconds": timings["answer_seconds"],
        "startup_seconds": timings["startup_seconds"],
        "whole_seconds": timings["wall_seconds"],
        "workers": min(workers, len(rows)),  # as `row_ranges` plans them
        "worker_models": config.runtime.worker_models,
        "real_tokens": counts["real_tokens"],
        "padded_tokens": counts["padded_tokens"],
    }


def bench_run(
    model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    """`docqa run` on DirectRunner, Parquet to Parquet, whole job."""
    from pipelines.run import run

    source = workdir / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    argv = [
        "--input",
        str(source),
        "--output",
        str(workdir / "run"),
        "--overwrite",
        "--model",
        config.model.name_or_path,
        "--set",
        f"model.dtype={config.model.dtype}",
        "--set",
        f"runtime.device={model.device.type}",
    ]
    started = time.perf_counter()
    figures = _job_figures(started, run(argv))
    figures["whole_seconds"] = _whole_command(
        ["run", "--input", str(source), "--output", str(workdir / "cli"), "--no-progress"], config, workdir
    )
    return figures


def bench_spark(config: QAConfig, rows: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """`docqa spark` on `local[T]` (T: this process's torch threads), Parquet to Parquet.

    The input is planned as units (two per core at least, `output.task_rows` rows at most: one task
    each); the figure is the answering, from the session up to the last unit's summary, which includes
    each Python worker's model load. The JVM's start is kept beside it, and the whole command is timed in
    a subprocess.
    """
    from pipelines.spark_job import run_spark

    cores = torch.get_num_threads()
    source = workdir / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    command = ["--input", str(source), "--master", f"local[{cores}]", "--no-report"]
    config_file = _config_file(config, workdir)
    info = run_spark([*command, "--output", str(workdir / "spark"), "--config", str(config_file)])
    counts, timings = info["counts"], info["timings"]
    return {
        "seconds": timings["answer_seconds"],
        "startup_seconds": timings["spark_start_seconds"],
        "whole_seconds": _whole_command(
            ["spark", *command, "--output", str(workdir / "cli")], config, workdir
        ),
        "partitions": counts["partitions"],
        "real_tokens": counts["real_tokens"],
        "padded_tokens": counts["padded_tokens"],
    }


def _config_file(config: QAConfig, workdir: Path) -> Path:
    """The resolved config as a YAML file (a command in a subprocess then runs exactly this config)."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=True), encoding="utf-8")
    return path


def _whole_command(command: list[str], config: QAConfig, workdir: Path) -> float:
    """Seconds of `python -m docqa COMMAND --config <config>` in a subprocess.

    The time holds imports, model load, answering, report and exit, as a user's command pays them.

    Raises:
        BenchError: When the command fails.
    """
    argv = [sys.executable, "-m", "docqa", "--log-level", "WARNING", *command]
    argv += ["--config", str(_config_file(config, workdir))]
    started = time.perf_counter()
    child = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise BenchError(f"docqa {command[0]} failed:\n{child.stderr[-3000:]}")
    return seconds


def bench_beam_stock(
    model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    """Beam's PytorchModelHandlerKeyedTensor over the rows' windows (`docqa.bench_beam_stock`).

    Stock Beam runs transformers' module (what a user of Beam's handler would load), not docqa's own
    encoder: `model.implementation: transformers` for this mode.
    """
    from docqa.bench_beam_stock import run_beam_stock

    stock = load_runner(dataclasses.replace(config.model, implementation="transformers"), config.runtime)
    if not isinstance(stock, TorchRunner):  # the transformers loader gives a torch module
        raise TypeError(f"stock Beam needs a torch module, got {type(stock).__name__}")
    return run_beam_stock(stock, config, _windows(model, config, rows), workdir)


RUNNERS = {
    "seed": bench_seed,
    "bound": bench_bound,
    "predict": bench_predict,
    "run": bench_run,
    "beam-stock": bench_beam_stock,
    "host": bench_host,
}
