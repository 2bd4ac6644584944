"""The native loader: a certified checkpoint on docqa's own encoder, without importing transformers.

A local checkpoint with a valid `docqa_native.json` (`qa_core.runtime.loaders.native_manifest`) and a
tokenizer.json loads through `tokenizers` and `safetensors` directly into
`qa_core.runtime.native_bert.NativeBertForQA`: the command never imports transformers. Whether the
checkpoint loads as transformers would load it was decided when it was exported
(`qa_core.runtime.certify`), not here; this loader's own checks are the manifest (present, every
certified file unchanged), the tokenizer against config.json (`qa_core.runtime.fit`), and the weights
(each of the model's present with its shape: `qa_core.runtime.loaders.shared.check_loaded_weights`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from qa_core.config import ModelConfig, RuntimeConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.fit import (
    ModelLimits,
    check_tokenizer_fits_model,
    model_limits,
)
from qa_core.runtime.loaders.native_manifest import WEIGHTS_FILE, NativeManifest, read_manifest
from qa_core.runtime.loaders.shared import (
    check_loaded_weights,
    check_local_checkpoint,
    explain,
    load_torch_runner,
)
from qa_core.runtime.native_bert import BertShape, NativeBertForQA
from qa_core.runtime.runner import ModelRunner

if TYPE_CHECKING:
    from tokenizers import Tokenizer as BackendTokenizer

logger = logging.getLogger(__name__)


class NativeTokenizer:
    """A checkpoint's tokenizer.json with the special token ids its certification recorded.

    Satisfies `qa_core.stages.tokenizer.Tokenizer`.

    Args:
        backend: The checkpoint's tokenizer.json, loaded.
        special_token_ids: `cls`, `sep` and `pad` ids (`NativeManifest.special_token_ids`).
    """

    is_fast = True

    def __init__(self, backend: BackendTokenizer, special_token_ids: dict[str, int | None]) -> None:
        self.backend_tokenizer = backend
        self.cls_token_id = special_token_ids.get("cls")
        self.sep_token_id = special_token_ids.get("sep")
        self.pad_token_id = special_token_ids.get("pad")

    @property
    def vocab_size(self) -> int:
        """Tokens of the vocabulary, without added tokens (as transformers counts it)."""
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=False))

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))

    def get_vocab(self) -> dict[str, int]:
        """Token to id, added tokens included."""
        return dict(self.backend_tokenizer.get_vocab(with_added_tokens=True))

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """Special tokens the post-processor adds to one text or a pair."""
        return int(self.backend_tokenizer.num_special_tokens_to_add(pair))


def native_tokenizer(directory: Path, manifest: NativeManifest) -> NativeTokenizer:
    """tokenizer.json of a certified checkpoint, with the manifest's special token ids."""
    from tokenizers import Tokenizer

    return NativeTokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), manifest.special_token_ids)


def _read_config(directory: Path) -> dict[str, Any]:
    try:
        loaded = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the config of {directory}: {err}") from err
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"cannot read the config of {directory}: it is not a JSON object")
    return loaded


def read_native_config(directory: Path) -> SimpleNamespace:
    """config.json as attributes, with transformers' defaults for the sizes (what the checks read)."""
    stored = _read_config(directory)
    return SimpleNamespace(**{**vars(BertShape.from_config(stored)), **stored})


def build_native_model(directory: Path, meta: bool = False) -> NativeBertForQA:
    """The module config.json describes, on the CPU before its weights are loaded, or on the meta device.

    Args:
        directory: The checkpoint.
        meta: Shapes only, no memory (what `read_limits` needs).

    Raises:
        ModelLoadError: config.json's sizes do not make a model.
    """
    try:
        shape = BertShape.from_config(_read_config(directory))
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot build a QA model from the config of {directory}: {err}") from err
    if meta:
        with torch.device("meta"):
            return NativeBertForQA(shape)
    # Built on the CPU, not on the meta device and moved (`to_empty`): torch's meta kernels import its
    # decompositions and sympy, which cost more than the linear layers' random init paid here instead.
    model = NativeBertForQA(shape)
    model.position_ids.copy_(torch.arange(shape.max_position_embeddings).unsqueeze(0))
    return model


