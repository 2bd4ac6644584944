"""Steady-state `predict` throughput with 1..N processes sharing one device, and a profile of one process.

Tells whether GPU predict is bound by one Python process's host work (then N processes, each with its own
model copy and its own contiguous slice of the rows, answer more rows per second) or by the device. Each
process loads the model and answers a warm-up slice first; all then start together, and the time from
that start to the last process's end is what counts (process start and model load are left out):
    python scripts/gpu_predict_check.py INPUT.parquet OUTDIR --workers 1,2,4,8 [--copies 4] [--profile]
        [--warm-rows 600] [--host-only] [--set key=value ...]
`--copies` repeats the input (with fresh ids) so each process has enough rows; `--profile` prints the
cProfile of one warm single-process predict over the input (main thread, by own time); `--host-only`
replaces the model with random logits on the CPU (the host's share: how far N processes scale without
sharing a GPU).
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import os
import pstats
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from qa_core.config import QAConfig, load_config
from qa_core.jobs.predict import predict
from qa_core.runtime.loaders import load_runner, load_tokenizer
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.torch_runner import TorchRunner


def _config(overrides: list[str]) -> QAConfig:
    device = [] if torch.cuda.is_available() else ["runtime.device=cpu", "runtime.require_gpu=false"]
    return load_config(["configs/dataflow-gpu.yaml"], [*device, *overrides])


@dataclass(frozen=True)
class _Job:
    slice_path: str
    warm_path: str
    out_dir: str
    overrides: list[str]
    threads: int
    host_only: bool


class _InstantLogits(torch.nn.Module):
    """Stands in for the model with random logits: what is left is the host's work (`--host-only`)."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> Any:
        del attention_mask, token_type_ids
        generator = torch.Generator().manual_seed(int(input_ids.shape[1]))
        return SimpleNamespace(
            start_logits=torch.randn(input_ids.shape, generator=generator),
            end_logits=torch.randn(input_ids.shape, generator=generator),
        )


def _load(config: QAConfig, host_only: bool) -> ModelRunner:
    if not host_only:
        return load_runner(config.model, config.runtime)
    return TorchRunner(
        _InstantLogits(), load_tokenizer(config.model), torch.device("cpu"), torch.float32, "instant", "-"
    )


def _worker(job: _Job, ready: Any, go: Any, done: Any) -> None:
    """Loads the model, warms up, waits for `go`, answers its slice; puts (rows, seconds) on `done`."""
    torch.set_num_threads(job.threads)
    config = _config(job.overrides)
    model = _load(config, job.host_only)
    predict(config, job.warm_path, job.out_dir + "-warm", overwrite=True, progress=False, model=model)
    ready.put(os.getpid())
    go.wait()
    started = time.perf_counter()
    info = predict(config, job.slice_path, job.out_dir, overwrite=True, progress=False, model=model)
    done.put((info["counts"]["rows_read"], time.perf_counter() - started))


def _write_slices(table: pa.Table, n: int, folder: Path) -> list[str]:
    paths = []
    step = -(-table.num_rows // n)
    for k in range(n):
        path = folder / f"slice-{n}-{k}.parquet"
        pq.write_table(table.slice(k * step, step), path)
        paths.append(str(path))
    return paths


def run_parallel(table: pa.Table, n: int, work: Path, overrides: list[str], host_only: bool) -> None:
    """One round with `n` processes; prints aggregate rows/s from the common start to the last end."""
    ctx = mp.get_context("spawn")
    slices = _write_slices(table, n, work)
    warm = work / "warm.parquet"
    ready, done, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    threads = max(1, (os.cpu_count() or 1) // n)
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # the Rust tokenizer's pool, per process
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                _Job(s, str(warm), str(work / f"out-{n}-{k}"), overrides, threads, host_only),
                ready,
                go,
                done,
            ),
        )
        for k, s in enumerate(slices)
    ]
    loading = time.perf_counter()
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    loaded = time.perf_counter() - loading
    started = time.perf_counter()
    go.set()
    results = [done.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    rows = sum(r for r, _ in results)
    slowest = max(s for _, s in results)
    print(
        f"{'host-only ' if host_only else ''}workers={n} threads/worker={threads}: {rows} rows in "
        f"{wall:.2f} s = {rows / wall:,.0f} rows/s "
        f"(slowest worker {slowest:.2f} s; start+load+warm-up {loaded:.1f} s)",
        flush=True,
    )


def profile_one(source: str, work: Path, overrides: list[str], host_only: bool) -> None:
    """Prints the cProfile of one warm in-process predict over `source`."""
    config = _config(overrides)
    model = _load(config, host_only)
    predict(
        config,
        str(work / "warm.parquet"),
        str(work / "prof-warm"),
        overwrite=True,
        progress=False,
        model=model,
    )
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    info = predict(config, source, str(work / "prof"), overwrite=True, progress=False, model=model)
    prof.disable()
    wall = time.perf_counter() - started
    print(
        f"profiled predict: {info['counts']['rows_read']} rows in {wall:.2f} s (under cProfile)", flush=True
    )
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def main() -> None:
    """Profile (optional), then one round per worker count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input")
    parser.add_argument("workdir")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--warm-rows", type=int, default=600)
    parser.add_argument("--host-only", action="store_true", help="random logits instead of the model")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = pq.read_table(args.input)
    pq.write_table(base.slice(0, args.warm_rows), work / "warm.parquet")
    if args.profile:
        profile_one(args.input, work, args.overrides, args.host_only)
    copies = []
    for c in range(args.copies):
        ids = pa.array([f"{c}-{i}" for i in base.column("id").to_pylist()])
        copies.append(base.set_column(base.schema.get_field_index("id"), "id", ids))
    table = pa.concat_tables(copies)
    pq.write_table(table, work / "copies.parquet")  # for the CLI runs of scripts/gpu_bench.sh
    for n in (int(w) for w in args.workers.split(",") if w):
        run_parallel(table, n, work, args.overrides, args.host_only)


if __name__ == "__main__":
    main()
