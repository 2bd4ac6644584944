"""The loader registry: a new runtime is one loader class and one `LOADERS` line, and the engine runs it.

The fake runtime here computes no model: its "server" marks the answer it knows (start logit high on
"river", end logit high on "church"). It is registered the way a real one (ONNX Runtime, a remote
inference server) would be, chosen by `model.implementation: auto` for the checkpoints it claims, and
answers rows through `qa_core.engine.loop.QAEngine` without any torch module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from qa_core.config import ModelConfig, QAConfig, RuntimeConfig
from qa_core.engine.loop import QAEngine
from qa_core.errors import ModelLoadError
from qa_core.records import Answer
from qa_core.runtime import loaders
from qa_core.runtime.fit import ModelLimits, model_limits
from qa_core.runtime.loaders import LOADERS, RuntimeLoader, load_runner, model_implementation
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.batch import Batch
from qa_core.stages.tokenizer import Tokenizer

SCHEME = "fake-server://"
CPU = torch.device("cpu")


@dataclass
class FakeRunner:
    """A `ModelRunner` whose forward is computed "elsewhere": start on `start_id`, end on `end_id`."""

    tokenizer: Tokenizer
    model_id: str
    start_id: int
    end_id: int
    revision: str = "fake-1"
    device: torch.device = CPU

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    @property
    def limits(self) -> ModelLimits:
        return model_limits(None, self.tokenizer, self.model_id)  # no position limit known

    @property
    def computes_on_host(self) -> bool:
        return False

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch.input_ids  # (B, P)
        start = np.where(ids == self.start_id, 10.0, 0.0).astype(np.float32)
        end = np.where(ids == self.end_id, 10.0, 0.0).astype(np.float32)
        return torch.from_numpy(start), torch.from_numpy(end)


class FakeLoader:
    """Claims `fake-server://` names; featurizes with the tiny model's tokenizer."""

    def __init__(self, tokenizer_dir: Path) -> None:
        self._tokenizer_dir = tokenizer_dir

    def refusal(self, model: ModelConfig) -> str | None:
        return None if model.name_or_path.startswith(SCHEME) else f"{model.name_or_path} is no {SCHEME} name"

    def load_tokenizer(self, model: ModelConfig) -> Tokenizer:
        return LOADERS["native"].load_tokenizer(ModelConfig(name_or_path=str(self._tokenizer_dir)))

    def read_limits(self, model: ModelConfig) -> ModelLimits:
        return model_limits(None, self.load_tokenizer(model), model.name_or_path)

    def load(self, model: ModelConfig, runtime: RuntimeConfig) -> ModelRunner:
        tokenizer = self.load_tokenizer(model)
        vocab = tokenizer.get_vocab()
        return FakeRunner(tokenizer, model.name_or_path, vocab["river"], vocab["church"])


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> RuntimeLoader:
    fake: RuntimeLoader = FakeLoader(tiny_model_dir)
    monkeypatch.setitem(LOADERS, "fake", fake)  # the one registry line a new runtime adds
    return fake


def test_a_registered_runtime_answers_rows_through_the_engine(registered: RuntimeLoader) -> None:
    config = QAConfig(model=ModelConfig(name_or_path=f"{SCHEME}qa-service"))
    assert model_implementation(config.model) == "fake"
    runner = load_runner(config.model, config.runtime)
    assert isinstance(runner, FakeRunner)
    rows = [
        {"id": "a", "question": "what is north?", "context": "the river is north of the church today"},
        {"id": "b", "question": "where?", "context": "a city, a river and a church"},
    ]
    answers = list(QAEngine(runner, config).answer_rows(rows))
    assert [a.answer for a in answers if isinstance(a, Answer)] == [
        "river is north of the church",
        "river and a church",
    ]


def test_auto_leaves_other_checkpoints_to_their_loaders(
    registered: RuntimeLoader, tiny_model_dir: Path
) -> None:
    assert model_implementation(ModelConfig(name_or_path=str(tiny_model_dir))) == "native"
    assert loaders.chosen_loader(ModelConfig(name_or_path="org/some-bert")) == loaders.FALLBACK


def test_a_named_loader_that_refuses_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.implementation=native cannot load .*certify") as err:
        load_runner(ModelConfig(name_or_path="org/some-bert", implementation="native"), RuntimeConfig())
    assert "\n" not in str(err.value)
