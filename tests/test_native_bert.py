"""docqa's own BERT encoder and tokenizer loading, against transformers on the same checkpoints.

A plain local BERT QA checkpoint loads without transformers (`model.implementation: auto`); these tests
compare what it loads with what transformers loads (tokenizer pipeline, ids, logits, answers), check
that every checkpoint that could load differently goes through transformers, and that a whole
`docqa predict` on the bundled model never imports transformers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qa_core.config import DEFAULT_MODEL, ModelConfig, RuntimeConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.loading import load_qa_model, read_model_limits
from qa_core.runtime.native_bert import NativeBertForQA
from qa_core.runtime.native_checkpoint import native_refusal

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "questions.parquet"

PAIRS = [
    ("What river flows through London?", "The Thames flows through London, past Westminster. " * 12),
    ("Who wrote it?", "Nobody knows who wrote it: the manuscript is anonymous."),
    ("Wie heißt die Stadt?", "Die Stadt heißt München 🍺, und sie liegt an der Isar. 東京 ist weit weg."),
]


def _load(model_dir: Path | str, implementation: str = "auto", **model: Any) -> Any:
    config = ModelConfig(name_or_path=str(model_dir), implementation=implementation, **model)  # type: ignore[arg-type]
    return load_qa_model(config, RuntimeConfig(device="cpu"))


def _batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    """PAIRS encoded with the tokenizer's own pair template and padded: (B, P) each."""
    encodings = tokenizer.backend_tokenizer.encode_batch(PAIRS)
    length = max(len(e.ids) for e in encodings)
    arrays = {
        name: np.zeros((len(PAIRS), length), np.int64)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    for row, encoding in enumerate(encodings):
        size = len(encoding.ids)
        arrays["input_ids"][row, :size] = encoding.ids
        arrays["attention_mask"][row, :size] = 1
        arrays["token_type_ids"][row, :size] = encoding.type_ids
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def _copy(model_dir: Path, target: Path, file: str | None = None, **changes: Any) -> Path:
    shutil.copytree(model_dir, target)
    if file is not None:
        document = json.loads((target / file).read_text())
        document.update(changes)
        (target / file).write_text(json.dumps(document))
    return target


@pytest.mark.parametrize("which", ["bundled", "tiny"])
def test_native_loading_equals_transformers(which: str, tiny_model_dir: Path) -> None:
    model_dir = DEFAULT_MODEL if which == "bundled" else str(tiny_model_dir)
    assert native_refusal(ModelConfig(name_or_path=model_dir)) is None
    native, reference = _load(model_dir), _load(model_dir, "transformers")
    assert isinstance(native.model, NativeBertForQA)
    assert not isinstance(reference.model, NativeBertForQA)
    # The same tokenizer pipeline (what featurization copies), ids and special tokens.
    assert json.loads(native.tokenizer.backend_tokenizer.to_str()) == json.loads(
        reference.tokenizer.backend_tokenizer.to_str()
    )
    for member in ("cls_token_id", "pad_token_id", "vocab_size"):
        assert getattr(native.tokenizer, member) == getattr(reference.tokenizer, member)
    assert len(native.tokenizer) == len(reference.tokenizer)
    assert native.tokenizer.get_vocab() == reference.tokenizer.get_vocab()
    assert native.tokenizer.num_special_tokens_to_add(
        pair=True
    ) == reference.tokenizer.num_special_tokens_to_add(pair=True)
    assert native.limits == reference.limits
    # The same logits at every real token, padding included in the batch.
    batch = _batch(reference.tokenizer)
    with torch.inference_mode():
        ours, theirs = native.model(**batch), reference.model(**batch)
    real = batch["attention_mask"].bool()
    for mine, expected in ((ours.start_logits, theirs.start_logits), (ours.end_logits, theirs.end_logits)):
        assert mine.shape == expected.shape
        torch.testing.assert_close(mine[real], expected[real], rtol=1e-5, atol=1e-5)


def test_native_bf16_and_int8_follow_transformers(tiny_model_dir: Path) -> None:
    """The dtype and the int8 quantization apply to the native module as to transformers'."""
    batch = _batch(_load(tiny_model_dir).tokenizer)
    real = batch["attention_mask"].bool()
    for settings, tolerance in (({"quantize": "int8"}, 1e-4), ({"dtype": "bf16"}, 2e-2)):
        if settings.get("dtype") == "bf16":
            from qa_core.runtime.cpu import probe_cpu

            if not probe_cpu().has_native_bf16:
                continue
        native, reference = (
            _load(tiny_model_dir, **settings),
            _load(tiny_model_dir, "transformers", **settings),
        )
        with torch.inference_mode():
            ours, theirs = native.model(**batch), reference.model(**batch)
        torch.testing.assert_close(
            ours.start_logits[real].float(), theirs.start_logits[real].float(), rtol=tolerance, atol=tolerance
        )


def test_the_meta_skeleton_gives_the_loaded_limits(tiny_model_dir: Path) -> None:
    config = ModelConfig(name_or_path=str(tiny_model_dir))
    assert read_model_limits(config) == _load(tiny_model_dir).limits


@pytest.mark.parametrize(
    ("file", "changes", "reason"),
    [
        ("config.json", {"hidden_act": "gelu_new"}, "hidden_act is 'gelu_new'"),
        ("config.json", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ("config.json", {"model_type": "roberta"}, "model_type is 'roberta'"),
        ("config.json", {"architectures": ["BertForMaskedLM"]}, "architectures"),
        ("tokenizer_config.json", {"do_lower_case": False}, "normalizer differ"),
        ("tokenizer_config.json", {"strip_accents": True}, "normalizer differ"),
        ("tokenizer_config.json", {"tokenizer_class": "RobertaTokenizer"}, "tokenizer_class"),
        ("tokenizer_config.json", {"mask_token": "[MSK]"}, "added tokens"),
    ],
)
def test_checkpoints_that_could_load_differently_go_through_transformers(
    tmp_path: Path, tiny_model_dir: Path, file: str, changes: dict[str, Any], reason: str
) -> None:
    changed = _copy(tiny_model_dir, tmp_path / "changed", file, **changes)
    refusal = native_refusal(ModelConfig(name_or_path=str(changed)))
    assert refusal is not None and reason in refusal
    with pytest.raises(
        ModelLoadError, match=r"model\.implementation=native cannot load .*" + reason.split(maxsplit=1)[0]
    ):
        _load(changed, "native")


def test_a_cased_config_over_a_lowercasing_tokenizer_json_loads_as_transformers_does(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """transformers rebuilds the normalizer from tokenizer_config.json: auto must not use tokenizer.json's."""
    changed = _copy(tiny_model_dir, tmp_path / "changed", "tokenizer_config.json", do_lower_case=False)
    loaded = _load(changed)
    assert not isinstance(loaded.model, NativeBertForQA)
    assert loaded.tokenizer.backend_tokenizer.encode("London").tokens != ["london"]


def test_sharded_or_pickle_weights_and_hub_ids_are_not_native(tmp_path: Path, tiny_model_dir: Path) -> None:
    sharded = _copy(tiny_model_dir, tmp_path / "sharded")
    (sharded / "model.safetensors.index.json").write_text("{}")
    assert "one model.safetensors" in (native_refusal(ModelConfig(name_or_path=str(sharded))) or "")
    assert "hub id" in (native_refusal(ModelConfig(name_or_path="org/some-bert")) or "")
    assert "transformers" in (native_refusal(ModelConfig(implementation="transformers")) or "")


def test_a_whole_predict_on_the_bundled_model_never_imports_transformers(tmp_path: Path) -> None:
    """The point of the native path: a command's fixed cost without transformers' import."""
    out = tmp_path / "out"
    code = (
        "import sys\n"
        "from docqa.cli import main\n"
        f"code = main(['predict', '--input', {str(SAMPLE)!r}, '--output', {str(out)!r},"
        " '--no-progress'])\n"
        "leaked = sorted(m for m in sys.modules if m == 'transformers' or m.startswith('transformers.'))\n"
        "print('leaked', len(leaked), leaked[:3]); sys.exit(code or (3 if leaked else 0))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert (out / "COMPLETED").exists() and (out / "report.html").exists()
    assert json.loads((out / "_run.json").read_text())["model"]["implementation"] == "native"


def test_run_json_names_what_ran(tiny_model_dir: Path) -> None:
    from qa_core.runtime.native_checkpoint import model_implementation

    assert model_implementation(ModelConfig(name_or_path=str(tiny_model_dir))) == "native"
    assert model_implementation(
        ModelConfig(name_or_path=str(tiny_model_dir), implementation="transformers")
    ) == ("transformers")
    assert model_implementation(ModelConfig(name_or_path="org/some-bert")) == "transformers"  # a hub id
    assert model_implementation(ModelConfig(name_or_path="/models/on/the/workers")) is None


def _mask_lstrip(directory: Path) -> None:
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    stored = json.loads((directory / "tokenizer.json").read_text())
    decoder = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in stored["added_tokens"]}
    mask = next(key for key, token in decoder.items() if token["content"] == "[MASK]")
    decoder[mask]["lstrip"] = True  # transformers takes these flags over tokenizer.json's
    (directory / "tokenizer_config.json").write_text(
        json.dumps({**settings, "added_tokens_decoder": decoder})
    )


def _no_mask_added_token(directory: Path) -> None:
    """[MASK] missing from tokenizer.json's added tokens: transformers adds BertTokenizer's default."""
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    settings.pop("mask_token")
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    stored = json.loads((directory / "tokenizer.json").read_text())
    stored["added_tokens"] = [t for t in stored["added_tokens"] if t["content"] != "[MASK]"]
    (directory / "tokenizer.json").write_text(json.dumps(stored))


def _weights(change: str) -> Any:
    def rewrite(directory: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(directory / "model.safetensors")
        if change == "int8":
            weights["qa_outputs.weight"] = weights["qa_outputs.weight"].to(torch.int8)
        else:  # legacy LayerNorm names, which transformers renames on load
            weights["bert.embeddings.LayerNorm.gamma"] = weights.pop("bert.embeddings.LayerNorm.weight")
        save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})

    return rewrite


def _write(name: str, document: dict[str, Any]) -> Any:
    return lambda directory: (directory / name).write_text(json.dumps(document))


def _update(name: str, **changes: Any) -> Any:
    def update(directory: Path) -> None:
        document = json.loads((directory / name).read_text())
        (directory / name).write_text(json.dumps({**document, **changes}))

    return update


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_update("config.json", quantization_config={"quant_method": "bitsandbytes"}), "quantization_config"),
        (_weights("int8"), "I8 tensors"),
        (_weights("legacy"), "legacy names"),
        (_mask_lstrip, "added_tokens_decoder differs"),
        (_no_mask_added_token, "added tokens are not exactly"),
        (_update("tokenizer_config.json", additional_special_tokens=["[X]"]), "additional_special_tokens"),
        (_update("tokenizer_config.json", bos_token="[CLS]"), "bos_token"),
        (_write("special_tokens_map.json", {"cls_token": "[CLS]"}), "special_tokens_map.json"),
    ],
)
def test_weights_and_tokenizer_files_transformers_reads_otherwise_are_not_native(
    tmp_path: Path, tiny_model_dir: Path, change: Any, reason: str
) -> None:
    changed = _copy(tiny_model_dir, tmp_path / "changed")
    change(changed)
    refusal = native_refusal(ModelConfig(name_or_path=str(changed)))
    assert refusal is not None and reason in refusal


def test_special_tokens_the_config_leaves_out_take_the_bert_defaults(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    changed = _copy(tiny_model_dir, tmp_path / "changed")
    settings = json.loads((changed / "tokenizer_config.json").read_text())
    for key in ("cls_token", "pad_token"):
        settings.pop(key)
    (changed / "tokenizer_config.json").write_text(json.dumps(settings))
    assert native_refusal(ModelConfig(name_or_path=str(changed))) is None
    native, reference = _load(changed), _load(changed, "transformers")
    assert (native.tokenizer.cls_token_id, native.tokenizer.pad_token_id) == (
        reference.tokenizer.cls_token_id,
        reference.tokenizer.pad_token_id,
    )
    assert native.tokenizer.cls_token_id is not None
