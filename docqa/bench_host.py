"""`docqa bench --modes host`: what one process spends per row on everything but the model's forward.

The engine runs a whole `docqa predict` job with an instant forward (`InstantRunner`: random logits of
the batch's shape, no model), so its time is the host half a device would have to wait for:
read, validate, tokenize, windows, plan and collate, decode, assemble, write. Beside it, each stage is
timed alone over the same rows (one pass each, in the engine's order), and the tokenizer alone gives the
floor: every (question, context) pair encoded, and each distinct context encoded once with the questions.

With `--workers N` the same job then runs in N spawned processes at once (`bench_host_workers`), each
over its own contiguous slice of the rows: how far the host half scales with processes on this machine.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import multiprocessing
import os
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer as BackendTokenizer

from qa_core.config import QAConfig
from qa_core.engine.contained import run_batch_contained
from qa_core.engine.host import RowPreparer, plan_buffer
from qa_core.errors import WorkerError
from qa_core.io.read import iter_rows
from qa_core.records import Record
from qa_core.runtime import host_tuning
from qa_core.runtime.cpu import torch_threads
from qa_core.runtime.fit import ModelLimits
from qa_core.runtime.processes import report_error, skip_final_collection, start_child
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.batch import Batch, collate
from qa_core.stages.tokenizer import Tokenizer

MICROSECONDS = 1e6
HOST_PASSES = 3  # the job, each stage and the tokenizer floor timed this many times, the fastest kept
# The workers' start (imports, the tokenizer unpickled) and their answering each end within this, or the
# bench fails; a worker that dies without a word fails it at the next poll.
WORKER_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 1.0


@dataclasses.dataclass
class InstantRunner:
    """A `ModelRunner` over a real one's tokenizer whose forward makes logits without running a model.

    It does not compute on this host (`computes_on_host` False: no heap trim is due after its batches);
    the bench runs it with no prefetch thread, so the host work is timed in one thread as it adds up.
    """

    tokenizer: Tokenizer
    model_id: str
    revision: str
    device: torch.device
    pad_token_id: int
    limits: ModelLimits
    computes_on_host: bool = False
    _generator: torch.Generator = dataclasses.field(
        default_factory=lambda: torch.Generator().manual_seed(0), repr=False
    )

    @classmethod
    def over(cls, runner: ModelRunner) -> InstantRunner:
        """The instant stand-in of `runner`: its tokenizer, names and limits, the CPU as device."""
        return cls(
            runner.tokenizer,
            runner.model_id,
            runner.revision,
            torch.device("cpu"),
            runner.pad_token_id,
            runner.limits,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled without its generator, which starts afresh where it is unpickled.

        torch pickles the generator's state for a spawned process as a tensor in shared memory, which
        failed on this project's CPU machine ("unable to resize file", EINVAL), for a state nothing
        needs: each process draws its own logits.
        """
        fields = (self.tokenizer, self.model_id, self.revision, self.device, self.pad_token_id, self.limits)
        return (type(self), (*fields, self.computes_on_host))

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) float32 start and end logits drawn from a seeded normal distribution.

        Not zeros: equal logits tie every candidate, and the decoder settles ties with a full sort that
        real logits almost never need, which would time a case a model does not produce.
        """
        shape = batch.input_ids.shape
        return torch.randn(shape, generator=self._generator), torch.randn(shape, generator=self._generator)


def bench_host(
    model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path, workers: int = 1
) -> dict[str, Any]:
    """The engine's host cost per row with an instant forward, its split by stage, the tokenizer floor.

    With `workers` > 1, the `host_workers*` figures of `bench_host_workers` are added, their scaling
    taken against this process's run of the same rows.
    """
    from qa_core.jobs.predict import predict

    source = workdir / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    config = _one_thread(config)
    instant = InstantRunner.over(model)
    # Torch at one thread: the instant forward's logits are on the CPU, so decode's small tensor ops run
    # here (on a GPU they run on the device); more threads would time OpenMP's hand-offs between cores.
    # Each figure is the fastest of `HOST_PASSES` passes: a shared machine only ever adds time.
    with torch_threads(1):
        runs = []
        with _GarbageCollections() as collections:
            for _ in range(HOST_PASSES):
                started = time.perf_counter()
                info = predict(
                    config, str(source), str(workdir / "host"), overwrite=True, progress=False, model=instant
                )
                runs.append((info["timings"]["answer_seconds"], time.perf_counter() - started, info))
        answered, seconds, info = min(runs, key=lambda run: run[0])
        passes = [_stage_seconds(instant, config, source) for _ in range(HOST_PASSES)]
        # As a GPU job runs it: the next sort buffer read and tokenized by the prefetch thread (the
        # tokenizer does not hold the GIL) while this thread decodes, assembles and writes.
        pipelined = dataclasses.replace(
            config, runtime=dataclasses.replace(config.runtime, prefetch_buffers=1)
        )
        overlapped = min(
            predict(
                pipelined, str(source), str(workdir / "host"), overwrite=True, progress=False, model=instant
            )["timings"]["answer_seconds"]
            for _ in range(HOST_PASSES)
        )
    stages = {name: min(p[name] for p in passes) for name in passes[0]}
    counts = info["counts"]
    per_row = {name: value / len(rows) * MICROSECONDS for name, value in stages.items()}
    per_row["assemble, write and the rest"] = answered / len(rows) * MICROSECONDS - sum(per_row.values())
    floors = [_tokenizer_floor(model.tokenizer, rows) for _ in range(HOST_PASSES)]
    pairs, distinct = min(f[0] for f in floors), min(f[1] for f in floors)
    figures = {
        "seconds": seconds,
        "real_tokens": counts["real_tokens"],
        "padded_tokens": counts["padded_tokens"],
        "host_us_per_row": answered / len(rows) * MICROSECONDS,
        "host_stages_us_per_row": per_row,
        "host_prefetched_us_per_row": overlapped / len(rows) * MICROSECONDS,
        # Every pass's collections, per row (the fastest pass may have had none): with host tuning the
        # imported modules' objects are frozen out of them (`host_tuning.tune_host`).
        "host_gc_us_per_row": collections.seconds / (HOST_PASSES * len(rows)) * MICROSECONDS,
        "host_gc_full_collections": collections.full,
        "tokenizer_pairs_us_per_row": pairs / len(rows) * MICROSECONDS,
        "tokenizer_distinct_us_per_row": distinct / len(rows) * MICROSECONDS,
        "distinct_contexts": len({row["context"] for row in rows}),
        "contexts_tokenized": counts["contexts_tokenized"],
        "context_reuse_rate": counts["context_reuse_rate"],
        "context_cache_peak_bytes": counts["context_cache_peak_bytes"],
    }
    if workers > 1:
        figures.update(bench_host_workers(instant, config, rows, workdir, workers))
        figures["host_workers_scaling"] = figures["host_workers_rows_per_s"] / (len(rows) / seconds)
    return figures


class _GarbageCollections:
    """Python's garbage collections while in the block: their seconds and how many were full (gen 2)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._started = 0.0

    def __enter__(self) -> _GarbageCollections:
        gc.callbacks.append(self._on_collection)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._started
        self.full += info["generation"] == 2


