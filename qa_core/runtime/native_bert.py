"""A BERT QA encoder in plain torch, loaded from a checkpoint's safetensors without importing transformers.

Why not transformers' `BertForQuestionAnswering` here: importing transformers costs every docqa command
seconds before the first row (it imports `torch.distributed.tensor`, `torch._dynamo` and sympy for
features inference never uses; figures in benchmarks/RESULTS.md). The module is the seed design and
nothing more: embeddings (word + segment + absolute position, LayerNorm), N post-LayerNorm encoder
layers (self-attention through torch's SDPA, erf GELU feed-forward), and the span head `qa_outputs` (the
learned S and E vectors as one `hidden x 2` linear layer) giving start and end logits.

Module and parameter names are transformers' own, so a checkpoint's state dict loads as it is, the
weight checks (`qa_core.runtime.loaders.shared.check_loaded_weights`) read missing, mismatched and
unexpected weights the same way, and `model.quantize: int8` quantizes the same linear layers. A
checkpoint runs on it only when certified at export (`qa_core.runtime.certify`: its logits compared with
transformers' on that checkpoint); anything else loads through transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn import functional

# config.json keys read here, with transformers' BertConfig defaults.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


@dataclass(frozen=True)
class BertShape:
    """The sizes of a BERT QA model, from its config.json.

    Attributes:
        vocab_size: Rows of the word embeddings.
        hidden_size: Width of every token state.
        num_hidden_layers: Encoder layers.
        num_attention_heads: Heads per self-attention (`hidden_size` must divide by it).
        intermediate_size: Width of the feed-forward layer.
        max_position_embeddings: Rows of the absolute position table (the longest window).
        type_vocab_size: Segment ids the model has embeddings for.
        layer_norm_eps: LayerNorm epsilon.
        pad_token_id: Padding row of the word embeddings.
        num_labels: Outputs of `qa_outputs` (2 for a span head: start and end).
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int | None
    num_labels: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertShape:
        """The shape a config.json dict describes (transformers' defaults for absent keys).

        Raises:
            ValueError: `hidden_size` is not a multiple of `num_attention_heads`.
        """
        values = {key: config.get(key, default) for key, default in _DEFAULTS.items()}
        # transformers derives num_labels from id2label when config.json has it.
        labels = config.get("id2label")
        num_labels = len(labels) if isinstance(labels, dict) and labels else int(config.get("num_labels", 2))
        shape = cls(**values, num_labels=num_labels)
        if shape.hidden_size % shape.num_attention_heads:
            raise ValueError(
                f"hidden_size={shape.hidden_size} is not a multiple of "
                f"num_attention_heads={shape.num_attention_heads}"
            )
        return shape


class SpanLogits(NamedTuple):
    """What the QA head gives, named as transformers' `QuestionAnsweringModelOutput` names it."""

    start_logits: torch.Tensor  # (B, P)
    end_logits: torch.Tensor  # (B, P)


class _Embeddings(nn.Module):
    position_ids: torch.Tensor

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        hidden = shape.hidden_size

        def table(rows: int, padding_idx: int | None = None) -> nn.Embedding:
            # Given a weight, nn.Embedding skips its random init: the checkpoint's values replace it, and
            # on the meta device that init (normal_) imports torch._dynamo (benchmarks/RESULTS.md).
            return nn.Embedding(rows, hidden, padding_idx=padding_idx, _weight=torch.empty(rows, hidden))

        self.word_embeddings = table(shape.vocab_size, shape.pad_token_id)
        self.position_embeddings = table(shape.max_position_embeddings)
        self.token_type_embeddings = table(shape.type_vocab_size)
        self.LayerNorm = nn.LayerNorm(hidden, eps=shape.layer_norm_eps)
        # (1, max_positions), not saved: what `qa_core.runtime.fit` reads the position limit from. Left
        # empty here (arange on the meta device imports torch's decompositions): the builder
        # (`qa_core.runtime.loaders.native.build_native_model`) fills it with 0..max_positions-1.
        self.register_buffer(
            "position_ids", torch.empty(1, shape.max_position_embeddings, dtype=torch.long), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]  # (1, P)
        states = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)
        )
        normalized: torch.Tensor = self.LayerNorm(states)  # (B, P, H)
        return normalized


