"""docqa's own BERT encoder and tokenizer loading, against transformers on the same checkpoints.

A checkpoint certified at export (`docqa_native.json`, `qa_core.runtime.certify`) loads without
transformers (`model.implementation: auto`); these tests compare what it loads with what transformers
loads (tokenizer pipeline, ids, logits, answers), check that an uncertified or changed checkpoint goes
through transformers, that certification refuses what would load differently, and that a whole
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

from qa_core.config import DEFAULT_MODEL, ModelConfig, QAConfig, RuntimeConfig
from qa_core.engine.loop import QAEngine
from qa_core.errors import ModelLoadError
from qa_core.runtime.certify import certify_checkpoint
from qa_core.runtime.loaders import LOADERS, load_runner, model_implementation, read_model_limits
from qa_core.runtime.loaders.native_manifest import MANIFEST_FILE
from qa_core.runtime.native_bert import NativeBertForQA

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "questions.parquet"

PAIRS = [
    ("What river flows through London?", "The Thames flows through London, past Westminster. " * 12),
    ("Who wrote it?", "Nobody knows who wrote it: the manuscript is anonymous."),
    ("Wie heißt die Stadt?", "Die Stadt heißt München 🍺, und sie liegt an der Isar. 東京 ist weit weg."),
]


def _load(model_dir: Path | str, implementation: str = "auto", **model: Any) -> Any:
    config = ModelConfig(name_or_path=str(model_dir), implementation=implementation, **model)  # type: ignore[arg-type]
    return load_runner(config, RuntimeConfig(device="cpu"))


def _native_refusal(model_dir: Path | str) -> str | None:
    return LOADERS["native"].refusal(ModelConfig(name_or_path=str(model_dir)))


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
    assert (
        _native_refusal(model_dir) is None
        and model_implementation(ModelConfig(name_or_path=model_dir)) == "native"
    )
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


def _mask_lstrip(directory: Path) -> None:
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    stored = json.loads((directory / "tokenizer.json").read_text())
    decoder = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in stored["added_tokens"]}
    mask = next(key for key, token in decoder.items() if token["content"] == "[MASK]")
    decoder[mask]["lstrip"] = True  # transformers takes these flags over tokenizer.json's
    (directory / "tokenizer_config.json").write_text(
        json.dumps({**settings, "added_tokens_decoder": decoder})
    )


def _weights(change: str) -> Any:
    def rewrite(directory: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(directory / "model.safetensors")
        # legacy LayerNorm names, which transformers renames on load
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


def test_native_answers_equal_transformers_on_the_bundled_model() -> None:
    """The certificate's promise, end to end: the same answers, spans and scores from both loaders."""
    rows = [
        {"id": str(k), "question": question, "context": context}
        for k, (question, context) in enumerate(PAIRS)
    ]
    config = QAConfig(model=ModelConfig(name_or_path=DEFAULT_MODEL))
    native = list(QAEngine(_load(DEFAULT_MODEL), config).answer_rows(rows))
    reference = list(QAEngine(_load(DEFAULT_MODEL, "transformers"), config).answer_rows(rows))
    assert len(native) == len(rows) and native == reference


def test_an_uncertified_checkpoint_goes_through_transformers(tmp_path: Path, tiny_model_dir: Path) -> None:
    plain = _copy(tiny_model_dir, tmp_path / "plain")
    (plain / MANIFEST_FILE).unlink()
    assert MANIFEST_FILE in (_native_refusal(plain) or "")
    assert model_implementation(ModelConfig(name_or_path=str(plain))) == "transformers"
    assert not isinstance(_load(plain).model, NativeBertForQA)
    with pytest.raises(ModelLoadError, match=r"model\.implementation=native cannot load .*certify") as err:
        _load(plain, "native")
    assert "\n" not in str(err.value)
    assert certify_checkpoint(plain) is None  # certified again, it loads natively
    assert isinstance(_load(plain).model, NativeBertForQA)