def _one_thread(config: QAConfig) -> QAConfig:
    """`config` without the prefetch thread: a process's host work runs in one thread, its costs add up."""
    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, prefetch_buffers=0))


@dataclasses.dataclass(frozen=True)
class _HostWorkerJob:
    """One host worker's share of `bench_host_workers`: its slice of the rows and where it writes."""

    part: int
    source: str
    output: str
    threads: int
    tune_host: bool
    log_level: int


def bench_host_workers(
    instant: InstantRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path, workers: int
) -> dict[str, Any]:
    """`workers` processes running the instant-forward `predict` at once, each over its slice of the rows.

    The rows are split into contiguous slices of (nearly) equal size, as `docqa predict --workers N`
    splits a job, so the processes together answer the same rows as the one-process run and the two
    rates compare directly. Each spawned process takes `instant` (its tokenizer pickled over), its
    share of this process's torch threads for torch and the tokenizer (as `--workers` gives them),
    tunes itself as the job would (`runtime.host_tuning`), reports ready and waits. The time runs from
    the moment every process is ready to the last one's `predict` returning: process start and exit
    are outside it, as they are outside the one-process figure. Each process pays a job's fixed costs
    (open, plan, write, `_run.json`) on a slice of 1/N of the rows: give it rows enough (`--repeat`)
    when those would weigh.

    Returns:
        `host_workers` (processes), `host_workers_threads` (threads each), `host_workers_rows`,
        `host_workers_seconds` (all ready to the last done), `host_workers_rows_per_s` (the rows over
        that time), `host_workers_us_per_row` (each process's answering time per row, the processes'
        mean; `host_workers_us_per_row_max` the slowest's) and `host_workers_startup_seconds` (the
        processes' start to all ready, outside the time).

    Raises:
        WorkerError: A process died without a word or did not answer within `WORKER_TIMEOUT_SECONDS`;
            a process's own error is raised as it is, with its traceback as a note.
    """
    workers = min(workers, len(rows))
    threads = max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context("spawn")  # never forked: torch's thread pools do not survive it
    messages, go = context.Queue(), context.Event()
    processes = []
    for k in range(workers):
        source = workdir / f"host-slice-{k}.parquet"
        share = rows[k * len(rows) // workers : (k + 1) * len(rows) // workers]
        pq.write_table(pa.Table.from_pylist(share), source)
        job = _HostWorkerJob(
            k,
            str(source),
            str(workdir / f"host-{k}"),
            threads,
            config.runtime.host_tuning,
            logging.getLogger().getEffectiveLevel(),
        )
        args = (job, instant, config, messages, go)
        processes.append(context.Process(target=_host_worker, args=args, name=f"docqa-host-{k}"))
    started = time.perf_counter()
    try:
        for process in processes:
            process.start()
        _collect(messages, processes, "ready")
        loaded = time.perf_counter()
        go.set()
        done = _collect(messages, processes, "done")
        finished = time.perf_counter()
    except BaseException:
        for process in processes:
            if process.is_alive():
                process.terminate()
        raise
    finally:
        for process in processes:
            if process.pid is not None:
                process.join()
    answered = sum(count for count, _ in done.values())
    per_row = [seconds / count * MICROSECONDS for count, seconds in done.values()]
    return {
        "host_workers": workers,
        "host_workers_threads": threads,
        "host_workers_rows": answered,
        "host_workers_seconds": finished - loaded,
        "host_workers_rows_per_s": answered / (finished - loaded),
        "host_workers_us_per_row": sum(per_row) / len(per_row),
        "host_workers_us_per_row_max": max(per_row),
        "host_workers_startup_seconds": loaded - started,
    }


def _host_worker(
    job: _HostWorkerJob, instant: InstantRunner, config: QAConfig, messages: Any, go: Any
) -> None:
    """In a spawned process: gets ready, waits for `go`, runs `predict` over its slice.

    Puts `("ready", part, None)`, then `("done", part, (rows, answer seconds))`, or `("error", part,
    exception)` on `messages`.
    """
    # Rayon (the Rust tokenizer's pool) reads this when it starts its pool, at the first batch.
    os.environ["RAYON_NUM_THREADS"] = str(job.threads)
    start_child(job.log_level)
    try:
        from qa_core.jobs.predict import predict

        torch.set_num_threads(job.threads)
        if job.tune_host:
            host_tuning.tune_host()
        messages.put(("ready", job.part, None))
        go.wait()
        info = predict(config, job.source, job.output, overwrite=True, progress=False, model=instant)
        answered = (info["counts"]["rows_read"], info["timings"]["answer_seconds"])
        messages.put(("done", job.part, answered))
        skip_final_collection()
    except BaseException as err:  # raised in the bench's process
        report_error(messages, job.part, f"host bench worker {job.part}", err)


def _collect(messages: Any, processes: list[Any], kind: str) -> dict[int, Any]:
    """Each process's `kind` message payload, by part; raises a process's error, or on a silent death."""
    got: dict[int, Any] = {}
    deadline = time.monotonic() + WORKER_TIMEOUT_SECONDS
    while len(got) < len(processes):
        try:
            what, part, payload = messages.get(timeout=POLL_SECONDS)
        except queue.Empty:
            # A process that failed reported it and exited 0; a non-zero exit is a death without a word.
            dead = [p.name for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise WorkerError(f"host bench processes {dead} died before {kind}") from None
            if time.monotonic() > deadline:
                raise WorkerError(
                    f"host bench: not every process {kind} in {WORKER_TIMEOUT_SECONDS:.0f} s"
                ) from None
            continue
        if what == "error":
            raise payload
        if what == kind:
            got[part] = payload
    return got


def _stage_seconds(runner: InstantRunner, config: QAConfig, source: Path) -> dict[str, float]:
    """Each stage alone over the same rows, one pass each, fed the previous stage's output."""
    seconds: dict[str, float] = {}
    read = _timed(seconds, "read", lambda: list(iter_rows([str(source)], config.input)))
    preparer = RowPreparer(runner.tokenizer, config)
    validated = _timed(seconds, "validate", lambda: [preparer.validate(row, i) for i, row in enumerate(read)])
    records = [item for item in validated if isinstance(item, Record)]
    featurized = _timed(seconds, "tokenize and windows", lambda: preparer.featurize(records))
    buffer = _timed(seconds, "plan batches", lambda: plan_buffer(list(featurized), config))
    pad, multiple = runner.pad_token_id, config.batch.pad_to_multiple_of
    batches = _timed(seconds, "collate", lambda: [collate(group, pad, multiple) for group in buffer.groups])
    # The engine's own batch step (forward, decode, failures contained): with the instant forward's random
    # logits, its time is the decoder's.
    _timed(seconds, "decode", lambda: [run_batch_contained(runner, b, config) for b in batches])
    return seconds


def _timed(seconds: dict[str, float], name: str, step: Callable[[], Any]) -> Any:
    """Runs `step`, adds its seconds under `name`, returns its result."""
    started = time.perf_counter()
    result = step()
    seconds[name] = time.perf_counter() - started
    return result


def _tokenizer_floor(tokenizer: Tokenizer, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds of the tokenizer alone: every (question, context) pair, and each distinct context once.

    The second figure adds the questions encoded alone: what a job must tokenize at the least.
    """
    # A copy without the truncation and padding a loader may have set: the encoding work alone.
    backend = BackendTokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    questions = [str(row["question"] or "") for row in rows]
    contexts = [str(row["context"] or "") for row in rows]
    started = time.perf_counter()
    backend.encode_batch(list(zip(questions, contexts, strict=True)))
    pairs = time.perf_counter() - started
    started = time.perf_counter()
    backend.encode_batch(list(dict.fromkeys(contexts)), add_special_tokens=False)
    backend.encode_batch(questions, add_special_tokens=False)
    return pairs, time.perf_counter() - started
