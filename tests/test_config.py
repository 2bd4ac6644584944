"""Config: defaults, YAML layering, overrides, unknown keys and checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa_core.config import QAConfig, load_config
from qa_core.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults() -> None:
    cfg = QAConfig()
    assert (cfg.featurize.max_seq_len, cfg.featurize.doc_stride, cfg.featurize.max_question_len) == (
        384,
        128,
        64,
    )
    assert (cfg.decode.max_answer_len, cfg.decode.top_k, cfg.decode.handle_no_answer) == (30, 1, False)


def test_yaml_layers_and_overrides(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("decode:\n  top_k: 3\nbatch:\n  max_batch_windows: 8\n")
    b = tmp_path / "b.yaml"
    b.write_text("decode:\n  handle_no_answer: true\n")
    cfg = load_config([str(a), str(b)], ["decode.null_threshold=1.5", "input.passthrough_columns=[title]"])
    assert cfg.decode.top_k == 3 and cfg.decode.handle_no_answer and cfg.decode.null_threshold == 1.5
    assert cfg.batch.max_batch_windows == 8
    assert cfg.input.passthrough_columns == ("title",)
    assert cfg.config_hash() != QAConfig().config_hash()
    assert (
        load_config([str(a), str(b)], ["decode.null_threshold=1.5", "input.passthrough_columns=[title]"])
        == cfg
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("decode.topk=3", "unknown key"),
        ("decoder.top_k=3", "unknown config section"),
        ("decode.top_k=zero", "expected an int"),
        ("decode.top_k=0", "top_k must be >= 1"),
        ("featurize.doc_stride=400", "doc_stride"),
        ("model.dtype=fp8", "not one of"),
        ("model.worker_models=auto", "not one of"),
        ("decode.handle_no_answer=1", "true/false"),
        ("input.passthrough_columns=[answer]", "collide"),
        ("top_k", "section.key=value"),
    ],
)
def test_bad_values_are_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config([], [override])


def test_shipped_config_files_load() -> None:
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files, "configs/ must hold YAML files"
    for file in files:
        load_config([str(CONFIGS / "base.yaml"), str(file)])


def test_unreadable_file() -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(["/nonexistent/config.yaml"])
