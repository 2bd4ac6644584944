"""The device server's protocol, in one process: a `DeviceClient` gets the model's own logits, and the
server's errors (out of memory included) come back to the worker's engine as they would in-process."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from qa_core.batch import Batch, collate
from qa_core.config import QAConfig
from qa_core.device_server import (
    ClientChannel,
    DeviceClient,
    ServedModel,
    _answer_requests,
    _pack,
    _unpack,
    stop_server,
)
from qa_core.engine import EngineStats, run_batch_contained
from qa_core.featurize import Featurizer
from qa_core.records import Record


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


@pytest.fixture
def served(tiny_model: Any, request: pytest.FixtureRequest) -> Iterator[DeviceClient]:
    """A client wired to server threads in this process (the queues are the same protocol)."""
    limit = getattr(request, "param", None)
    model = tiny_model if limit is None else _FailsAbove(tiny_model, limit)
    requests: queue.Queue[Any] = queue.Queue()
    replies: list[queue.Queue[Any]] = [queue.Queue()]
    threads = [threading.Thread(target=_answer_requests, args=(model, requests, replies)) for _ in range(2)]
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


@pytest.mark.parametrize("served", [1], indirect=True)
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
