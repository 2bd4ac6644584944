"""Tests of training: window labels, overfitting a tiny model, and exact resumption from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from docqa.train_command import main, model_card
from qa_core.config import FeaturizeConfig
from qa_core.errors import ConfigError
from qa_core.evaluation.squad import SquadAnswer, SquadDataset, SquadExample, load_squad
from qa_core.train.config import TrainConfig
from qa_core.train.data import build_train_windows
from qa_core.train.trainer import plan_epoch, train

SUBJECTS = ["city", "school", "team", "river", "church", "film", "state", "country", "region", "university"]
VERBS = ["founded", "known", "called", "made", "used"]
SQUAD_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "train-v1.1.rebuilt.json.gz"


def _examples(n: int) -> list[SquadExample]:
    """Short examples over the test vocabulary whose answers are distinct whole words or numbers."""
    out = []
    for i in range(n):
        subject, verb = SUBJECTS[i % len(SUBJECTS)], VERBS[i % len(VERBS)]
        year = str(1800 + 7 * i)
        context = (
            f"the {subject} was {verb} in {year} by the people of the north . "
            f"it is one of the great {subject}"
        )
        question = f"when was the {subject} {verb}" if i % 2 == 0 else f"who {verb} the {subject}"
        answer = year if i % 2 == 0 else "the people of the north"
        out.append(
            SquadExample(
                f"q{i}", "t", context, question, (SquadAnswer(answer, context.index(answer)),), False
            )
        )
    return out


def _write_squad(path: Path, examples: list[SquadExample]) -> Path:
    paragraphs = [
        {
            "context": e.context,
            "qas": [
                {
                    "id": e.id,
                    "question": e.question,
                    "answers": [{"text": a.text, "answer_start": a.answer_start} for a in e.answers],
                }
            ],
        }
        for e in examples
    ]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_labels_point_at_answer_tokens_or_cls(tiny_model_dir: Path) -> None:
    from qa_core.stages.featurize import Featurizer

    words = " ".join(f"{w} and" for w in SUBJECTS * 3)
    context = f"{words} the answer is great music {words}"
    start = context.index("great music")
    answer = (SquadAnswer("great music", start),)
    example = SquadExample("x", "t", context, "what is the answer", answer, False)
    config = FeaturizeConfig(max_seq_len=32, doc_stride=8, min_context_tokens=16, max_question_len=8)
    windows, stats = build_train_windows(
        SquadDataset("1.1", (example,)), Featurizer(_tokenizer(tiny_model_dir), config)
    )
    assert stats.windows == len(windows) > 3
    assert stats.windows_with_answer >= 1 and stats.windows_cls >= 1
    assert stats.windows_with_answer + stats.windows_cls == stats.windows
    for window in windows:
        f = window.feature
        if window.has_answer:
            assert f.char_starts[window.start_position] >= 0 and f.char_ends[window.end_position] >= 0
            span = context[f.char_starts[window.start_position] : f.char_ends[window.end_position]]
            assert span == "great music"
        else:
            assert window.start_position == window.end_position == f.cls_index == 0
            inside = f.char_starts[f.char_starts >= 0]
            ends = f.char_ends[f.char_ends >= 0]
            assert inside.min() > start or ends.max() < start + len("great music")


def test_mismatched_and_missing_answers_are_counted(tiny_model_dir: Path) -> None:
    from qa_core.stages.featurize import Featurizer

    good, other = _examples(2)
    bad = SquadExample("bad", "t", good.context, good.question, (SquadAnswer("zzz", 0),), False)
    empty = SquadExample("empty", "t", good.context, good.question, (), True)
    dataset = SquadDataset("2.0", (good, bad, empty, other))
    windows, stats = build_train_windows(
        dataset, Featurizer(_tokenizer(tiny_model_dir), FeaturizeConfig()), drop_ids={"q1"}
    )
    counts = (stats.examples, stats.used, stats.text_mismatch, stats.no_answer, stats.dropped_ids)
    assert counts == (4, 1, 1, 1, 1)
    assert [w.example_id for w in windows] == ["q0"]


def test_plan_epoch_is_a_seeded_length_grouped_permutation() -> None:
    lengths = np.random.default_rng(0).integers(10, 300, size=1000)
    config = TrainConfig(batch_size=8, sort_chunk_batches=10)
    first = plan_epoch(lengths, 0, config)
    assert [b.tolist() for b in first] == [b.tolist() for b in plan_epoch(lengths, 0, config)]
    assert sorted(np.concatenate(first).tolist()) == list(range(1000))
    assert [b.tolist() for b in first] != [b.tolist() for b in plan_epoch(lengths, 1, config)]
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < 0.2 * np.ptp(lengths)  # length-grouped batches


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        TrainConfig(learning_rate=0)
    with pytest.raises(ConfigError):
        TrainConfig(warmup_ratio=1.0)


def test_tiny_model_overfits_to_exact_match_100(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _write_squad(tmp_path / "train.json", _examples(20))
    config = TrainConfig(
        learning_rate=5e-3,
        batch_size=10,
        max_steps=60,
        warmup_ratio=0.05,
        weight_decay=0.0,
        bf16=False,
        checkpoint_every=0,
        progress=False,
        log_every=50,
    )
    # Evaluating on the training file is the point of this test (never do it for a real model).
    out = tmp_path / "model"
    result = train(str(tiny_model_dir), str(data), str(out), config, eval_path=str(data))
    assert result.finished and result.eval is not None
    assert result.eval["exact"] == 100.0
    info = json.loads((out / "train_info.json").read_text())
    assert info["eval_scores"]["exact"] == 100.0 and info["data"]["windows"] == 20
    card = model_card(info)
    assert "EM 100.00" in card and "CC BY-SA 4.0" in card and "Apache-2.0" in card
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "tokenizer.json").is_file()
    # Certified at export: the trained model loads on docqa's encoder, its evaluation above included.
    from qa_core.config import ModelConfig
    from qa_core.runtime.loaders import model_implementation

    assert model_implementation(ModelConfig(name_or_path=str(out))) == "native"


def test_cli_trains_and_writes_a_model_card(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _write_squad(tmp_path / "train.json", _examples(6))
    out = tmp_path / "cli"
    argv = [
        "train",
        "--base",
        str(tiny_model_dir),
        "--train",
        str(data),
        "--output",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--no-bf16",
        "--no-progress",
        "--eval",
        str(data),
        "--eval-limit",
        "3",
    ]
    assert main(argv) == 0
    card = (out / "README.md").read_text()
    assert "first 3 questions" in card and "docqa train" in card and "Rajpurkar" in card
    assert (out / "train.log").read_text().count("step 2/2") == 1


def test_resume_continues_the_same_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _write_squad(tmp_path / "train.json", _examples(30))
    config = TrainConfig(
        learning_rate=1e-3,
        batch_size=4,
        grad_accum=2,
        max_steps=8,
        checkpoint_every=4,
        bf16=False,
        progress=False,
    )
    straight = train(str(tiny_model_dir), str(data), str(tmp_path / "a"), config)
    halted = train(str(tiny_model_dir), str(data), str(tmp_path / "b"), config, stop_after_steps=4)
    assert not halted.finished and halted.steps == 4
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(str(tiny_model_dir), str(data), str(tmp_path / "b"), config, resume=True)
    assert resumed.finished and resumed.steps == straight.steps == 8
    assert resumed.data_digest == straight.data_digest
    assert resumed.tokens == straight.tokens
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)
    # The untrained base differs, so the comparison above is not vacuous.
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not np.allclose(base[name], a[name]) for name in a if name in base)
    with pytest.raises(ConfigError):
        train(
            str(tiny_model_dir),
            str(data),
            str(tmp_path / "b"),
            TrainConfig(
                learning_rate=2e-3,
                batch_size=4,
                grad_accum=2,
                max_steps=8,
                checkpoint_every=4,
                bf16=False,
                progress=False,
            ),
            resume=True,
        )


@pytest.mark.skipif(not SQUAD_TRAIN.is_file(), reason="shared SQuAD train file absent")
def test_real_squad_windows_are_labelled(tiny_model_dir: Path) -> None:
    from qa_core.stages.featurize import Featurizer

    dataset = load_squad(str(SQUAD_TRAIN))
    _, stats = build_train_windows(
        dataset, Featurizer(_tokenizer(tiny_model_dir), FeaturizeConfig()), max_examples=300
    )
    assert stats.text_mismatch == 0 and stats.used == 300
    assert stats.windows_with_answer >= 300
