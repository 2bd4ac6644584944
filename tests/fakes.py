"""Fake models and Beam model handlers for the reliability tests (importable by Beam worker processes)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from pipelines.inference import QAModelHandler
from qa_core.config import QAConfig
from qa_core.engine.assembly import WindowFailure
from qa_core.records import Feature, WindowCandidates
from qa_core.runtime.torch_runner import TorchRunner
from tests.test_engine import MarkerModel, PoisonModel

# Marker model: answers span from the token "river" to the token "church".
START_WORD, END_WORD, POISON_WORD = "river", "church", "film"


def load_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def token_ids(tokenizer: Any, *words: str) -> list[int]:
    """The vocabulary ids of `words` (with a transformers tokenizer or docqa's native one)."""
    vocab = tokenizer.get_vocab()
    return [vocab[word] for word in words]


def wrap(module: torch.nn.Module, tokenizer: Any, name: str) -> TorchRunner:
    return TorchRunner(module, tokenizer, torch.device("cpu"), torch.float32, name, "test")


def marker(tokenizer: Any) -> TorchRunner:
    """A model whose answer is the span from "river" to "church" (instant on CPU)."""
    return wrap(MarkerModel(*token_ids(tokenizer, START_WORD, END_WORD)), tokenizer, "marker")


class OOMModel(MarkerModel):
    """The marker model, raising a CUDA out-of-memory error on batches of more than `max_windows` windows."""

    def __init__(self, start_id: int, end_id: int, max_windows: int) -> None:
        super().__init__(start_id, end_id)
        self.max_windows = max_windows
        self.ooms = 0

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> SimpleNamespace:
        if input_ids.shape[0] > self.max_windows:
            self.ooms += 1
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (simulated): {input_ids.shape[0]} windows > {self.max_windows}"
            )
        return super().forward(input_ids, attention_mask, token_type_ids)


def oom_model(tokenizer: Any, max_windows: int) -> TorchRunner:
    ids = token_ids(tokenizer, START_WORD, END_WORD)
    return wrap(OOMModel(*ids, max_windows=max_windows), tokenizer, "oom")


def poison_model(tokenizer: Any) -> TorchRunner:
    ids = token_ids(tokenizer, START_WORD, END_WORD, POISON_WORD)
    return wrap(PoisonModel(*ids), tokenizer, "poison")


class FakeModelHandler(QAModelHandler):
    """A `QAModelHandler` that runs one of the fakes above with the tiny model's tokenizer.

    Args:
        config: The job config.
        model_dir: The tiny model directory (for its tokenizer).
        kind: `marker`, `poison` or `oom`.
        max_windows: The OOM model's batch limit.
    """

    def __init__(self, config: QAConfig, model_dir: str, kind: str = "marker", max_windows: int = 2) -> None:
        super().__init__(config)
        self._dir, self._kind, self._max_windows = model_dir, kind, max_windows

    def load_model(self) -> TorchRunner:
        tokenizer = load_tokenizer(self._dir)
        if self._kind == "poison":
            return poison_model(tokenizer)
        if self._kind == "oom":
            return oom_model(tokenizer, self._max_windows)
        return marker(tokenizer)


class KillOnceHandler(FakeModelHandler):
    """Kills its worker process (`os._exit`) on the first batch of the whole run, then works normally.

    The first caller, in any process, atomically creates `marker_file` and dies; later calls see the file.
    """

    def __init__(self, config: QAConfig, model_dir: str, marker_file: str) -> None:
        super().__init__(config, model_dir)
        self._marker_file = marker_file

    def run_inference(
        self,
        batch: Sequence[Feature],
        model: TorchRunner,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[WindowCandidates | WindowFailure]:
        try:
            handle = os.open(self._marker_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().run_inference(batch, model, inference_args)
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        os._exit(1)
