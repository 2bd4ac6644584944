"""Whether a tokenizer and a job config fit the model, checked before any row is read.

Two checks, each a job error in one line that says what to change:

- `check_tokenizer_fits_model` (at load, `ModelLoadError`): a tokenizer must be the model's own. A
  checkpoint without tokenizer files loads a 5-token tokenizer that turns every word into [UNK]; another
  family's tokenizer gives ids beyond the embedding matrix or segment ids the model has no embedding for
  (every batch would fail in the embedding lookup, every row MODEL_ERROR).
- `check_config_fits_model` (`ConfigError`): the job's windows must fit the model's `ModelLimits`. A
  window padded beyond the position embeddings fails every forward; `decode.handle_no_answer` needs a CLS
  token in each window for the null answer.

`ModelLimits` come from the module itself (`model_limits`), so a loaded model, a meta-device skeleton of a
checkpoint (`qa_core.runtime.loaders.read_model_limits`, no weights) and the device server's workers
(`ServedModel.limits`) all judge alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qa_core.config import QAConfig
from qa_core.errors import ConfigError, ModelLoadError
from qa_core.stages.batch import padded_length
from qa_core.stages.tokenizer import Tokenizer

# A tokenizer may be a little smaller than the embedding matrix (rows padded to a multiple of 64 or 128,
# reserved ids); this many unused rows, or a tenth of the matrix, is where "a little" ends.
UNUSED_EMBEDDING_ROWS = 128
# The files a tokenizer's vocabulary can come from (a fast tokenizer, or what transformers converts).
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "spm.model",
)
_PROBE = ("what is it?", "it is the river.")


@dataclass(frozen=True)
class ModelLimits:
    """What a model accepts, as far as a job's config can exceed it.

    Attributes:
        model_id: The configured checkpoint name or path (for the messages).
        max_positions: The longest window, in tokens, that the position embeddings take; None when the
            model has no absolute position limit that docqa can see.
        positions_origin: Where `max_positions` comes from ("512 position embeddings", "514 position
            embeddings less the padding offset 2", ...).
        has_cls: Whether the tokenizer's pair encoding holds a CLS token (the null answer's position).
    """

    model_id: str
    max_positions: int | None
    positions_origin: str
    has_cls: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for `_run.json`)."""
        return {
            "max_positions": self.max_positions,
            "positions_origin": self.positions_origin,
            "has_cls": self.has_cls,
        }


def model_limits(model: Any, tokenizer: Tokenizer, model_id: str) -> ModelLimits:
    """The limits of a QA module (loaded, or a meta-device skeleton) with its tokenizer.

    Args:
        model: A Hugging Face QA model, or None / any module when unknown (no position limit then).
        tokenizer: Its fast tokenizer.
        model_id: The configured checkpoint name or path.
    """
    max_positions, origin = _max_positions(model)
    return ModelLimits(model_id, max_positions, origin, has_cls=_has_cls(tokenizer))


def _position_table(model: Any) -> tuple[Any, torch.nn.Embedding | None]:
    """The embeddings module of the encoder and its absolute position table, if it has one."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    return embeddings, table if isinstance(table, torch.nn.Embedding) else None


def _max_positions(model: Any) -> tuple[int | None, str]:
    """The longest window the model's positions cover, and what says so."""
    embeddings, table = _position_table(model)
    if table is not None:
        rows = int(table.num_embeddings)
        if table.padding_idx is not None:
            # RoBERTa-style: position ids count from padding_idx + 1 (create_position_ids_from_input_ids).
            offset = int(table.padding_idx) + 1
            return rows - offset, f"{rows} position embeddings less the padding offset {offset}"
        buffer = getattr(embeddings, "position_ids", None)  # BERT-style: arange(max_position_embeddings)
        if isinstance(buffer, torch.Tensor) and buffer.dim() >= 1 and int(buffer.shape[-1]) < rows:
            return int(buffer.shape[-1]), f"{int(buffer.shape[-1])} position ids"
        return rows, f"{rows} position embeddings"
    configured = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(configured, int) and configured > 0:
        return configured, f"max_position_embeddings={configured}"
    return None, "no absolute position limit"


