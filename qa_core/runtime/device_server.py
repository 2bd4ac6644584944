"""`docqa predict --workers N` with `runtime.worker_models=shared`: one process runs every worker's forwards.

Worker processes exist because one Python process's host work (read, tokenize, batch, decode, merge,
write) leaves a GPU mostly idle with a small model. When each of N workers loads its own model, the device
holds N CUDA contexts that it time-slices between, N model copies, and every worker pays CUDA's start-up.
Here one server process owns the model on the device; the workers keep all their host work and send their
padded batches to it instead of running the model themselves (`DeviceClient` stands in for a local runner in
the worker's engine). The server runs them back to back in one context and sends each worker its logits.

Transport is a `multiprocessing` queue per direction: requests from all workers on one queue, replies on
one queue per worker. A request packs a batch into 5 bytes per token position (`_pack`), a reply is two
(B, P) float32 arrays: small next to the forward itself. Each worker has at most one batch in flight (it
waits for its logits), so the server's queue holds at most N batches; its threads take the next one while
the device runs the last.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qa_core.config import QAConfig
from qa_core.errors import DeviceFailedError
from qa_core.runtime.fit import ModelLimits, model_limits
from qa_core.runtime.processes import picklable, report_error, skip_final_collection, start_child
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.batch import Batch, real_positions
from qa_core.stages.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

SERVER_PART = -1  # the server's number in the workers' message queue (workers are 0..N-1)
# One thread prepares and launches a batch while another waits for its logits to come back from the
# device; both release the GIL while they wait, so two keep the device fed. Two forwards can then hold
# activations at once: the batch caps (`max_batch_tokens`) must leave room on the device for two batches.
SERVER_THREADS = 2


@dataclass(frozen=True)
class ServedModel:
    """What the server loaded (the workers report it in `_run.json`; `limits`: the model's, or None)."""

    model_id: str
    revision: str
    device: str
    pad_token_id: int
    limits: ModelLimits | None = None


@dataclass(frozen=True)
class ClientChannel:
    """One worker's end of the server's queues (passed to the worker when it is spawned).

    Attributes:
        client: The worker's number (the index of its reply queue on the server).
        requests: The server's request queue, shared by every worker.
        replies: This worker's reply queue; the parent puts the `ServedModel` on it first.
    """

    client: int
    requests: Any
    replies: Any


class DeviceClient:
    """Stands in for a loaded `ModelRunner` in a worker's engine: `forward` runs on the server's device.

    Args:
        tokenizer: The model's fast tokenizer (loaded by the worker itself: featurization is its job).
        channel: The worker's queues.
        served: What the server loaded.
    """

    # The forward's activations live in the server: a tuned job's heap trim (`host_tuning.trimming`)
    # skips this worker, and the engine prepares the next sort buffer while it waits for its logits.
    computes_on_host = False

    def __init__(self, tokenizer: Tokenizer, channel: ClientChannel, served: ServedModel) -> None:
        self.tokenizer = tokenizer
        self._channel = channel
        self.model_id = served.model_id
        self.revision = served.revision
        self.device = torch.device(served.device)
        self.pad_token_id = served.pad_token_id
        # The server's model, or (not told) what the tokenizer alone says: no position limit known.
        self.limits = served.limits or model_limits(None, tokenizer, served.model_id)
        self._sent = 0

    @classmethod
    def connect(cls, tokenizer: Tokenizer, channel: ClientChannel) -> DeviceClient:
        """Waits for the `ServedModel` that the parent forwards once the server has loaded the model."""
        served = channel.replies.get()
        if not isinstance(served, ServedModel):
            raise RuntimeError(f"expected the served model first on the reply queue, got {type(served)}")
        return cls(tokenizer, channel, served)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits of a batch from the server, (B, P) float32 each, on this host's CPU.

        Raises:
            The server's error for this batch (for example `torch.OutOfMemoryError`, which the engine
            answers by splitting the batch).
        """
        self._sent += 1
        self._channel.requests.put((self._channel.client, self._sent, *_pack(batch)))
        # Blocks until the server answers; if it dies, the parent sees it and stops this process.
        seq, start, end, error = self._channel.replies.get()
        if seq != self._sent:
            raise DeviceFailedError(f"the device server answered batch {seq}, expected {self._sent}")
        if error is not None:
            raise error
        return torch.from_numpy(start), torch.from_numpy(end)


def stop_server(requests: Any) -> None:
    """Asks the server's threads to finish (each takes one stop mark)."""
    for _ in range(SERVER_THREADS):
        requests.put(None)


