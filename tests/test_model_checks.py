"""Models and configs refused before any work: a tokenizer that is not the model's, weights that do not fit
config.json or leave part of the model random, a config whose windows the model cannot run, bf16/fp16 on a
CPU that would emulate it. Each is one line and exit code 2 from `docqa predict`, with no `COMPLETED`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from docqa.cli import main
from qa_core.config import Dtype, Implementation, ModelConfig, QAConfig, RuntimeConfig, load_config
from qa_core.errors import ConfigError, ModelLoadError
from qa_core.runtime import cpu
from qa_core.runtime.cpu import CpuCapability
from qa_core.runtime.fit import ModelLimits, check_config_fits_model, model_limits
from qa_core.runtime.loaders import load_runner, load_tokenizer, read_model_limits
from qa_core.runtime.loaders.native import load_native_module
from tests.conftest import DATA, write_parquet

ROWS: list[dict[str, object]] = [
    {"id": "a", "question": "what city?", "context": "the city of the river is north of the church"},
    {"id": "b", "question": "which team?", "context": "the team won the war in 1999"},
]
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
AVX2 = CpuCapability("AVX2", "x86_64", False, False, ("avx2",), "test")


def _copy(model_dir: Path, target: Path, **config_changes: Any) -> Path:
    shutil.copytree(model_dir, target)
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        config.update(config_changes)
        (target / "config.json").write_text(json.dumps(config))
    return target


def _load(model_dir: Path, dtype: Dtype = "fp32", implementation: Implementation = "auto") -> Any:
    config = ModelConfig(name_or_path=str(model_dir), dtype=dtype, implementation=implementation)
    return load_runner(config, RuntimeConfig(device="cpu"))


# The weight checks of both loaders: docqa's encoder (as certification and a certified load run them; a
# changed file voids a certificate, so these checkpoints would go to transformers under `auto`) and
# transformers'.
BOTH_LOADERS = pytest.mark.parametrize("loader", ["native", "transformers"])


def _load_with(model_dir: Path, loader: str) -> str:
    """Loads `model_dir`'s weights through one loader's checks; returns the name it loaded."""
    if loader == "native":
        load_native_module(model_dir, torch.float32, str(model_dir))
        return str(model_dir)
    return str(_load(model_dir, implementation="transformers").model_id)


def _predict(tmp_path: Path, model_dir: Path, *extra: str, out: Path | None = None) -> tuple[int, Path]:
    source = tmp_path / "in.parquet"
    if not source.exists():
        write_parquet(source, ROWS)
    out = out or tmp_path / "out"
    argv = ["predict", "--input", str(source), "--output", str(out), "--model", str(model_dir)]
    return main([*argv, "--no-progress", "--no-report", *extra]), out


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of a job error on stderr (log lines of the run go to the root logger's handler)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("docqa predict: error: ")]
    assert len(errors) == 1, lines
    assert not any(
        "Traceback" in line or "LOAD REPORT" in line or "Loading weights" in line for line in lines
    )
    return errors[0]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- 1. the tokenizer must be the model's ---------------------------------------------------------------


def test_a_checkpoint_without_tokenizer_files_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    """transformers builds an empty 5-token tokenizer for it: every word would be [UNK]."""
    bare = _copy(tiny_model_dir, tmp_path / "bare")
    for name in TOKENIZER_FILES:
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=r"has no tokenizer files .*5 tokens for a model of 272") as err:
        load_tokenizer(ModelConfig(name_or_path=str(bare)))
    assert str(bare) in str(err.value) and "\n" not in str(err.value)


def test_only_a_tokenizer_config_left_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    partial = _copy(tiny_model_dir, tmp_path / "partial")
    for name in ("tokenizer.json", "vocab.txt"):
        (partial / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=r"it has only tokenizer_config\.json"):
        load_tokenizer(ModelConfig(name_or_path=str(partial)))


def test_tokenizer_ids_beyond_the_embeddings_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Tokens added to the tokenizer but not to the embedding matrix would fail every forward."""
    from transformers import AutoTokenizer

    grown = _copy(tiny_model_dir, tmp_path / "grown")
    tokenizer = AutoTokenizer.from_pretrained(grown)
    tokenizer.add_tokens(["zzfirst", "zzsecond"])
    tokenizer.save_pretrained(grown)
    with pytest.raises(ModelLoadError, match=r"has ids up to 273, beyond the model's 272 token embeddings"):
        load_tokenizer(ModelConfig(name_or_path=str(grown)))


