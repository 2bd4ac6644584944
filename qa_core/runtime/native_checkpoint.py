"""Which checkpoints load without transformers, and loading them: the tokenizer, the config, the weights.

A local plain BERT QA checkpoint (the bundled model, and what `docqa train` saves) loads through
`tokenizers` and `safetensors` directly, into `qa_core.runtime.native_bert.NativeBertForQA`: no
transformers import in the command (seconds of every command's fixed cost, see `native_bert`). What
loads must be what transformers would load, so a checkpoint qualifies only when nothing about it could
load differently (`native_refusal` says why one does not):

- config.json builds a `BertForQuestionAnswering` with erf GELU, absolute positions, no decoder parts
  and no custom code;
- its weights are one `model.safetensors` file;
- its tokenizer is a `BertTokenizer` whose tokenizer.json holds exactly the pipeline transformers 5
  rebuilds from tokenizer_config.json (`BertTokenizer.__init__`: BertNormalizer with the config's
  lowercasing, accents and Chinese-character settings, BertPreTokenizer, WordPiece with "##", the
  CLS/SEP pair template) and exactly the config's special tokens as added tokens.

Everything else (hub ids, RoBERTa, DistilBERT, pickle weights, other tokenizers) loads through
transformers as before; `model.implementation` chooses explicitly. `tests/test_native_bert.py` checks
tokenizer and logits against transformers'.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from qa_core.config import ModelConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.native_bert import BertShape, NativeBertForQA

WEIGHTS_FILE = "model.safetensors"
_BERT_ARCHITECTURES = (None, ["BertForQuestionAnswering"])
_BERT_TOKENIZERS = ("BertTokenizer", "BertTokenizerFast")
# BertTokenizer's special tokens and its defaults for those tokenizer_config.json leaves out.
_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
# Files transformers merges into the tokenizer besides tokenizer.json and tokenizer_config.json.
_TOKENIZER_EXTRAS = ("special_tokens_map.json", "added_tokens.json")
_ADDED_TOKEN_FIELDS = ("content", "lstrip", "rstrip", "normalized", "single_word", "special")
# Weight dtypes copied as they are (anything else, int8 or fp8 of a quantized checkpoint, is not).
_FLOAT_DTYPES = ("F32", "F16", "BF16")
_WORDPIECE_MAX_CHARS = 100  # transformers' BertTokenizer builds WordPiece with the library default


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _config_refusal(config: dict[str, Any]) -> str | None:
    """Why config.json builds something other than the native plain BERT QA model (None: it does not)."""
    checks = (
        (config.get("model_type") == "bert", f"model_type is {config.get('model_type')!r}, not 'bert'"),
        (
            config.get("architectures") in _BERT_ARCHITECTURES,
            f"architectures is {config.get('architectures')}",
        ),
        ("auto_map" not in config, "config.json maps to custom code (auto_map)"),
        (config.get("hidden_act", "gelu") == "gelu", f"hidden_act is {config.get('hidden_act')!r}"),
        (
            config.get("position_embedding_type", "absolute") == "absolute",
            f"position_embedding_type is {config.get('position_embedding_type')!r}",
        ),
        (not config.get("is_decoder") and not config.get("add_cross_attention"), "it is a decoder"),
        ("quantization_config" not in config, "config.json has a quantization_config"),
    )
    return next((reason for holds, reason in checks if not holds), None)


def _expected_pipeline(settings: dict[str, Any], vocab: dict[str, int]) -> dict[str, Any] | str:
    """What transformers' BertTokenizer builds from tokenizer_config.json, as tokenizer.json holds it.

    The normalizer, pre-tokenizer and pair template, serialized; or why none can be built.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = special_tokens(settings)
    unk, cls, sep = specials.get("unk_token"), specials.get("cls_token"), specials.get("sep_token")
    if unk is None or cls is None or sep is None:
        return "tokenizer_config.json sets no unk, cls or sep token"
    if cls not in vocab or sep not in vocab:
        return f"its vocabulary lacks {cls} or {sep}"
    scratch = Tokenizer(models.WordPiece({unk: 0}, unk_token=unk))
    scratch.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(settings.get("tokenize_chinese_chars", True)),
        strip_accents=settings.get("strip_accents"),
        lowercase=bool(settings.get("do_lower_case", True)),
    )
    scratch.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    scratch.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    built = json.loads(scratch.to_str())
    return {key: built[key] for key in ("normalizer", "pre_tokenizer", "post_processor")}


