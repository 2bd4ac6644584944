"""`docqa predict --workers N`: N processes answer contiguous row ranges, with a model each or one shared.

One Python process cannot keep a GPU busy with a small model: reading, tokenizing, decoding and writing
take far longer per question on the host than the forward pass takes on the device (see README
"Performance"). Worker processes split the rows instead: worker k answers a contiguous list of the
job's parts (`qa_core.jobs.parts`: row ranges counted over all files, in file order, each written as
`answers/part-N.parquet` and `rejections/part-N.parquet`), so the part files in name order hold the rows
in input order. The parent only plans the parts, shows progress, adds up the counters and writes
`_run.json` and `COMPLETED` once every worker has finished; any worker's failure fails the job (no
`COMPLETED`).

Workers are spawned (never forked: CUDA and torch's thread pools do not survive a fork) and share the
host's cores: each gets `cores // N` torch and tokenizer threads. With `shared=True` (`runtime.worker_models`)
the workers load no model: one more process, the device server (`runtime.device_server`), owns it and runs
every worker's batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from qa_core.config import QAConfig
from qa_core.engine.stats import EngineStats
from qa_core.errors import WorkerError
from qa_core.io.sources import InputSource
from qa_core.jobs.parts import PartRange
from qa_core.runtime.device_server import SERVER_PART, ClientChannel, serve, stop_server
from qa_core.runtime.processes import report_error, skip_final_collection, start_child

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often the parent checks that no worker died without a word
EXIT_GRACE_SECONDS = 3.0  # an exited worker's messages still in the pipe arrive within this
FINISH_SECONDS = 30.0  # a finished job's children (the server flushing its queues) end within this
SIGNAL_SECONDS = 5.0  # a child ends within this after SIGTERM, else it gets SIGKILL


@dataclass(frozen=True)
class WorkerJob:
    """What one worker answers and where it writes.

    Attributes:
        part: Worker number (its messages and process name say it).
        source: The job's input, planned (the worker reads only its parts' rows of it).
        parts: The parts it answers, in order.
        output_dir: The job's output folder, prepared by the parent once every worker is ready.
        answer_schema: Arrow schema of the answers table.
        rejection_schema: Arrow schema of the rejections table.
        threads: Torch and tokenizer threads for this worker.
        config_hash: The job's config hash, written into each part's footer (`jobs.parts.part_metadata`).
        log_level: The parent's logging level (a spawned process starts with logging unset).
        host_tuning: Whether the worker tunes its process (`qa_core.runtime.host_tuning.tune_host`, before
            its model loads) and trims its heap after CPU batches (`trimming`): what a command-line job
            asks for with `runtime.host_tuning`. The device server, when shared, follows the workers.
        channel: Queues to the device server when the workers share one model (set by `run_workers`);
            None: the worker loads its own.
    """

    part: int
    source: InputSource
    parts: tuple[PartRange, ...]
    output_dir: str
    answer_schema: Any  # pa.Schema (kept untyped: pickled across processes)
    rejection_schema: Any
    threads: int
    config_hash: str
    log_level: int = logging.WARNING
    host_tuning: bool = False
    channel: ClientChannel | None = None


@dataclass(frozen=True)
class WorkerResult:
    """A finished worker's counters, the model it ran, and its process's tuning.

    `host_tuning` is `qa_core.runtime.host_tuning.tuning_report()`: what the worker's `tune_host` did and
    its heap trims, or None when the job did not tune its processes.
    """

    part: int
    stats: EngineStats
    model_id: str
    revision: str
    device: str
    host_tuning: dict[str, Any] | None = None


def _worker_main(config: QAConfig, job: WorkerJob, messages: Any, go: Any, owner: Any) -> None:
    """Runs in the spawned process: loads the model, reports `ready`, waits for `go`, answers its parts.

    `owner` (a shared byte array) holds the job's owner token once `go` is set: the worker checks it
    before putting each of its part files in place.

    Reports progress, then `done` with a `WorkerResult`, or `error` with the exception (its traceback
    attached as a note). Exits by itself when the parent process dies.
    """
    # Rayon (the Rust tokenizer's pool) reads this when it starts its pool, at the first batch.
    os.environ["RAYON_NUM_THREADS"] = str(job.threads)
    start_child(job.log_level)
    try:
        import torch

        from qa_core.engine.loop import QAEngine
        from qa_core.jobs.parts import answer_parts, part_writers
        from qa_core.runtime.device_server import DeviceClient
        from qa_core.runtime.host_tuning import trimming, tune_host, tuning_report
        from qa_core.runtime.loaders import load_runner, load_tokenizer
        from qa_core.runtime.runner import ModelRunner

        torch.set_num_threads(job.threads)
        if job.host_tuning:
            tune_host()
        runner: ModelRunner  # the model in this process, or the device server's stand-in
        if job.channel is None:
            runner = load_runner(config.model, config.runtime)
        else:
            tokenizer = load_tokenizer(config.model)
        messages.put(("ready", job.part, None))
        go.wait()  # the parent prepares the output folder once every model has loaded
        if job.channel is not None:
            runner = DeviceClient.connect(tokenizer, job.channel)
        if job.host_tuning:
            runner = trimming(runner)  # trims only after forwards on this host: none with a server
        engine = QAEngine(runner, config)
        schemas = (job.answer_schema, job.rejection_schema)
        writers = part_writers(config, job.output_dir, schemas, owner.value.decode(), job.config_hash)
        answer_parts(
            engine, job.source, list(job.parts), writers, lambda n: messages.put(("rows", job.part, n))
        )
        result = WorkerResult(
            job.part,
            engine.stats,
            runner.model_id,
            runner.revision,
            str(runner.device),
            tuning_report(),
        )
        messages.put(("done", job.part, result))
        skip_final_collection()
    except BaseException as err:  # reported to the parent, which fails the job
        report_error(messages, job.part, f"predict worker {job.part}", err)


def run_workers(
    config: QAConfig,
    jobs: list[WorkerJob],
    on_rows: Callable[[int], Any],
    prepare: Callable[[], str],
    *,
    shared: bool = False,
    on_finished: Callable[[], None] | None = None,
) -> list[WorkerResult]:
    """Starts one spawned process per job (and the device server when `shared`) and waits for all.

    Args:
        config: The resolved config (each worker, or the server, loads `config.model` itself).
        jobs: One job per worker.
        on_rows: Called with a number of newly answered rows (the progress bar).
        prepare: Called once every worker has loaded its model, before any writes (prepares the output
            folder: a model that fails to load leaves an existing output untouched); returns the job's
            owner token, handed to the workers.
        shared: One device server process runs every worker's forwards (`qa_core.runtime.device_server`);
            the workers load only the tokenizer.
        on_finished: Called once every worker has reported `done`, before the processes are waited for
            (the end of the answering, for the job's timings).

    Returns:
        Each worker's result, in part order.

    Raises:
        The first error a worker or the server reports (the same exception class: `ModelLoadError`,
        `InputError`, `OutputError`, ...), or `WorkerError` when one dies without a word. The other
        processes are stopped first; a SIGTERM to this process stops them too.
    """
    context = multiprocessing.get_context("spawn")
    messages, go = context.Queue(), context.Event()
    owner: Any = context.Array("c", 64)  # the owner token (32 hex digits), set before `go`
    processes: dict[int, Any] = {}
    requests: Any = None
    replies: list[Any] = []
    if shared:
        requests = context.Queue()
        replies = [context.Queue() for _ in jobs]
        jobs = [
            dataclasses.replace(job, channel=ClientChannel(k, requests, replies[k]))
            for k, job in enumerate(jobs)
        ]
        processes[SERVER_PART] = context.Process(
            target=serve,
            # One job's workers all carry the job's `host_tuning`.
            args=(config, requests, replies, messages, logging.getLogger().level),
            kwargs={"host_tuning": any(job.host_tuning for job in jobs)},
            name="docqa-device-server",
        )
    processes.update(_worker_processes(context, config, jobs, messages, go, owner=owner))
    workers = {job.part for job in jobs}
    started = time.perf_counter()
    finished = False
    with _sigterm_as_exit():
        try:
            for process in processes.values():
                process.start()
            ready = _collect(processes, set(processes), messages, "ready", on_rows)
            logger.info("%d workers ready after %.1f s", len(jobs), time.perf_counter() - started)
            owner.value = prepare().encode()
            for reply_queue in replies:  # each worker's first reply: what the server loaded
                reply_queue.put(ready[SERVER_PART])
            go.set()
            results = _collect(processes, workers, messages, "done", on_rows)
            if on_finished is not None:
                on_finished()
            logger.info("%d workers finished after %.1f s", len(jobs), time.perf_counter() - started)
            finished = True
        finally:
            if requests is not None and finished:
                stop_server(requests)
            for process in processes.values():
                _stop(process, graceful=finished)
    return [results[job.part] for job in jobs]


def _worker_processes(
    context: Any, config: QAConfig, jobs: list[WorkerJob], messages: Any, go: Any, *, owner: Any
) -> dict[int, Any]:
    """One spawned (not yet started) process per job, by worker number."""
    return {
        job.part: context.Process(
            target=_worker_main, args=(config, job, messages, go, owner), name=f"docqa-worker-{job.part}"
        )
        for job in jobs
    }


def _stop(process: Any, graceful: bool) -> None:
    """Waits for a child to end, or ends it: SIGTERM, then SIGKILL if it hangs (say, in a CUDA call)."""
    if process.pid is None:
        return
    if graceful:
        process.join(timeout=FINISH_SECONDS)
    # Else a failed job: the others' work would be thrown away anyway.
    for send_signal in (process.terminate, process.kill):
        if not process.is_alive():
            break
        send_signal()
        process.join(timeout=SIGNAL_SECONDS)


def _name(part: int) -> str:
    return "the device server" if part == SERVER_PART else f"predict worker {part}"


def _collect(
    processes: dict[int, Any],
    needed: set[int],
    messages: Any,
    wanted: str,
    on_rows: Callable[[int], Any],
) -> dict[int, Any]:
    """Payloads of message `wanted` from the processes numbered `needed`, watching all `processes`.

    Raises:
        A process's error, or `WorkerError` when a process has exited for `EXIT_GRACE_SECONDS` without
        sending `wanted` (the device server must not exit at all before the workers are done).
    """
    got: dict[int, Any] = {}
    exited_at: dict[int, float] = {}
    while len(got) < len(needed):
        try:
            kind, part, payload = messages.get(timeout=POLL_SECONDS)
        except queue.Empty:
            kind = None
        if kind == "error":
            raise payload
        if kind == "rows":
            on_rows(payload)
        elif kind == wanted:
            got[part] = payload
        now = time.monotonic()
        for part, process in processes.items():
            if (part in got and part in needed) or process.exitcode is None:
                continue
            # Its last messages may still be in the pipe: give them a moment before calling it dead.
            if now - exited_at.setdefault(part, now) > EXIT_GRACE_SECONDS:
                raise WorkerError(
                    f"{_name(part)} exited with code {process.exitcode} without finishing "
                    "(killed? out of memory?); use fewer --workers or smaller batch caps"
                )
    return got


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turns SIGTERM (a scheduler cancelling the job) into SystemExit, so the workers are stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
