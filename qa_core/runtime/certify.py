"""Certifying a checkpoint for docqa's own encoder, at export time: `certify_checkpoint`.

A checkpoint runs on `qa_core.runtime.native_bert` (no transformers import) only when its
`docqa_native.json` says that, for this exact checkpoint, docqa's encoder and tokenizer.json alone give
what transformers gives. Certifying compares, on `PROBES` (accents, CJK, emoji, a special token's text
inside a context, an over-long word, control characters, overflow-length text):

- the tokenizer: tokenizer.json through `tokenizers` against transformers' `AutoTokenizer` (which may
  rebuild the pipeline from tokenizer_config.json): the pipeline itself (normalizer, pre-tokenizer,
  model, post-processor, added tokens), the vocabulary, and per probe pair the ids, segment ids and
  character offsets;
- the model: start and end logits of `NativeBertForQA` against `AutoModelForQuestionAnswering`, both in
  the given dtype on the CPU, at every real token; the largest difference must be within the tolerance.

Then it writes the manifest with the hashes of every file that decides tokens or logits
(`qa_core.runtime.loaders.native_manifest`): a changed file voids it and the checkpoint loads through
transformers again. `docqa train` certifies what it saves; `scripts/certify_native.py` certifies an
existing checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qa_core.errors import ModelLoadError
from qa_core.runtime.loaders.native import load_native_module
from qa_core.runtime.loaders.native_manifest import (
    MANIFEST_FILE,
    NativeManifest,
    certified_files,
    plain_bert_refusal,
)
from qa_core.runtime.torch_runner import TORCH_DTYPES

logger = logging.getLogger(__name__)

# Largest |native - transformers| logit certified, per compared dtype: fp32 kernels differ in rounding only.
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
PROBES = (
    ("What river flows through London?", "The Thames flows through London, past Westminster. " * 12),
    ("Who wrote it?", "Nobody knows who wrote it: the manuscript is anonymous [MASK] [SEP] [UNK]."),
    ("Wie heißt die Stadt?", "Die Stadt heißt München 🍺, und sie liegt an der Isar. 東京 ist weit weg."),
    ("ÉCOLE Ñandú café?", "Crème brûlée, naïve façade;\tcontrol\x07chars\u200band  spaces\u00a0here."),
    ("How long?", "a" * 120 + " antidisestablishmentarianism " + "x1y2z3 " * 20),
)
_PIPELINE = ("normalizer", "pre_tokenizer", "model", "post_processor", "added_tokens")


# Config keys whose other values build a model docqa's encoder does not implement.
def certify_checkpoint(
    directory: str | Path, dtype: str = "fp32", tolerance: float | None = None
) -> str | None:
    """Compares docqa's encoder and tokenizer with transformers' on this checkpoint; writes the manifest.

    Any manifest already there is removed first, so a checkpoint that fails is left uncertified (it loads
    through transformers).

    Args:
        directory: A local checkpoint (config.json, model.safetensors, tokenizer.json).
        dtype: The dtype both models compute in (`fp32`, `bf16`, `fp16`), whatever the weights' on disk.
        tolerance: Largest logit difference certified (default `TOLERANCES[dtype]`).

    Returns:
        None when certified (`docqa_native.json` written), else why not, in one line.
    """
    path = Path(directory)
    (path / MANIFEST_FILE).unlink(missing_ok=True)
    limit = TOLERANCES[dtype] if tolerance is None else tolerance
    refusal = plain_bert_refusal(path)
    if refusal is not None:
        return refusal
    from transformers import AutoTokenizer

    try:
        reference = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        return f"transformers cannot load its tokenizer: {err}"
    from tokenizers import Tokenizer

    native = Tokenizer.from_file(str(path / "tokenizer.json"))
    refusal = _tokenizer_refusal(native, reference)
    if refusal is not None:
        return refusal
    try:
        difference = _logit_difference(path, native, TORCH_DTYPES[dtype])
    except ModelLoadError as err:
        return str(err)
    if not difference <= limit:
        return f"its logits differ from transformers' by {difference:.3g} (tolerance {limit:g})"
    manifest = NativeManifest(
        special_token_ids={
            "cls": reference.cls_token_id,
            "sep": reference.sep_token_id,
            "pad": reference.pad_token_id,
        },
        max_abs_logit_difference=difference,
        tolerance=limit,
        compared={
            "probes": len(PROBES),
            "dtype": dtype,
            "device": "cpu",
            "tokenizer": ["pipeline", "vocabulary", "ids", "type_ids", "offsets", "special token ids"],
            "logits": ["start", "end"],
        },
        versions=_versions(),
        files=certified_files(path),
    )
    (path / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    logger.info("%s certified for docqa's encoder (logits within %.3g)", path, difference)
    return None


def _tokenizer_refusal(native: Any, reference: Any) -> str | None:
    """Why tokenizer.json alone tokenizes otherwise than transformers' tokenizer (None: the same)."""
    if not getattr(reference, "is_fast", False):
        return "transformers loads no fast tokenizer for it"
    ours, theirs = json.loads(native.to_str()), json.loads(reference.backend_tokenizer.to_str())
    differing = [key for key in _PIPELINE if ours.get(key) != theirs.get(key)]
    if differing:
        return f"tokenizer.json's {', '.join(differing)} differ from transformers' tokenizer"
    if native.get_vocab(with_added_tokens=True) != reference.get_vocab():
        return "tokenizer.json's vocabulary differs from transformers' tokenizer"
    for question, context in PROBES:
        encoding = native.encode(question, context)
        expected = reference(question, context, return_offsets_mapping=True, return_token_type_ids=True)
        mine = (encoding.ids, encoding.type_ids, [tuple(o) for o in encoding.offsets])
        theirs_probe = (
            list(expected["input_ids"]),
            list(expected["token_type_ids"]),
            [tuple(o) for o in expected["offset_mapping"]],
        )
        if mine != theirs_probe:
            return f"tokenizer.json encodes {question!r} otherwise than transformers' tokenizer"
    return None


def _logit_difference(path: Path, native_tokenizer: Any, dtype: torch.dtype) -> float:
    """Largest |native - transformers| start or end logit over the probes' real tokens."""
    from transformers import AutoModelForQuestionAnswering

    encodings = native_tokenizer.encode_batch(list(PROBES))
    length = max(len(e.ids) for e in encodings)
    arrays = {
        key: np.zeros((len(PROBES), length), np.int64)
        for key in ("input_ids", "attention_mask", "token_type_ids")
    }
    for row, encoding in enumerate(encodings):  # (B, P) each, zero-padded
        arrays["input_ids"][row, : len(encoding.ids)] = encoding.ids
        arrays["attention_mask"][row, : len(encoding.ids)] = 1
        arrays["token_type_ids"][row, : len(encoding.ids)] = encoding.type_ids
    batch = {key: torch.from_numpy(array) for key, array in arrays.items()}
    ours = load_native_module(path, dtype, str(path)).eval()
    try:
        theirs = AutoModelForQuestionAnswering.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True
        ).eval()
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"transformers cannot load it: {str(err).splitlines()[0]}") from err
    real = batch["attention_mask"].bool()
    with torch.inference_mode():
        mine, expected = ours(**batch), theirs(**batch)
    return max(
        float((mine.start_logits.float() - expected.start_logits.float())[real].abs().max()),
        float((mine.end_logits.float() - expected.end_logits.float())[real].abs().max()),
    )


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
    }
