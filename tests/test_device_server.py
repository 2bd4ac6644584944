"""The device server's protocol, in one process: a `DeviceClient` gets the model's own logits, and the
server's errors (out of memory included) come back to the worker's engine as they would in-process."""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from qa_core.config import QAConfig
from qa_core.engine.contained import run_batch_contained
from qa_core.engine.stats import EngineStats
from qa_core.errors import DeviceFailedError
from qa_core.records import Record
from qa_core.runtime.device_server import (
    ClientChannel,
    DeviceClient,
    ServedModel,
    _answer_requests,
    _pack,
    _unpack,
    stop_server,
)
from qa_core.stages.batch import Batch, collate
from qa_core.stages.featurize import Featurizer


def _batch(model: Any) -> Batch:
    """Windows of several lengths (two records, one long enough for several windows), padded."""
    config = QAConfig()
    records = [
        Record("0", "r0", "Who wrote it?", "It was written by Ada Lovelace in 1843."),
        Record("1", "r1", "What colour?", " ".join(f"word{i} is blue" for i in range(150))),
    ]
    features = [
        f for windows in Featurizer(model.tokenizer, config.featurize).featurize(records) for f in windows
    ]
    assert len(features) > 2 and len({f.length for f in features}) > 1
    return collate(features, model.pad_token_id, 8)


class _FailsAbove:
    """The model, failing with out-of-memory for batches of more than `limit` windows."""

    def __init__(self, model: Any, limit: int) -> None:
        self.model, self.limit = model, limit

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model.forward(batch)  # type: ignore[no-any-return]


def _unexpected(err: BaseException) -> None:
    raise AssertionError(f"a server thread failed: {err!r}")


class _CudaFails:
    """The model, failing every batch as a broken CUDA context does."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = torch.device("cuda")
        self.pad_token_id = model.pad_token_id
        self.computes_on_host = False

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")


class _RemembersFailedActivations:
    """The model; its first batch of several windows fails with out-of-memory after 'allocating'
    activations. Records whether those were still alive when each later batch came."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = model.device
        self.pad_token_id = model.pad_token_id
        self.computes_on_host = True
        self.failed: weakref.ref[torch.Tensor] | None = None
        self.alive_at_retry: list[bool] = []

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.failed is not None:
            self.alive_at_retry.append(self.failed() is not None)
        elif batch.input_ids.shape[0] > 1:
            activations = torch.ones(batch.input_ids.shape)
            self.failed = weakref.ref(activations)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model.forward(batch)  # type: ignore[no-any-return]


@pytest.fixture
def served(tiny_model: Any, request: pytest.FixtureRequest) -> Iterator[DeviceClient]:
    """A client wired to server threads in this process (the queues are the same protocol)."""
    param = getattr(request, "param", None)
    model = tiny_model if param is None else param(tiny_model)
    requests: queue.Queue[Any] = queue.Queue()
    replies: list[queue.Queue[Any]] = [queue.Queue()]
    threads = [
        threading.Thread(target=_answer_requests, args=(model, requests, replies, _unexpected))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    info = ServedModel(tiny_model.model_id, tiny_model.revision, "cpu", tiny_model.pad_token_id)
    replies[0].put(info)  # what the parent forwards first
    client = DeviceClient.connect(tiny_model.tokenizer, ClientChannel(0, requests, replies[0]))
    yield client
    stop_server(requests)
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)


def test_pack_round_trips_a_batch(tiny_model: Any) -> None:
    batch = _batch(tiny_model)
    back = _unpack(*_pack(batch))
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert getattr(back, name).dtype == np.int64
        np.testing.assert_array_equal(getattr(back, name), getattr(batch, name), err_msg=name)


def test_client_gets_the_models_logits(tiny_model: Any, served: DeviceClient) -> None:
    batch = _batch(tiny_model)
    want_start, want_end = tiny_model.forward(batch)
    for _ in range(3):  # several round trips on one channel stay in step
        start, end = served.forward(batch)
        assert start.dtype == torch.float32 and start.shape == batch.input_ids.shape
        assert torch.equal(start, want_start) and torch.equal(end, want_end)
    assert served.model_id == tiny_model.model_id and not served.computes_on_host