def _rewrite_weights(directory: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / "model.safetensors")
    weights["qa_outputs.bias"] = weights["qa_outputs.bias"] + 1.0
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("change", "file"),
    [
        (_update("config.json", layer_norm_eps=1e-5), "config.json"),
        (_update("tokenizer_config.json", do_lower_case=False), "tokenizer_config.json"),
        (_update("tokenizer.json", padding=None), "tokenizer.json"),  # rewritten: other bytes
        (_write("special_tokens_map.json", {"cls_token": "[CLS]"}), "special_tokens_map.json"),
        (_rewrite_weights, "model.safetensors"),
    ],
)
def test_a_changed_file_voids_the_certificate(
    tmp_path: Path, tiny_model_dir: Path, change: Any, file: str
) -> None:
    changed = _copy(tiny_model_dir, tmp_path / "changed")
    assert _native_refusal(changed) is None
    change(changed)
    refusal = _native_refusal(changed)
    assert refusal is not None and file in refusal and "void" in refusal
    assert not isinstance(_load(changed).model, NativeBertForQA)


def test_a_cased_config_over_a_lowercasing_tokenizer_json_loads_as_transformers_does(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """transformers rebuilds the normalizer from tokenizer_config.json: certification must not pass it."""
    changed = _copy(tiny_model_dir, tmp_path / "changed")
    _update("tokenizer_config.json", do_lower_case=False)(changed)
    assert "normalizer" in (certify_checkpoint(changed) or "")
    loaded = _load(changed)
    assert not isinstance(loaded.model, NativeBertForQA)
    assert loaded.tokenizer.backend_tokenizer.encode("London").tokens != ["london"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_update("config.json", hidden_act="gelu_new"), "hidden_act is 'gelu_new'"),
        (_update("config.json", position_embedding_type="relative_key"), "position_embedding_type"),
        (_update("config.json", model_type="roberta"), "model_type is 'roberta'"),
        (_update("config.json", architectures=["BertForMaskedLM"]), "architectures"),
        (_update("config.json", quantization_config={"quant_method": "x"}), "quantization"),
        (_update("tokenizer_config.json", strip_accents=True), "normalizer"),
        (_update("tokenizer_config.json", mask_token="[MSK]"), "differ"),
        (_update("tokenizer_config.json", additional_special_tokens=["[X]"]), "differ"),
        (_mask_lstrip, "added_tokens"),
        (_weights("legacy"), "not a complete QA checkpoint"),
        (_update("config.json", num_labels=3), "do not fit its config.json"),
        (lambda d: (d / "model.safetensors.index.json").write_text("{}"), "one model.safetensors"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
    ],
)
def test_certification_refuses_what_would_load_differently(
    tmp_path: Path, tiny_model_dir: Path, change: Any, reason: str
) -> None:
    changed = _copy(tiny_model_dir, tmp_path / "changed")
    change(changed)
    refusal = certify_checkpoint(changed)
    assert refusal is not None and reason in refusal, refusal
    assert not (changed / MANIFEST_FILE).exists()


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
    assert model_implementation(ModelConfig(name_or_path=str(tiny_model_dir))) == "native"
    assert model_implementation(
        ModelConfig(name_or_path=str(tiny_model_dir), implementation="transformers")
    ) == ("transformers")
    assert model_implementation(ModelConfig(name_or_path="org/some-bert")) == "transformers"  # a hub id
    assert model_implementation(ModelConfig(name_or_path="/models/on/the/workers")) is None


@pytest.mark.parametrize(
    ("config_change", "manifest_change", "expected"),
    [
        ({"model_type": "roberta"}, {}, "model_type"),  # another model, its hashes re-signed
        ({}, {"max_abs_logit_difference": 0.5}, "beyond its tolerance"),
    ],
)
def test_a_forged_certificate_certifies_nothing(
    tmp_path: Path,
    tiny_model_dir: Path,
    config_change: dict[str, Any],
    manifest_change: dict[str, Any],
    expected: str,
) -> None:
    """A manifest whose file hashes match, but that no certification could have written, is refused."""
    from qa_core.runtime.loaders.native_manifest import MANIFEST_FILE, certified_files

    forged = _copy(tiny_model_dir, tmp_path / "forged")
    config = json.loads((forged / "config.json").read_text())
    (forged / "config.json").write_text(json.dumps({**config, **config_change}))
    manifest = json.loads((forged / MANIFEST_FILE).read_text())
    manifest.update(files=certified_files(forged), **manifest_change)
    (forged / MANIFEST_FILE).write_text(json.dumps(manifest))
    refusal = _native_refusal(forged)
    assert refusal is not None and expected in refusal