def _pair_encoding(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """Ids and segment ids of a probe (question, context) pair, special tokens included."""
    encoding = tokenizer.backend_tokenizer.encode(*_PROBE, add_special_tokens=True)
    return list(encoding.ids), list(encoding.type_ids)


def _has_cls(tokenizer: Tokenizer) -> bool:
    cls_id = tokenizer.cls_token_id
    if cls_id is None:
        return False
    ids, _ = _pair_encoding(tokenizer)
    return int(cls_id) in ids


def check_config_fits_model(config: QAConfig, limits: ModelLimits) -> None:
    """Refuses a config whose windows the model cannot run, before any row is read.

    - `featurize.max_seq_len` beyond the model's positions;
    - `batch.pad_to_multiple_of` rounding a longest window (`max_seq_len` tokens) beyond them: the padded
      length of a batch is `padded_length(longest window, pad_to_multiple_of)`;
    - `decode.handle_no_answer` with a tokenizer that puts no CLS token in its windows.

    Args:
        config: The resolved job config.
        limits: The model's (`ModelRunner.limits`, or `read_model_limits` before a model is loaded).

    Raises:
        ConfigError: One line naming the key and the value that fits.
    """
    limit, model = limits.max_positions, limits.model_id
    seq_len, multiple = config.featurize.max_seq_len, config.batch.pad_to_multiple_of
    accepts = f"what the model accepts ({limit} positions: {limits.positions_origin} of {model})"
    if limit is not None and seq_len > limit:
        raise ConfigError(
            f"featurize.max_seq_len={seq_len} exceeds {accepts}; set featurize.max_seq_len <= {limit}"
        )
    if limit is not None and padded_length(seq_len, multiple) > limit:
        smaller = (m for m in (1, 2, 4, 8, 16, 32, 64) if m < multiple)
        fitting = max(m for m in smaller if padded_length(seq_len, m) <= limit)
        longest = limit // multiple * multiple
        alternative = f" or featurize.max_seq_len <= {longest}" if longest >= 8 else ""
        raise ConfigError(
            f"batch.pad_to_multiple_of={multiple} pads windows of featurize.max_seq_len={seq_len} tokens to "
            f"{padded_length(seq_len, multiple)} positions, beyond {accepts}; set "
            f"batch.pad_to_multiple_of={fitting}{alternative}"
        )
    if config.decode.handle_no_answer and not limits.has_cls:
        raise ConfigError(
            f"decode.handle_no_answer=true scores the null answer at the CLS token, and the tokenizer of "
            f"{model} puts no CLS token in its windows (every row would be rejected); set "
            "decode.handle_no_answer=false"
        )


def check_tokenizer_fits_model(tokenizer: Tokenizer, model_config: Any, name_or_path: str) -> None:
    """Refuses a tokenizer that is not the model's: missing files, another model's, ids beyond the model.

    Args:
        tokenizer: The loaded fast tokenizer.
        model_config: The checkpoint's `transformers.PretrainedConfig` (`vocab_size`, `type_vocab_size`).
        name_or_path: The configured checkpoint (a local directory is searched for tokenizer files).

    Raises:
        ModelLoadError: One line naming the checkpoint and what is wrong or missing.
    """
    vocab_size = getattr(model_config, "vocab_size", None)
    if isinstance(vocab_size, int) and vocab_size > 0:
        size, top = len(tokenizer), max(tokenizer.get_vocab().values(), default=-1)
        if top >= vocab_size:
            raise ModelLoadError(
                f"the tokenizer of {name_or_path} has ids up to {top}, beyond the model's {vocab_size} token "
                "embeddings (vocab_size in its config.json): it is another model's tokenizer; use the "
                "tokenizer files the model was trained with"
            )
        if vocab_size - size > max(UNUSED_EMBEDDING_ROWS, vocab_size // 10):
            raise ModelLoadError(
                f"{_tokenizer_files(name_or_path)}: its tokenizer has {size} tokens for a model of "
                f"{vocab_size} (vocab_size in config.json), so most words would be [UNK]; copy the tokenizer "
                "files the model was trained with (tokenizer.json, tokenizer_config.json) into the checkpoint"
            )
    type_vocab_size = getattr(model_config, "type_vocab_size", None)
    if isinstance(type_vocab_size, int) and type_vocab_size > 0:
        _, type_ids = _pair_encoding(tokenizer)
        top_type = max(type_ids, default=0)
        if top_type >= type_vocab_size:
            raise ModelLoadError(
                f"the tokenizer of {name_or_path} gives segment ids up to {top_type}, and the model has "
                f"type_vocab_size={type_vocab_size} (its config.json): it is another model family's "
                "tokenizer; use the tokenizer files the model was trained with"
            )


def check_padding_fits_model(tokenizer: Tokenizer, model: Any, name_or_path: str) -> None:
    """Refuses a tokenizer whose pad id is not the padding index the model counts positions from.

    RoBERTa-style models number positions from the first non-padding token (`padding_idx`); padding with
    another id shifts every window's positions (and may index past the table).

    Raises:
        ModelLoadError: The pad ids differ.
    """
    _, table = _position_table(model)
    pad = tokenizer.pad_token_id
    if table is None or table.padding_idx is None or pad is None or int(pad) == int(table.padding_idx):
        return
    raise ModelLoadError(
        f"the tokenizer of {name_or_path} pads with id {pad}, and the model counts positions from padding "
        f"id {table.padding_idx} (pad_token_id in its config.json): it is another model family's tokenizer; "
        "use the tokenizer files the model was trained with"
    )


def _tokenizer_files(name_or_path: str) -> str:
    """What a local checkpoint holds of a tokenizer, for the message."""
    local = Path(name_or_path)
    if not local.is_dir():
        return f"{name_or_path} has incomplete tokenizer files or another model's"
    names = sorted(p.name for p in local.iterdir())
    held = [n for n in names if n in VOCABULARY_FILES or n.startswith(("tokenizer", "special_tokens"))]
    if not any(name in VOCABULARY_FILES for name in held):
        besides = f"; it has only {', '.join(held)}" if held else ""
        return f"{local} has no tokenizer files (no {', '.join(VOCABULARY_FILES[:3])}{besides})"
    return f"{local} has incomplete tokenizer files or another model's ({', '.join(held)})"