@pytest.mark.parametrize("served", [lambda model: _FailsAbove(model, 1)], indirect=True)
def test_server_out_of_memory_splits_the_batch_in_the_worker(tiny_model: Any, served: DeviceClient) -> None:
    """The server fails batches of more than one window; the worker's engine splits down to single
    windows and ends with the same candidates as the model run directly."""
    batch = _batch(tiny_model)
    with pytest.raises(torch.OutOfMemoryError):
        served.forward(batch)
    config, stats = QAConfig(), EngineStats()
    got, failed = run_batch_contained(served, batch, config, stats)  # type: ignore[arg-type]
    want, _ = run_batch_contained(tiny_model, batch, config)
    assert not failed and stats.oom_splits > 0
    assert [(c.row_key, c.window_index) for c in got] == [(c.row_key, c.window_index) for c in want]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a.starts, b.starts)
        np.testing.assert_allclose(a.logits, b.logits, rtol=1e-5, atol=1e-5)  # other batch shapes


@pytest.mark.parametrize("served", [_CudaFails], indirect=True)
def test_a_cuda_error_in_the_server_fails_the_job_not_the_rows(tiny_model: Any, served: DeviceClient) -> None:
    """No split can fix a broken CUDA context: the engine raises instead of rejecting every row."""
    with pytest.raises(DeviceFailedError, match="illegal memory access"):
        run_batch_contained(served, _batch(tiny_model), QAConfig(), EngineStats())  # type: ignore[arg-type]


def test_a_cuda_error_in_process_fails_the_job_not_the_rows(tiny_model: Any) -> None:
    with pytest.raises(DeviceFailedError, match="illegal memory access"):
        run_batch_contained(_CudaFails(tiny_model), _batch(tiny_model), QAConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["in_process", "served"])
def test_the_failed_forwards_memory_is_freed_before_the_retry(tiny_model: Any, where: str) -> None:
    """After an out-of-memory, the halves run with the failed batch's activations released (neither the
    engine's nor the server's copy of the error may keep its traceback's frames)."""
    model = _RemembersFailedActivations(tiny_model)
    runner: Any = model
    if where == "served":
        requests: queue.Queue[Any] = queue.Queue()
        replies: list[queue.Queue[Any]] = [queue.Queue()]
        thread = threading.Thread(target=_answer_requests, args=(model, requests, replies, _unexpected))
        thread.start()
        replies[0].put(ServedModel("m", "r", "cpu", tiny_model.pad_token_id))
        runner = DeviceClient.connect(tiny_model.tokenizer, ClientChannel(0, requests, replies[0]))
    try:
        _, failed = run_batch_contained(runner, _batch(tiny_model), QAConfig(), EngineStats())
    finally:
        if where == "served":
            stop_server(requests)
            thread.join(timeout=10)
    assert not failed and model.alive_at_retry and not any(model.alive_at_retry)


def test_a_server_thread_failing_outside_a_forward_reports_and_ends() -> None:
    """A malformed request (a broken queue) must not leave the workers waiting: `fail` gets the error."""
    requests: queue.Queue[Any] = queue.Queue()
    failures: list[BaseException] = []
    thread = threading.Thread(target=_answer_requests, args=(None, requests, [], failures.append))
    thread.start()
    requests.put(("not a request",))
    thread.join(timeout=10)
    assert not thread.is_alive() and len(failures) == 1 and isinstance(failures[0], ValueError)


def test_a_reply_out_of_step_fails_the_job(tiny_model: Any) -> None:
    replies: queue.Queue[Any] = queue.Queue()
    replies.put(ServedModel("m", "r", "cpu", tiny_model.pad_token_id))
    replies.put((7, None, None, None))  # the answer to some other batch
    client = DeviceClient.connect(tiny_model.tokenizer, ClientChannel(0, queue.Queue(), replies))
    with pytest.raises(DeviceFailedError, match="answered batch 7, expected 1"):
        run_batch_contained(client, _batch(tiny_model), QAConfig())  # type: ignore[arg-type]