class _SelfAttention(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        hidden = shape.hidden_size
        self.heads = shape.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _DenseNorm(nn.Module):
    """A linear layer whose output is added to the residual and normalized (post-LayerNorm)."""

    def __init__(self, width_in: int, width_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width_out)
        self.LayerNorm = nn.LayerNorm(width_out, eps=eps)

    def forward(self, states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        normalized: torch.Tensor = self.LayerNorm(self.dense(states) + residual)
        return normalized


class _Attention(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.self = _SelfAttention(shape)
        self.output = _DenseNorm(shape.hidden_size, shape.hidden_size, shape.layer_norm_eps)

    def forward(self, states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Self-attention over `states` (B, P, H); `keep` (B, 1, 1, P) is True at real (unpadded) keys."""
        attend = self.self
        batch, length, hidden = states.shape
        heads = attend.heads

        def split(projected: torch.Tensor) -> torch.Tensor:  # (B, P, H) -> (B, heads, P, H / heads)
            return projected.view(batch, length, heads, hidden // heads).transpose(1, 2)

        query, key, value = (
            split(attend.query(states)),
            split(attend.key(states)),
            split(attend.value(states)),
        )
        # Default scale 1/sqrt(head size), as BERT's; padded keys get no weight.
        context = functional.scaled_dot_product_attention(query, key, value, attn_mask=keep)
        merged = context.transpose(1, 2).reshape(batch, length, hidden)
        attended: torch.Tensor = self.output(merged, states)
        return attended


class _Intermediate(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.dense = nn.Linear(shape.hidden_size, shape.intermediate_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return functional.gelu(self.dense(states))  # erf GELU: config.json's hidden_act "gelu"


class _Layer(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.attention = _Attention(shape)
        self.intermediate = _Intermediate(shape)
        self.output = _DenseNorm(shape.intermediate_size, shape.hidden_size, shape.layer_norm_eps)

    def forward(self, states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        attended = self.attention(states, keep)
        output: torch.Tensor = self.output(self.intermediate(attended), attended)
        return output


class _Encoder(nn.Module):
    layer: nn.ModuleList

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(shape) for _ in range(shape.num_hidden_layers))


class _Bert(nn.Module):
    embeddings: _Embeddings
    encoder: _Encoder

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.embeddings = _Embeddings(shape)
        self.encoder = _Encoder(shape)


class NativeBertForQA(nn.Module):
    """BERT with a span head: (input ids, attention mask, segment ids) to start and end logits.

    Args:
        shape: The model's sizes (`BertShape.from_config`).
    """

    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.shape = shape
        self.bert: _Bert = _Bert(shape)
        self.qa_outputs = nn.Linear(shape.hidden_size, shape.num_labels)

    @property
    def position_ids(self) -> torch.Tensor:
        """(1, max positions): the position of each token of a window."""
        return self.bert.embeddings.position_ids

    @property
    def base_model(self) -> nn.Module:
        """The encoder without the head (where `qa_core.runtime.fit` finds the position table)."""
        return self.bert

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> SpanLogits:
        """Span logits of a padded batch.

        Args:
            input_ids: (B, P) token ids.
            attention_mask: (B, P), 1 at real tokens and 0 at padding.
            token_type_ids: (B, P) segment ids (0 question, 1 context).
        """
        states = self.bert.embeddings(input_ids, token_type_ids)  # (B, P, H)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, P): every query sees the real keys
        for layer in self.bert.encoder.layer:
            states = layer(states, keep)
        start, end = self.qa_outputs(states).split(1, dim=-1)  # (B, P, 1) each
        return SpanLogits(start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous())
