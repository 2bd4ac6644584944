"""`docqa calibrate`: the temperature fit, the split, the candidate sets, and calibration.json end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from qa_core.config import DecodeConfig, FeaturizeConfig, ModelConfig, QAConfig, RuntimeConfig
from qa_core.engine.loop import QAEngine
from qa_core.evaluation.calibrate import candidate_answers, split_sample
from qa_core.evaluation.calibration import apply_model_calibration
from qa_core.evaluation.reliability import CandidateLogits, expected_calibration_error, fit_temperature
from qa_core.evaluation.squad import load_squad
from qa_core.records import Answer
from tests.user_commands_data import WORDS, run_command, write_squad


def synthetic(true_t: float, n: int, seed: int) -> CandidateLogits:
    """Rows whose returned answer (the top logit) is right with probability softmax(l / true_t)[top]."""
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 8, size=n)
    rows, correct = [], []
    for i in range(n):
        logits = rng.normal(0.0, 3.0, size=int(k[i]))
        p = np.exp((logits - logits.max()) / true_t)
        p /= p.sum()
        right = rng.choice(len(logits), p=p)
        order = np.argsort(-logits)
        rows.append(logits[order].tolist())  # returned answer first
        correct.append(bool(order[0] == right))
    return CandidateLogits.from_rows(rows, [0] * n, correct)


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    fit = synthetic(true_t, 8000, seed=1)
    heldout = synthetic(true_t, 8000, seed=2)
    t = fit_temperature(fit)
    assert t > 0 and abs(np.log(t / true_t)) < 0.1
    assert heldout.ece(t) <= heldout.ece(1.0)
    assert heldout.log_loss(t) <= heldout.log_loss(1.0)


def test_scores_are_softmax_of_the_chosen_candidate() -> None:
    data = CandidateLogits.from_rows([[2.0, 1.0, 0.0], [5.0]], [0, 0], [True, False])
    expected = np.exp(2.0) / (np.exp(2.0) + np.exp(1.0) + 1.0)
    assert data.scores(1.0) == pytest.approx([expected, 1.0])
    assert data.scores(1e9)[0] == pytest.approx(1 / 3)
    assert expected_calibration_error([0.95, 0.95], [True, False]) == pytest.approx(0.45)


def test_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    examples = load_squad(str(write_squad(tmp_path / "s.json", 60))).examples
    fit, heldout = split_sample(examples, 40)
    assert len(fit) + len(heldout) == 40 and fit and heldout
    assert not {e.id for e in fit} & {e.id for e in heldout}
    assert split_sample(tuple(reversed(examples)), 40) == (fit, heldout)


def test_candidate_sets_reproduce_the_engine(tiny_model) -> None:  # type: ignore[no-untyped-def]
    config = QAConfig(
        featurize=FeaturizeConfig(max_seq_len=32, doc_stride=8, min_context_tokens=12, max_question_len=12),
        decode=DecodeConfig(n_best=3, calibration="off"),
        model=ModelConfig(name_or_path=tiny_model.model_id),
        runtime=RuntimeConfig(device="cpu"),
    )
    words = WORDS[:12]
    rows = [
        {"id": str(i), "question": "what is the city?", "context": " ".join(words[: 1 + i * 3] * (1 + i))}
        for i in range(5)
    ] + [{"id": "bad", "question": " ", "context": "city"}]
    engine = [r for r in QAEngine(tiny_model, config).answer_rows(rows)]
    ours = candidate_answers(tiny_model, config, rows)
    assert ours[-1] is None and not isinstance(engine[-1], Answer)
    pairs = [(e, o) for e, o in zip(engine[:-1], ours[:-1], strict=True)]
    assert any(o is not None and len(o.top_k) > config.decode.n_best for _, o in pairs)  # several windows
    for expected, got in pairs:
        assert isinstance(expected, Answer) and got is not None
        assert (got.answer, got.start, got.end) == (expected.answer, expected.start, expected.end)
        assert got.logit_score == expected.logit_score
        assert got.top_k[0].score == pytest.approx(expected.score, abs=1e-12)
        logits = CandidateLogits.from_rows([[s.logit_score for s in got.top_k]], [0], [True])
        assert logits.scores(1.0)[0] == pytest.approx(expected.score, abs=1e-12)


def test_calibrate_writes_and_is_applied(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)  # never write into the shared fixture
    data = write_squad(tmp_path / "squad.json", 40)
    argv = ["calibrate", "--data", str(data), "--model", str(model), "--n", "40"]
    assert run_command([*argv, "--dry-run"]) == 0
    assert not (model / "calibration.json").exists()
    assert run_command([*argv, "--json", str(tmp_path / "fit.json")]) == 0
    document = json.loads((model / "calibration.json").read_text())
    assert document == json.loads((tmp_path / "fit.json").read_text())
    assert document["temperature"] > 0 and document["method"] == "temperature"
    assert document["fitted_on"]["data"] == "squad.json"
    assert document["fitted_on"]["n_fit"] + document["heldout"]["n"] == 40
    assert {"ece_before", "ece_after", "created"} <= set(document)
    config = QAConfig(model=ModelConfig(name_or_path=str(model)))
    applied = apply_model_calibration(config)
    assert applied.decode.temperature == pytest.approx(document["temperature"])
    off = dataclasses.replace(config, decode=DecodeConfig(calibration="off"))
    assert apply_model_calibration(off).decode.temperature == 1.0


def test_calibrate_needs_a_local_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_squad(tmp_path / "squad.json", 4)
    assert run_command(["calibrate", "--data", str(data), "--model", "someone/some-model"]) == 2
    err = capsys.readouterr().err
    assert "not a local directory" in err and "Traceback" not in err
