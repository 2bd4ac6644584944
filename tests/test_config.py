"""Config: defaults, YAML layering, overrides, unknown keys and checks."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
import yaml

from docqa.cli import main as cli_main
from qa_core.config import DEFAULT_MODEL, OTHER_SECTIONS, QAConfig, load_config
from qa_core.errors import ConfigError
from qa_core.train.config import TrainConfig, load_train_config, train_config_from_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults() -> None:
    cfg = QAConfig()
    featurize = cfg.featurize
    assert (featurize.max_seq_len, featurize.doc_stride, featurize.min_context_tokens) == (384, 128, 160)
    assert featurize.max_question_len is None  # the whole question, when it leaves the context its room
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
        ("runtime.worker_models=auto", "not one of"),
        ("runtime.workers=0", "runtime.workers must be >= 1"),
        ("train.lr=1", "unknown key"),
        ("train.featurize=1", "featurize section"),
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


def test_base_yaml_is_the_reference_of_every_key_and_default() -> None:
    """configs/base.yaml lists every section and key, each with its default and a comment."""
    text = (CONFIGS / "base.yaml").read_text()
    raw = yaml.safe_load(text)
    sections = {f.name: getattr(QAConfig(), f.name) for f in dataclasses.fields(QAConfig)}
    sections["train"] = TrainConfig()
    assert set(raw) == set(sections) and set(OTHER_SECTIONS) <= set(raw)
    for name, defaults in sections.items():
        keys = {f.name for f in dataclasses.fields(defaults)} - ({"featurize"} if name == "train" else set())
        assert set(raw[name]) == keys, f"section {name}: base.yaml {sorted(raw[name])} != {sorted(keys)}"
    assert load_config([str(CONFIGS / "base.yaml")]) == QAConfig()
    assert train_config_from_dict(raw) == TrainConfig()
    for line in text.splitlines():
        if re.match(r"^  \w+:", line):
            assert re.search(r"#\s*\S", line), f"base.yaml: no comment on {line!r}"


def test_bundled_names_the_default_model() -> None:
    assert raw_model_default() == "bundled"
    assert load_config([], ["model.name_or_path=bundled"]).model.name_or_path == DEFAULT_MODEL


def raw_model_default() -> str:
    return str(yaml.safe_load((CONFIGS / "base.yaml").read_text())["model"]["name_or_path"])


def test_runtime_keys_moved_out_of_model_and_batch(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING)
    old = load_config(
        [],
        [
            "model.device=cpu",
            "model.require_gpu=true",
            "model.worker_models=shared",
            "batch.prefetch_buffers=2",
        ],
    )
    assert dataclasses.asdict(old.runtime) == {
        "device": "cpu",
        "require_gpu": True,
        "workers": 1,
        "worker_models": "shared",
        "prefetch_buffers": 2,
        "host_tuning": True,
        "context_cache_mb": 256,
    }
    assert "model.device is deprecated; use runtime.device" in caplog.text
    assert "batch.prefetch_buffers is deprecated; use runtime.prefetch_buffers" in caplog.text
    # The same value both ways is fine; different values in one layer are an error.
    assert load_config([], ["model.device=cpu", "runtime.device=cpu"]).runtime.device == "cpu"
    with pytest.raises(ConfigError, match=r"model.device='cuda' \(deprecated\) contradicts runtime.device"):
        load_config([], ["model.device=cuda", "runtime.device=cpu"])
    # Across layers the later one wins: an old-style overlay over base.yaml's runtime section.
    overlay = tmp_path / "old.yaml"
    overlay.write_text("model:\n  device: cpu\n  dtype: bf16\n")
    layered = load_config([str(CONFIGS / "base.yaml"), str(overlay)])
    assert layered.runtime.device == "cpu" and layered.model.dtype == "bf16"
    assert load_config([str(overlay)], ["runtime.device=auto"]).runtime.device == "auto"


def test_int8_needs_fp32_on_a_cpu() -> None:
    assert load_config([], ["model.quantize=int8", "runtime.device=cpu"]).model.quantize == "int8"
    with pytest.raises(ConfigError, match=r"runtime\.device=cpu"):
        load_config([], ["model.quantize=int8", "runtime.device=cuda"])
    with pytest.raises(ConfigError, match="fp32"):
        load_config([], ["model.quantize=int8", "model.dtype=bf16"])


def test_train_section_uses_the_same_loader(tmp_path: Path) -> None:
    file = tmp_path / "train.yaml"
    file.write_text("featurize:\n  max_seq_len: 256\ntrain:\n  learning_rate: 0.001\n  seed: 7\n")
    inference, train = load_train_config([str(file)], ["train.seed=8"], {"train": {"batch_size": 4}})
    assert train.featurize == inference.featurize and train.featurize.max_seq_len == 256
    assert (train.learning_rate, train.seed, train.batch_size) == (0.001, 8, 4)
    with pytest.raises(ConfigError, match="expected a number"):
        load_train_config([], ["train.learning_rate=fast"])


def _output_columns() -> list[str]:
    """Every fixed column of the answers and rejections tables, as qa_core/io/schema.py writes them."""
    import pyarrow as pa

    from qa_core.io.schema import answer_schema, rejection_schema

    return sorted(
        set(answer_schema(pa.string(), top_k=2).names) | set(rejection_schema(pa.string(), []).names)
    )


@pytest.mark.parametrize("column", _output_columns())
def test_passthrough_naming_an_output_column_is_refused(column: str) -> None:
    with pytest.raises(ConfigError, match=rf"\['{column}'\] collide.*remove") as raised:
        load_config([], [f"input.passthrough_columns=[title, {column}]"])
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match=f"'{column}'"):
        load_config([], ["input.id_column=qid", f"input.passthrough_columns=[{column}]"])


def test_reserved_output_columns_are_the_schema_columns() -> None:
    from qa_core.config import RESERVED_OUTPUT_COLUMNS

    assert sorted(RESERVED_OUTPUT_COLUMNS) == _output_columns()


def test_passthrough_listing_a_column_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"input.passthrough_columns names 'title' twice"):
        load_config([], ["input.passthrough_columns=[title, lang, title]"])


def test_passthrough_may_copy_the_question_context_and_a_renamed_id() -> None:
    """The answers hold no question/context column, and the id is written as `id`: no clash."""
    config = load_config([], ["input.id_column=qid", "input.passthrough_columns=[question, context, qid]"])
    assert config.input.columns == ["qid", "question", "context"]
    assert config.input.passthrough_columns == ("question", "context", "qid")


def test_predict_refuses_a_passthrough_clash_in_one_line(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    from docqa.cli import main
    from tests.conftest import write_parquet

    source = write_parquet(tmp_path / "in.parquet", [{"id": "a", "question": "q?", "context": "the city"}])
    out = tmp_path / "out"
    argv = ["predict", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*argv, "--no-progress", "--set", "input.passthrough_columns=[question]"]) == 0
    answers = pq.read_table(out / "answers")
    assert answers.schema.names.count("question") == 1 and answers.column("question").to_pylist() == ["q?"]
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = main([*argv, "--no-progress", "--overwrite", "--set", "input.passthrough_columns=[id]"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("docqa ")]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and "'id'" in lines[0] and "input.passthrough_columns" in lines[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("value", ["1e-320", "0", "-1", "1e9", ".nan", ".inf"])
def test_temperatures_that_break_the_softmax_are_refused(value: str) -> None:
    """1e-320 passed `> 0` and made every score NaN (logits / T overflows to inf, inf - inf = NaN)."""
    with pytest.raises(ConfigError, match=r"decode\.temperature must be between"):
        load_config(overrides=[f"decode.temperature={value}"])


def test_non_finite_null_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match="null_threshold must be a finite number"):
        load_config(overrides=["decode.null_threshold=.nan"])


@pytest.mark.parametrize(
    "text", ["featurize:\n  max_seq_len: [1\n", "featurize:\n\tmax_seq_len: 1\n", "a: b: c\n"]
)
def test_yaml_syntax_errors_are_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config([str(path)])
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "line " in message


def test_set_values_that_are_not_yaml_are_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(overrides=["batch.max_batch_windows=[1"])
    assert "\n" not in str(caught.value) and "--set" in str(caught.value)


def test_yaml_syntax_error_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("decode:\n  top_k: [1\n")
    code = cli_main(
        ["predict", "--input", "x.parquet", "--output", str(tmp_path / "o"), "--config", str(path)]
    )
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_exponent_numbers_without_a_dot_are_numbers() -> None:
    """YAML 1.1 reads `2e-1` as a string; a float setting takes it as the number it looks like."""
    assert load_config(overrides=["decode.temperature=2e-1"]).decode.temperature == 0.2


def test_the_bundled_model_travels_to_workers_as_bundled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config pickled to a worker (Beam, Spark) names the worker's own installed copy, not the path
    of the launcher's installation; its hash is the same on both."""
    import pickle

    import qa_core.config_sections as sections_module  # where ModelConfig reads DEFAULT_MODEL

    config = load_config([], [])
    here, digest = config.model.name_or_path, config.config_hash()
    assert here == DEFAULT_MODEL and config.model.is_bundled
    sent = pickle.dumps(config)
    monkeypatch.setattr(
        sections_module, "DEFAULT_MODEL", "/opt/elsewhere/qa_core/models/docqa-minilm-l6-squad"
    )
    there = pickle.loads(sent)
    assert there.model.name_or_path == "/opt/elsewhere/qa_core/models/docqa-minilm-l6-squad"
    assert there.config_hash() == digest
    other = load_config([], ["model.name_or_path=/data/my-model"])
    assert pickle.loads(pickle.dumps(other)).model.name_or_path == "/data/my-model"  # explicit paths stay