def load_native_weights(model: NativeBertForQA, directory: Path) -> dict[str, list[Any]]:
    """Copies `model.safetensors` into `model` (converting to its dtype), and says what did not fit.

    What did not fit is given as transformers' loading info has it (`missing_keys`, `unexpected_keys`,
    `mismatched_keys`), for `check_loaded_weights` to judge.

    Raises:
        SafetensorError, OSError: Unreadable or corrupt weights.
    """
    from safetensors.torch import load_file

    stored = load_file(str(directory / WEIGHTS_FILE))
    # Older checkpoints saved the position ids buffer, which the module builds itself.
    for name, _ in model.named_buffers():
        stored.pop(name, None)
    expected = model.state_dict()
    mismatched = [
        (key, tuple(stored[key].shape), tuple(value.shape))
        for key, value in expected.items()
        if key in stored and stored[key].shape != value.shape
    ]
    skipped = {key for key, _, _ in mismatched}
    fitting = {key: value for key, value in stored.items() if key in expected and key not in skipped}
    with torch.no_grad():
        for key, value in fitting.items():
            expected[key].copy_(value)
    return {
        "missing_keys": sorted(set(expected) - set(stored)),
        "unexpected_keys": sorted(set(stored) - set(expected)),
        "mismatched_keys": mismatched,
    }


def load_native_module(directory: Path, dtype: torch.dtype, name: str) -> NativeBertForQA:
    """The checkpoint's weights in docqa's encoder, refusing missing or mismatched ones as transformers'.

    Raises:
        ModelLoadError: Unreadable weights, or weights that leave part of the model random.
    """
    module = build_native_model(directory).to(dtype)
    try:
        info = load_native_weights(module, directory)
    except (OSError, SafetensorError) as err:
        raise ModelLoadError(f"cannot load QA model {name!r}: {explain(err)}") from err
    check_loaded_weights(module, info, name)
    return module


class NativeLoader:
    """Loads a certified local BERT QA checkpoint on docqa's encoder and `tokenizers`."""

    def refusal(self, model: ModelConfig) -> str | None:
        """Why this checkpoint is not certified for docqa's encoder (None: it is, and loads natively)."""
        directory = Path(model.name_or_path)
        if not directory.is_dir():
            return "it is not a local directory (a hub id?)"
        manifest = read_manifest(directory)
        return manifest if isinstance(manifest, str) else None

    def _manifest(self, model: ModelConfig) -> NativeManifest:
        check_local_checkpoint(model)
        manifest = read_manifest(Path(model.name_or_path))
        if isinstance(manifest, str):
            raise ModelLoadError(f"{model.name_or_path} cannot load on docqa's encoder: {manifest}")
        return manifest

    def load_tokenizer(self, model: ModelConfig) -> NativeTokenizer:
        """tokenizer.json alone (via `tokenizers`), checked against config.json."""
        directory = Path(model.name_or_path)
        tokenizer = native_tokenizer(directory, self._manifest(model))
        check_tokenizer_fits_model(tokenizer, read_native_config(directory), model.name_or_path)
        return tokenizer

    def read_limits(self, model: ModelConfig) -> ModelLimits:
        """The limits from a meta-device skeleton of the encoder (no weights read)."""
        tokenizer = self.load_tokenizer(model)
        skeleton = build_native_model(Path(model.name_or_path), meta=True)
        return model_limits(skeleton, tokenizer, model.name_or_path)

    def load(self, model: ModelConfig, runtime: RuntimeConfig) -> ModelRunner:
        """The checkpoint on docqa's encoder on its device, as a `TorchRunner`."""

        def module(config: ModelConfig, dtype: torch.dtype) -> NativeBertForQA:
            return load_native_module(Path(config.name_or_path), dtype, config.name_or_path)

        return load_torch_runner(model, runtime, self.load_tokenizer, module, "docqa's BERT encoder")