def special_tokens(settings: dict[str, Any]) -> dict[str, str]:
    """BertTokenizer's special tokens as tokenizer_config.json sets them.

    Its defaults where the config is silent (as transformers fills them in); a token set to null is left out.
    """
    tokens = {key: settings.get(key, default) for key, default in _SPECIAL_TOKENS.items()}
    return {key: str(token) for key, token in tokens.items() if token is not None}


def _added_tokens_refusal(settings: dict[str, Any], stored: dict[str, Any], directory: Path) -> str | None:
    """Why the added tokens transformers would build differ from tokenizer.json's (None: they do not).

    transformers adds the config's special tokens (and any extra ones), takes `added_tokens_decoder` of
    tokenizer_config.json over tokenizer.json's flags, and merges the legacy files in.
    """
    extras = [name for name in _TOKENIZER_EXTRAS if (directory / name).exists()]
    if extras:
        return f"it has {', '.join(extras)}, which transformers merges into the tokenizer"
    other_tokens = [
        key
        for key, value in settings.items()
        if value
        and ((key.endswith("_token") and key not in _SPECIAL_TOKENS) or key.endswith("special_tokens"))
    ]
    if other_tokens:
        return f"tokenizer_config.json sets {', '.join(sorted(other_tokens))}"
    added = {
        str(t.get("id")): {f: t.get(f) for f in _ADDED_TOKEN_FIELDS} for t in stored.get("added_tokens") or []
    }
    decoder = settings.get("added_tokens_decoder")
    if (
        decoder is not None
        and {k: {f: v.get(f) for f in _ADDED_TOKEN_FIELDS} for k, v in decoder.items()} != added
    ):
        return "its added_tokens_decoder differs from tokenizer.json's added tokens"
    contents = {token["content"] for token in added.values()}
    if contents != set(special_tokens(settings).values()) or not all(t["special"] for t in added.values()):
        return "its added tokens are not exactly the special tokens of tokenizer_config.json"
    return None


def _tokenizer_refusal(directory: Path) -> str | None:
    """Why this checkpoint's tokenizer might load differently without transformers (None: it cannot)."""
    settings = _read_json(directory / "tokenizer_config.json")
    stored = _read_json(directory / "tokenizer.json")
    if settings is None or stored is None:
        return "it has no readable tokenizer.json and tokenizer_config.json"
    if settings.get("tokenizer_class") not in _BERT_TOKENIZERS or "auto_map" in settings:
        return f"its tokenizer_class is {settings.get('tokenizer_class')!r}"
    model = stored.get("model") or {}
    wordpiece = (
        model.get("type"),
        model.get("continuing_subword_prefix"),
        model.get("max_input_chars_per_word"),
    )
    if wordpiece != ("WordPiece", "##", _WORDPIECE_MAX_CHARS) or model.get("unk_token") != special_tokens(
        settings
    ).get("unk_token"):
        return "its tokenizer.json model is not BERT's WordPiece as tokenizer_config.json sets it"
    expected = _expected_pipeline(settings, model.get("vocab") or {})
    if isinstance(expected, str):
        return expected
    differing = [key for key, value in expected.items() if stored.get(key) != value]
    if differing:
        return f"its tokenizer.json {', '.join(differing)} differ from what tokenizer_config.json sets"
    return _added_tokens_refusal(settings, stored, directory)


def _weights_refusal(path: Path) -> str | None:
    """Why the safetensors file holds weights the native loading would not read as transformers does.

    Reads only the file's JSON header: quantized weights (int8, fp8 and their scales) would be cast to
    floats, and LayerNorm weights under their legacy names (`gamma`, `beta`) are renamed by transformers.
    """
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size)) if 0 < size < 1 << 27 else None
    except (OSError, ValueError):
        header = None
    if not isinstance(header, dict):
        return f"its {path.name} header is unreadable"
    tensors = {
        name: entry for name, entry in header.items() if name != "__metadata__" and isinstance(entry, dict)
    }
    dtypes = sorted({str(entry.get("dtype")) for entry in tensors.values()} - set(_FLOAT_DTYPES))
    if dtypes:
        return f"its weights hold {', '.join(dtypes)} tensors (a quantized checkpoint?)"
    legacy = sorted(name for name in tensors if name.endswith((".gamma", ".beta")))
    if legacy:
        return f"its weights use legacy names ({legacy[0]}, ...)"
    return None


