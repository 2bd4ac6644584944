"""Stage 5: start/end logits of a batch become each window's best character spans.

For window b, a candidate is a pair of context tokens (i, j) with i <= j < i + max_answer_len, scored
`start[b, i] + end[b, j]` (the seed design's S.T_i + E.T_j). The search is a band, not a square: the
end logits are unfolded into a (B, P, L) view so every (i, j = i + d) pair is scored in one vectorized
op on the model's device, and only the `n_best` best candidates per window (a few numbers) leave it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from qa_core.records import WindowCandidates
from qa_core.stages.batch import Batch


class DecodeError(ValueError):
    """The logits cannot be decoded (for example they hold NaN); the batch's rows are rejected."""


def _band(values: torch.Tensor, width: int, fill: float | bool) -> torch.Tensor:
    """A (B, P, L) view with `out[b, i, d] = values[b, i + d]`, `fill` past the end."""
    pad = torch.full((values.shape[0], width - 1), fill, dtype=values.dtype, device=values.device)
    return torch.cat([values, pad], dim=1).unfold(1, width, 1)


def _top_candidates(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `keep` best of every row of `scores` (B, N), exactly as a stable descending sort ranks them.

    Ties rank by flat index, ascending. `torch.topk` is used instead of sorting all P*L candidates (the
    sort was a third of the host's time on a CPU) but its choice among equal scores is unspecified, so
    rows whose cut-off score is tied past the cut (rare: real logits are rarely equal) are re-ranked with
    the full stable sort.

    Returns:
        (B, K) scores, descending, and (B, K) flat indices into N.
    """
    n = scores.shape[1]
    # One more than kept: the cut is ambiguous exactly when the first left-out candidate ties the last kept.
    top_scores, top_flat = torch.topk(scores, min(keep + 1, n), dim=1)  # (B, K+1), descending
    if keep < n:
        ambiguous = torch.isfinite(top_scores[:, keep]) & (
            top_scores[:, keep] == top_scores[:, keep - 1]
        )  # (B,)
    else:
        ambiguous = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    top_scores, top_flat = top_scores[:, :keep], top_flat[:, :keep]
    # Inside the kept set, order equal scores by flat index: sort by index, then stable by score.
    top_flat, by_index = torch.sort(top_flat, dim=1)
    top_scores, by_score = torch.sort(top_scores.gather(1, by_index), dim=1, descending=True, stable=True)
    top_flat = top_flat.gather(1, by_score)
    if bool(ambiguous.any()):  # topk may have kept other tied candidates than the stable sort would
        rows = ambiguous.nonzero().squeeze(1)
        exact_scores, exact_flat = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        top_scores[rows] = exact_scores[:, :keep]
        top_flat[rows] = exact_flat[:, :keep]
    return top_scores, top_flat


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
        DecodeError: When the logits hold NaN, are infinite on a context or CLS token (fp16 overflow), or
            have the wrong shape.
    """
    _check_logits(batch, start_logits, end_logits)
    n_windows, width = batch.input_ids.shape
    device = start_logits.device
    char_starts, char_ends = _char_offsets(batch)  # (B, P) each, -1 outside the context
    in_context = torch.from_numpy(char_starts >= 0).to(device)  # (B, P)
    # Tokens outside the context get -inf, so every pair with one of them scores -inf: the (B, P) masks
    # replace a mask over all (B, P, L) pairs.
    raw_start, raw_end = start_logits.float(), end_logits.float()  # (B, P); no copy when already fp32
    start = raw_start.masked_fill(~in_context, float("-inf"))  # (B, P)
    end = raw_end.masked_fill(~in_context, float("-inf"))  # (B, P)
    if bool(((torch.isinf(start) | torch.isinf(end)) & in_context).any()):
        raise DecodeError("the model produced infinite logits")

    band = max(1, min(max_answer_len, width))
    # (B, P, L): start i + end i + d, then flat (B, P*L)
    scores = (start.unsqueeze(2) + _band(end, band, float("-inf"))).reshape(n_windows, width * band)
    top_scores_t, top_flat_t = _top_candidates(scores, min(n_best, width * band))
    top_scores = top_scores_t.cpu().numpy()  # (B, K)
    top_flat = top_flat_t.cpu().numpy()  # (B, K): i * L + d

    # The CLS token is outside the context: its logits come from the unmasked tensors.
    null_logits, has_cls_np = _null_logits(batch, raw_start, raw_end)

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


def _check_logits(batch: Batch, start_logits: torch.Tensor, end_logits: torch.Tensor) -> None:
    """Raises `DecodeError` on logits of the wrong shape or holding NaN."""
    shape = tuple(batch.input_ids.shape)  # (B, P)
    if tuple(start_logits.shape) != shape or tuple(end_logits.shape) != shape:
        raise DecodeError(
            f"logits of shape {tuple(start_logits.shape)} / {tuple(end_logits.shape)} do not match the "
            f"batch {shape}"
        )
    if bool(torch.isnan(start_logits).any() | torch.isnan(end_logits).any()):
        raise DecodeError("the model produced NaN logits")


def _char_offsets(batch: Batch) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(B, P) start and end characters of every token position, -1 outside the context and in padding."""
    char_starts = np.full(batch.input_ids.shape, -1, dtype=np.int64)
    char_ends = np.full(batch.input_ids.shape, -1, dtype=np.int64)
    for row, feature in enumerate(batch.features):
        char_starts[row, : feature.length] = feature.char_starts
        char_ends[row, : feature.length] = feature.char_ends
    return char_starts, char_ends


def _null_logits(
    batch: Batch, start: torch.Tensor, end: torch.Tensor
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Per window, `start[cls] + end[cls]` (B,) and whether the window has a CLS token (B,).

    Raises:
        DecodeError: When a CLS logit is infinite (fp16 overflow).
    """
    cls_index = torch.tensor([f.cls_index for f in batch.features], device=start.device)  # (B,)
    has_cls = (cls_index >= 0).cpu().numpy()
    safe_cls = cls_index.clamp(min=0).unsqueeze(1)  # (B, 1)
    null_logits = (start.gather(1, safe_cls) + end.gather(1, safe_cls)).squeeze(1).cpu().numpy()  # (B,)
    if not np.isfinite(null_logits[has_cls]).all():
        raise DecodeError("the model produced infinite logits at the CLS token")
    return null_logits, has_cls
