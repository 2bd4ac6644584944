"""The bundled default model loads offline (HF_HUB_OFFLINE is set in conftest) and answers correctly."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa_core.config import DEFAULT_MODEL, QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.records import Answer
from qa_core.runtime.loaders import load_runner

CONTEXT = (
    "The Harwick lighthouse stands on a granite point at the mouth of the Ess estuary. It was built in "
    "1872 by the engineer Margaret Doyle, who designed its double-walled tower to survive winter storms."
)


@pytest.fixture(scope="module")
def engine() -> QAEngine:
    assert (Path(DEFAULT_MODEL) / "model.safetensors").is_file(), (
        f"the bundled model is missing: {DEFAULT_MODEL}"
    )
    config = QAConfig()
    return QAEngine(load_runner(config.model, config.runtime), config)


@pytest.mark.parametrize(
    ("question", "expected"),
    [("When was the Harwick lighthouse built?", "1872"), ("Who built the lighthouse?", "Margaret Doyle")],
)
def test_bundled_model_answers(engine: QAEngine, question: str, expected: str) -> None:
    (answer,) = list(engine.answer_rows([{"id": "q", "question": question, "context": CONTEXT}]))
    assert isinstance(answer, Answer)
    assert answer.answer == expected
    assert answer.answer == CONTEXT[answer.start : answer.end]
    assert answer.score > 0.5