def serve(
    config: QAConfig,
    requests: Any,
    replies: list[Any],
    messages: Any,
    log_level: int,
    *,
    host_tuning: bool = False,
) -> None:
    """The server process: loads the model, reports `ready`, answers requests until stopped.

    With `host_tuning` (the workers' `WorkerJob.host_tuning`) the server tunes its process before the
    model loads and trims its heap after the forwards it computes on this host's CPU
    (`qa_core.runtime.host_tuning`).

    Reports `("ready", SERVER_PART, ServedModel)` or `("error", SERVER_PART, exception)` on `messages`
    (the workers' queue, read by `qa_core.jobs.workers.run_workers`). A server thread that fails outside a
    forward (a broken queue) reports its error and ends the process, so the parent fails the job instead
    of the workers waiting for replies that never come.
    """
    from qa_core.runtime.host_tuning import trimming, tune_host
    from qa_core.runtime.loaders import load_runner, resolve_device

    start_child(log_level)

    def report(err: BaseException) -> None:
        report_error(messages, SERVER_PART, f"the device server (pid {os.getpid()})", err)

    failing = threading.Lock()  # the first failing thread reports; a second one waits for the exit

    def fail(err: BaseException) -> None:
        with failing:
            report(err)
            messages.close()
            messages.join_thread()  # the error is in the pipe before the process ends
            os._exit(1)

    try:
        if resolve_device(config.runtime).type == "cuda":
            # Host threads only launch kernels here; the workers need the cores.
            torch.set_num_threads(1)
        else:
            # The forwards themselves run on these cores (`shared` is meant for GPUs; see README).
            torch.set_num_threads(max(1, torch.get_num_threads() // SERVER_THREADS))
        if torch.cuda.is_available():
            # Set once for the process: per-call `sdpa_kernel` contexts of two threads could interleave
            # and let cuDNN attention (a plan build per new batch shape) in (see runtime.torch_runner).
            torch.backends.cuda.enable_cudnn_sdp(False)
        if host_tuning:
            tune_host()
        model: ModelRunner = load_runner(config.model, config.runtime)
        if host_tuning:
            model = trimming(model)  # trims only after forwards on this host's CPU
        served = ServedModel(
            model.model_id, model.revision, str(model.device), model.pad_token_id, model.limits
        )
        threads = [
            threading.Thread(target=_answer_requests, args=(model, requests, replies, fail), daemon=True)
            for _ in range(SERVER_THREADS)
        ]
        for thread in threads:
            thread.start()
        messages.put(("ready", SERVER_PART, served))
        for thread in threads:
            thread.join()
        skip_final_collection()
    except BaseException as err:  # reported to the parent, which fails the job
        report(err)


_Reply = tuple[int, np.ndarray | None, np.ndarray | None, BaseException | None]


def _answer_requests(
    model: ModelRunner, requests: Any, replies: list[Any], fail: Callable[[BaseException], None]
) -> None:
    """One server thread: forward each request's batch, reply with its logits (or its error).

    Args:
        model: The loaded runner (in `host_tuning.trimming` when the job tunes its processes).
        requests: The queue of `(client, seq, *packed batch)` requests; `None` stops this thread.
        replies: The workers' reply queues, indexed by client.
        fail: Called with any error outside a forward (the process cannot go on answering).
    """
    try:
        while True:
            request = requests.get()
            if request is None:
                return
            client, seq, *packed = request
            replies[client].put(_answer(model, seq, packed))
    except BaseException as err:
        fail(err)


def _answer(model: ModelRunner, seq: int, packed: list[np.ndarray]) -> _Reply:
    """The reply to one request: its logits, or the forward's error for the worker's engine."""
    try:
        start, end = model.forward(_unpack(*packed))
        return (seq, _to_host(start), _to_host(end), None)
    except torch.AcceleratorError as err:  # a CUDA error but out-of-memory: no later batch can run
        error: BaseException = DeviceFailedError(f"the device server's {model.device} device failed: {err}")
    except Exception as err:  # the worker splits the batch or rejects its rows
        error = picklable(err)
    # The traceback would keep the failed forward's frames (its activations on the device) alive while
    # the reply waits in the queue and the worker retries with half the batch.
    error.with_traceback(None)
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
    return (seq, None, None, error)


def _pack(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch in a fifth of its bytes for the queue (ids, segment ids, row lengths).

    The attention mask is a prefix of ones (`collate`), so the row lengths carry it; ids fit int32,
    segment ids uint8.
    """
    lengths = batch.attention_mask.sum(axis=1, dtype=np.int32)  # (B,)
    return batch.input_ids.astype(np.int32), batch.token_type_ids.astype(np.uint8), lengths


def _unpack(input_ids: np.ndarray, token_type_ids: np.ndarray, lengths: np.ndarray) -> Batch:
    """The (B, P) int64 arrays of `_pack`'s batch (the windows themselves stay with the worker)."""
    attention_mask = real_positions(lengths, input_ids.shape[1])  # (B, P)
    return Batch(
        (),
        input_ids.astype(np.int64),
        attention_mask.astype(np.int64),
        token_type_ids.astype(np.int64),
    )


def _to_host(logits: torch.Tensor) -> np.ndarray:
    """(B, P) float32 logits as a host array (waits for the device)."""
    return logits.float().cpu().numpy()
