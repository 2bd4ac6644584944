"""Stage 3: windows are sorted by length, cut into batches under window and token caps, and padded late.

The model's time grows with the padded positions it computes, so a batch is padded only to its own
longest window (rounded up to `pad_to_multiple_of`), never to `max_seq_len`, and windows of similar length
are batched together: the padding a batch carries is then small (padding figures in benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qa_core.config import BatchConfig
from qa_core.records import Feature


@dataclass(frozen=True, eq=False)
class Batch:
    """Padded model inputs for a list of windows.

    Attributes:
        features: The windows, in the row order of the arrays.
        input_ids: (B, P) int64, padded with the tokenizer's pad id.
        attention_mask: (B, P) int64, 1 on real tokens.
        token_type_ids: (B, P) int64.
    """

    features: tuple[Feature, ...]
    input_ids: npt.NDArray[np.int64]
    attention_mask: npt.NDArray[np.int64]
    token_type_ids: npt.NDArray[np.int64]

    @property
    def real_tokens(self) -> int:
        """Tokens that are not padding."""
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        """All token positions the model computes (B x P)."""
        return int(self.input_ids.size)


def padded_length(longest: int, multiple: int) -> int:
    """`longest` rounded up to a multiple of `multiple`."""
    return -(-longest // multiple) * multiple


def plan_batches(features: Sequence[Feature], config: BatchConfig) -> list[list[Feature]]:
    """Groups windows into batches of similar length under the caps, shortest first.

    Windows are sorted by (length, row_key, window_index), so the grouping and the order depend only on
    the set of windows, not on their arrival order. A batch closes when one more window would exceed
    `max_batch_windows` or `max_batch_tokens` padded tokens; a single window always fits. The batches
    come in the order of the sorted windows: no batch is moved for a memory allocator's sake (how a
    process's allocator is tuned is `qa_core.runtime.host_tuning`'s business).

    Args:
        features: Windows to group (typically one sort buffer).
        config: Batch caps and padding multiple.

    Returns:
        Lists of windows, each batch's windows no longer than the next batch's.
    """
    ordered = sorted(features, key=lambda f: (f.length, f.row_key, f.window_index))
    batches: list[list[Feature]] = []
    current: list[Feature] = []
    for feature in ordered:
        # Sorted ascending, so the newest window is the batch's longest.
        width = padded_length(feature.length, config.pad_to_multiple_of)
        too_many = len(current) + 1 > config.windows_cap
        too_big = (len(current) + 1) * width > config.tokens_cap
        if current and (too_many or too_big):
            batches.append(current)
            current = []
        current.append(feature)
    if current:
        batches.append(current)
    return batches


def collate(features: Sequence[Feature], pad_token_id: int, pad_to_multiple_of: int) -> Batch:
    """Pads windows into rectangular arrays.

    Args:
        features: The windows of one batch (at least one).
        pad_token_id: Id written into padding positions (masked out by attention).
        pad_to_multiple_of: Padded length is the longest window rounded up to this.

    Raises:
        ValueError: On an empty batch.
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    lengths = np.fromiter((f.length for f in features), dtype=np.int64, count=len(features))  # (B,)
    width = padded_length(int(lengths.max()), pad_to_multiple_of)
    real = real_positions(lengths, width)  # (B, P)
    input_ids = padded_rows([f.input_ids for f in features], real, pad_token_id)  # (B, P)
    attention_mask = real.astype(np.int64)  # (B, P)
    token_type_ids = padded_rows([f.token_type_ids for f in features], real, 0)  # (B, P)
    return Batch(tuple(features), input_ids, attention_mask, token_type_ids)


def real_positions(lengths: npt.NDArray[np.int64], width: int) -> npt.NDArray[np.bool_]:
    """(B, P) bool: position p of row b holds a real token (`p < lengths[b]`), the rest is padding."""
    return np.arange(width) < lengths[:, None]


def padded_rows(
    rows: Sequence[npt.NDArray[Any]], real: npt.NDArray[np.bool_], fill: int
) -> npt.NDArray[np.int64]:
    """(B, P) int64: row b's values at its real positions (`real_positions`), `fill` after them.

    One concatenation and one masked write for the batch (True positions in row-major order are the
    rows' values in order) instead of a slice assignment per window, which cost a microsecond each at
    a GPU batch's hundreds of windows.
    """
    out = np.full(real.shape, fill, dtype=np.int64)
    out[real] = np.concatenate(rows)
    return out
