"""Stage 5: start/end logits of a batch become each window's best character spans.

For window b, a candidate is a pair of context tokens (i, j) with i <= j < i + max_answer_len, scored
`start[b, i] + end[b, j]` (the seed design's S.T_i + E.T_j). The search is a band, not a square: the
end logits are unfolded into a (B, P, L) view so every (i, j = i + d) pair is scored in one vectorized
op on the model's device, and only the `n_best` best candidates per window (a few numbers) leave it.
"""

from __future__ import annotations

import numpy as np
import torch

from qa_core.batch import Batch
from qa_core.records import WindowCandidates


class DecodeError(ValueError):
    """The logits cannot be decoded (for example they hold NaN); the batch's rows are rejected."""


def _band(values: torch.Tensor, width: int, fill: float | bool) -> torch.Tensor:
    """A (B, P, L) view with `out[b, i, d] = values[b, i + d]`, `fill` past the end."""
    pad = torch.full((values.shape[0], width - 1), fill, dtype=values.dtype, device=values.device)
    return torch.cat([values, pad], dim=1).unfold(1, width, 1)


def decode_batch(
    batch: Batch,
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    max_answer_len: int,
    n_best: int,
) -> list[WindowCandidates]:
    """Best spans of every window in a batch.

    Args:
        batch: The padded batch the logits were computed on.
        start_logits: (B, P) float32, on any device.
        end_logits: (B, P) float32, same device.
        max_answer_len: Longest span in tokens.
        n_best: Candidates kept per window.

    Returns:
        One `WindowCandidates` per window, candidates ordered by logit (descending), ties by start token
        then end token (ascending), so the order never depends on the batch.

    Raises:
        DecodeError: When the logits hold NaN or have the wrong shape.
    """
    n_windows, width = batch.input_ids.shape
    if start_logits.shape != (n_windows, width) or end_logits.shape != (n_windows, width):
        raise DecodeError(
            f"logits of shape {tuple(start_logits.shape)} / {tuple(end_logits.shape)} do not match the "
            f"batch ({n_windows}, {width})"
        )
    if bool(torch.isnan(start_logits).any() | torch.isnan(end_logits).any()):
        raise DecodeError("the model produced NaN logits")
    device = start_logits.device
    start = start_logits.float()
    end = end_logits.float()
    char_starts = np.full((n_windows, width), -1, dtype=np.int64)  # (B, P)
    char_ends = np.full((n_windows, width), -1, dtype=np.int64)  # (B, P)
    for row, feature in enumerate(batch.features):
        char_starts[row, : feature.length] = feature.char_starts
        char_ends[row, : feature.length] = feature.char_ends
    in_context = torch.from_numpy(char_starts >= 0).to(device)  # (B, P)

    band = max(1, min(max_answer_len, width))
    scores = start.unsqueeze(2) + _band(end, band, float("-inf"))  # (B, P, L): start i, end i + d
    valid = in_context.unsqueeze(2) & _band(in_context, band, False)  # (B, P, L)
    scores = scores.masked_fill(~valid, float("-inf")).reshape(n_windows, width * band)  # (B, P*L)
    # A stable descending sort keeps tied candidates in flat (i, d) order: start, then end, ascending.
    keep = min(n_best, width * band)
    sorted_scores, sorted_flat = torch.sort(scores, dim=1, descending=True, stable=True)
    top_scores = sorted_scores[:, :keep].cpu().numpy()  # (B, K)
    top_flat = sorted_flat[:, :keep].cpu().numpy()  # (B, K): i * L + d

    cls_index = torch.tensor([f.cls_index for f in batch.features], device=device)  # (B,)
    has_cls = cls_index >= 0
    safe_cls = cls_index.clamp(min=0).unsqueeze(1)
    null_logits = (start.gather(1, safe_cls) + end.gather(1, safe_cls)).squeeze(1).cpu().numpy()  # (B,)
    has_cls_np = has_cls.cpu().numpy()

    out: list[WindowCandidates] = []
    for row, feature in enumerate(batch.features):
        valid_k = np.isfinite(top_scores[row])
        token_i = top_flat[row][valid_k] // band
        token_j = token_i + top_flat[row][valid_k] % band
        out.append(
            WindowCandidates(
                row_key=feature.row_key,
                window_index=feature.window_index,
                n_windows=feature.n_windows,
                starts=char_starts[row, token_i],
                ends=char_ends[row, token_j],
                logits=top_scores[row][valid_k].astype(np.float64),
                null_logit=float(null_logits[row]) if has_cls_np[row] else None,
            )
        )
    return out