def native_refusal(config: ModelConfig) -> str | None:
    """Why the configured checkpoint loads through transformers rather than natively (None: natively).

    Reads only the checkpoint's JSON files and its weights' header. `model.implementation: transformers`
    always refuses; `native` and `auto` ask the checkpoint.
    """
    if config.implementation == "transformers":
        return "model.implementation is transformers"
    directory = Path(config.name_or_path)
    if not directory.is_dir():
        return "it is not a local directory (a hub id)"
    if not (directory / WEIGHTS_FILE).is_file() or (directory / f"{WEIGHTS_FILE}.index.json").exists():
        return f"its weights are not one {WEIGHTS_FILE}"
    model_config = _read_json(directory / "config.json")
    if model_config is None:
        return "it has no readable config.json"
    return (
        _config_refusal(model_config)
        or _weights_refusal(directory / WEIGHTS_FILE)
        or _tokenizer_refusal(directory)
    )


def model_implementation(config: ModelConfig) -> str | None:
    """What runs the configured checkpoint, for `_run.json`: `native` or `transformers`.

    None when the checkpoint is a path this machine does not have (remote workers decide from their own
    copy); a name that is not a path is a hub id, which transformers loads.
    """
    if config.implementation != "auto":
        return config.implementation
    path = Path(config.name_or_path)
    if not path.is_dir():
        return None if path.is_absolute() or config.name_or_path.startswith((".", "~")) else "transformers"
    return "native" if native_refusal(config) is None else "transformers"


def uses_native(config: ModelConfig) -> bool:
    """Whether this checkpoint loads natively; `model.implementation: native` refuses one that cannot.

    Raises:
        ModelLoadError: `native` asked for a checkpoint that must load through transformers.
    """
    refusal = native_refusal(config)
    if refusal is not None and config.implementation == "native":
        raise ModelLoadError(
            f"model.implementation=native cannot load {config.name_or_path}: {refusal}; set "
            "model.implementation=auto (or transformers)"
        )
    return refusal is None


class NativeTokenizer:
    """The few members of a transformers fast tokenizer that docqa uses, over `tokenizers.Tokenizer`.

    Args:
        backend: The checkpoint's tokenizer.json, loaded.
        settings: Its tokenizer_config.json (the special tokens).
    """

    is_fast = True

    def __init__(self, backend: Any, settings: dict[str, Any]) -> None:
        self.backend_tokenizer = backend
        specials = special_tokens(settings)
        self.cls_token_id = self._id(specials.get("cls_token"))
        self.sep_token_id = self._id(specials.get("sep_token"))
        self.pad_token_id = self._id(specials.get("pad_token"))

    def _id(self, token: Any) -> int | None:
        found = self.backend_tokenizer.token_to_id(str(token)) if token else None
        return int(found) if found is not None else None

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


def load_native_tokenizer(directory: Path) -> NativeTokenizer:
    """The checkpoint's tokenizer.json as `NativeTokenizer` (for a checkpoint `native_refusal` passed)."""
    from tokenizers import Tokenizer

    settings = _read_json(directory / "tokenizer_config.json") or {}
    return NativeTokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), settings)


def read_native_config(directory: Path) -> SimpleNamespace:
    """config.json as attributes, with transformers' defaults for the sizes (what the checks read)."""
    stored = _read_json(directory / "config.json") or {}
    return SimpleNamespace(**{**vars(BertShape.from_config(stored)), **stored})


def build_native_model(directory: Path, meta: bool = False) -> NativeBertForQA:
    """The module config.json describes, on the CPU before its weights are loaded, or on the meta device.

    Args:
        directory: The checkpoint.
        meta: Shapes only, no memory (what `read_model_limits` needs).

    Raises:
        ModelLoadError: config.json's sizes do not make a model.
    """
    try:
        shape = BertShape.from_config(_read_json(directory / "config.json") or {})
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"cannot build a QA model from the config of {directory}: {err}") from err
    if meta:
        with torch.device("meta"):
            return NativeBertForQA(shape)
    # Built on the CPU, not on the meta device and moved (`to_empty`): torch's meta kernels import its
    # decompositions and sympy (0.4 s), several times the linear layers' random init this pays instead.
    model = NativeBertForQA(shape)
    model.position_ids.copy_(torch.arange(shape.max_position_embeddings).unsqueeze(0))
    return model


def load_native_weights(model: NativeBertForQA, directory: Path) -> dict[str, list[Any]]:
    """Copies `model.safetensors` into `model` (converting to its dtype), and says what did not fit.

    What did not fit is given as transformers' loading info has it (`missing_keys`, `unexpected_keys`,
    `mismatched_keys`), for `qa_core.runtime.loading` to judge.

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