def test_a_slightly_smaller_tokenizer_is_normal(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Embedding rows padded to a multiple of 64 or 128 leave ids no token uses."""
    padded = _copy(tiny_model_dir, tmp_path / "padded", vocab_size=384)
    load_tokenizer(ModelConfig(name_or_path=str(padded)))  # 272 tokens of 384 rows: no error


def _save_model(directory: Path, model: Any) -> Path:
    from transformers import BertTokenizerFast

    model.save_pretrained(directory, safe_serialization=True)
    BertTokenizerFast(vocab=str(DATA / "vocab.txt"), do_lower_case=True).save_pretrained(directory)
    return directory


def _tiny_bert_config(**changes: Any) -> Any:
    from transformers import BertConfig

    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    return BertConfig(vocab_size=272, **{**sizes, **changes})


def test_segment_ids_beyond_type_vocab_size_are_refused(tmp_path: Path) -> None:
    """A BERT tokenizer gives the context segment id 1; a model with type_vocab_size=1 has no row for it."""
    from transformers import BertForQuestionAnswering

    one_segment = _save_model(
        tmp_path / "one", BertForQuestionAnswering(_tiny_bert_config(type_vocab_size=1))
    )
    with pytest.raises(ModelLoadError, match="segment ids up to 1, and the model has type_vocab_size=1"):
        _load(one_segment)


def test_a_tokenizer_of_another_family_is_refused_by_its_pad_id(tmp_path: Path) -> None:
    """A RoBERTa-style model numbers positions from its padding id; a BERT tokenizer pads with another."""
    from transformers import RobertaConfig, RobertaForQuestionAnswering

    config = RobertaConfig(
        vocab_size=272,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=514,
        type_vocab_size=2,
    )
    roberta = _save_model(tmp_path / "roberta", RobertaForQuestionAnswering(config))
    with pytest.raises(
        ModelLoadError, match="pads with id 0, and the model counts positions from padding id 1"
    ):
        _load(roberta)
    # Its position limit is derived from the module: 514 rows less the padding offset (1 + 1).
    limits = model_limits(
        RobertaForQuestionAnswering(config), load_tokenizer(ModelConfig(name_or_path=str(roberta))), "r"
    )
    assert limits.max_positions == 512 and "padding offset 2" in limits.positions_origin


def test_cli_refuses_a_checkpoint_without_tokenizer_files(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = _copy(tiny_model_dir, tmp_path / "bare")
    for name in TOKENIZER_FILES:
        (bare / name).unlink(missing_ok=True)
    code, out = _predict(tmp_path, bare)
    assert code == 2 and "has no tokenizer files" in _one_error_line(capsys)
    assert not (out / "COMPLETED").exists()


# --- 2. weights that do not fit config.json, or leave part of the model random ------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 64}, r"bert\.embeddings\..* is \[32\] in the checkpoint but \[64\] by config.json"),
        ({"num_labels": 3}, r"qa_outputs\.bias is \[2\] in the checkpoint but \[3\] by config.json"),
        ({"vocab_size": 300}, r"word_embeddings\.weight is \[272, 32\] in the checkpoint but \[300, 32\]"),
        ({"num_hidden_layers": 3}, r"config.json builds weights the checkpoint lacks .*layer\.2\."),
        ({"num_hidden_layers": 1}, r"hold layers its config.json does not build \(bert\.encoder\.layer\.1\."),
    ],
)
@BOTH_LOADERS
def test_weights_that_do_not_fit_the_config_are_refused(
    tmp_path: Path,
    tiny_model_dir: Path,
    changes: dict[str, int],
    message: str,
    loader: str,
) -> None:
    """transformers raises a RuntimeError for the shapes, and silently randomizes missing layers."""
    changed = _copy(tiny_model_dir, tmp_path / "changed", **changes)
    with pytest.raises(ModelLoadError, match=message) as err:
        _load_with(changed, loader)
    assert str(changed) in str(err.value) and "\n" not in str(err.value)


@BOTH_LOADERS
def test_a_base_model_without_a_qa_head_is_refused(tmp_path: Path, loader: str) -> None:
    """A checkpoint saved from the encoder alone would get a randomly initialized span head."""
    from transformers import BertModel

    base = _save_model(tmp_path / "base", BertModel(_tiny_bert_config(), add_pooling_layer=False))
    # transformers maps the encoder's unprefixed names; docqa's encoder finds none of its weights.
    listed = r"qa_outputs\.bias, qa_outputs\.weight" if loader == "transformers" else r"bert\..* more"
    with pytest.raises(ModelLoadError, match=r"no trained QA head .*" + listed + " would be random"):
        _load_with(base, loader)


@BOTH_LOADERS
def test_unused_weights_outside_the_model_are_ignored(
    tmp_path: Path, tiny_model_dir: Path, loader: str
) -> None:
    """A pooler or pretraining head in the checkpoint is no reason to refuse it (a warning says so)."""
    from safetensors.torch import load_file, save_file

    extra = _copy(tiny_model_dir, tmp_path / "extra")
    weights = load_file(extra / "model.safetensors")
    weights["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    save_file(weights, extra / "model.safetensors", metadata={"format": "pt"})
    assert _load_with(extra, loader) == str(extra)


def test_the_load_report_is_held_back(tmp_path: Path, tiny_model_dir: Path) -> None:
    """transformers' multi-line LOAD REPORT table never reaches a handler: the refusal is the one line."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    source = logging.getLogger("transformers.modeling_utils")
    source.addHandler(handler)
    try:
        with pytest.raises(ModelLoadError):
            _load(_copy(tiny_model_dir, tmp_path / "changed", num_labels=3), implementation="transformers")
    finally:
        source.removeHandler(handler)
    assert not [r for r in records if "LOAD REPORT" in r.getMessage()]


def test_cli_refuses_weights_of_other_shapes_and_keeps_an_earlier_output(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _predict(tmp_path, tiny_model_dir)
    assert code == 0 and (out / "COMPLETED").exists()
    before = _snapshot(out)
    capsys.readouterr()
    changed = _copy(tiny_model_dir, tmp_path / "changed", hidden_size=64)
    code, _ = _predict(tmp_path, changed, "--overwrite")
    assert code == 2 and "do not fit its config.json" in _one_error_line(capsys)
    assert _snapshot(out) == before


# --- 3. a config whose windows the model cannot run ------------------------------------------------------


LIMITS = ModelLimits("models/m", 512, "512 position embeddings", has_cls=True)


@pytest.mark.parametrize(
    ("overrides", "limits", "message"),
    [
        (
            ["featurize.max_seq_len=1024"],
            LIMITS,
            "featurize.max_seq_len=1024 exceeds what the model accepts (512 positions: 512 position "
            "embeddings of models/m); set featurize.max_seq_len <= 512",
        ),
        (
            ["featurize.max_seq_len=500", "batch.pad_to_multiple_of=384"],
            LIMITS,
            "batch.pad_to_multiple_of=384 pads windows of featurize.max_seq_len=500 tokens to 768 positions, "
            "beyond what the model accepts (512 positions: 512 position embeddings of models/m); set "
            "batch.pad_to_multiple_of=64 or featurize.max_seq_len <= 384",
        ),
        (
            ["featurize.max_seq_len=510", "batch.pad_to_multiple_of=64"],
            ModelLimits("roberta", 510, "512 position embeddings less the padding offset 2", has_cls=True),
            "to 512 positions, beyond what the model accepts (510 positions: 512 position embeddings "
            "less the padding offset 2 of roberta); set batch.pad_to_multiple_of=2 or "
            "featurize.max_seq_len <= 448",
        ),
    ],
)
def test_windows_beyond_the_positions_are_refused(
    overrides: list[str], limits: ModelLimits, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        check_config_fits_model(load_config([], overrides), limits)
    assert message in str(err.value)


def test_windows_that_fit_pass() -> None:
    check_config_fits_model(QAConfig(), LIMITS)
    check_config_fits_model(
        load_config([], ["featurize.max_seq_len=512", "batch.pad_to_multiple_of=64"]), LIMITS
    )
    unbounded = ModelLimits("m", None, "no absolute position limit", has_cls=True)
    check_config_fits_model(load_config([], ["featurize.max_seq_len=4096"]), unbounded)


def test_no_answer_handling_needs_a_cls_token(tiny_model: Any) -> None:
    from tokenizers.processors import TemplateProcessing

    config = load_config([], ["decode.handle_no_answer=true"])
    check_config_fits_model(config, tiny_model.limits)  # BERT: [CLS] q [SEP] c [SEP]
    tokenizer = load_tokenizer(ModelConfig(name_or_path=tiny_model.model_id))
    sep = tokenizer.sep_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="$A [SEP]", pair="$A [SEP] $B:1 [SEP]:1", special_tokens=[("[SEP]", sep)]
    )
    limits = model_limits(tiny_model.model, tokenizer, "no-cls")
    assert not limits.has_cls
    with pytest.raises(
        ConfigError, match=r"puts no CLS token in its windows .*decode\.handle_no_answer=false"
    ):
        check_config_fits_model(config, limits)
    check_config_fits_model(QAConfig(), limits)  # without no-answer handling a CLS is not needed


def test_limits_come_from_the_model_loaded_or_not(tiny_model: Any, tiny_model_dir: Path) -> None:
    assert tiny_model.limits == ModelLimits(str(tiny_model_dir), 512, "512 position embeddings", True)
    # A meta-device skeleton of the checkpoint (no weights): what `--workers N`'s parent can check.
    assert read_model_limits(ModelConfig(name_or_path=str(tiny_model_dir))) == tiny_model.limits


def test_the_bundled_model_limits() -> None:
    from qa_core.config import DEFAULT_MODEL

    limits = read_model_limits(ModelConfig(name_or_path=DEFAULT_MODEL, dtype="fp32"))
    assert limits.max_positions == 512 and limits.has_cls
    check_config_fits_model(QAConfig(), limits)


def test_a_device_client_has_the_served_model_limits(tiny_model: Any) -> None:
    """`--workers N` with a shared model: the workers' engines see the server's model limits."""
    import pickle

    from qa_core.runtime.device_server import ClientChannel, DeviceClient, ServedModel

    channel = ClientChannel(0, None, None)
    served = pickle.loads(pickle.dumps(ServedModel("m", "r", "cpu", 0, tiny_model.limits)))
    assert DeviceClient(tiny_model.tokenizer, channel, served).limits == tiny_model.limits
    untold = DeviceClient(tiny_model.tokenizer, channel, ServedModel("m", "r", "cpu", 0)).limits
    assert untold.max_positions is None and untold.has_cls


def test_cli_refuses_max_seq_len_beyond_the_model(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Today every row becomes MODEL_ERROR and the job exits 0 with COMPLETED."""
    code, out = _predict(tmp_path, tiny_model_dir, "--set", "featurize.max_seq_len=1024")
    assert code == 2 and "featurize.max_seq_len=1024 exceeds" in _one_error_line(capsys)
    assert not (out / "COMPLETED").exists()


# --- 4. bf16/fp16 on a CPU without native support --------------------------------------------------------


# The dtype rule itself (`qa_core.runtime.cpu.check_cpu_dtype`, the probe): tests/test_cpu_dtype.py.


def test_cli_refuses_bf16_on_a_cpu_without_it(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cpu, "probe_cpu", lambda: AVX2)
    code, out = _predict(tmp_path, tiny_model_dir, "--set", "model.dtype=bf16")
    assert code == 2 and "model.dtype=bf16 on a CPU without native bf16 (found AVX2" in _one_error_line(
        capsys
    )
    assert not out.exists() or not (out / "COMPLETED").exists()
    monkeypatch.setenv("DOCQA_ALLOW_SLOW_DTYPE", "1")
    code, out = _predict(tmp_path, tiny_model_dir, "--set", "model.dtype=bf16", "--overwrite")
    assert code == 0 and (out / "COMPLETED").exists()
