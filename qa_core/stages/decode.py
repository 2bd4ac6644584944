"""Stage 5: start/end logits of a batch become each window's best character spans.

For window b, a candidate is a pair of context tokens (i, j) with i <= j < i + max_answer_len, scored
`start[b, i] + end[b, j]` (the seed design's S.T_i + E.T_j). The search is a band, not a square: the
end logits are unfolded into a (B, P, L) view so every (i, j = i + d) pair is scored in one vectorized
op on the model's device, and only the `n_best` best candidates per window (a few numbers) leave it.
Logits already in host memory (a CPU model) are searched in numpy instead (`_search_host`): the same
result from a few array ops on the starts that can hold a kept span, where ~25 small torch calls per
batch cost more than the arithmetic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from qa_core.records import WindowCandidates
from qa_core.stages.batch import Batch, padded_rows

_NEG_INF = np.float32(-np.inf)


class DecodeError(ValueError):
    """The logits cannot be decoded (for example they hold NaN); the batch's rows are rejected."""


def _band(values: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    """A (B, P, L) view with `out[b, i, d] = values[b, i + d]`, `fill` past the end."""
    return torch.nn.functional.pad(values, (0, width - 1), value=fill).unfold(1, width, 1)


def _top_candidates(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `keep` best of every row of `scores` (B, N), exactly as a stable descending sort ranks them.

    Ties rank by flat index, ascending. `torch.topk` is used instead of sorting all P*L candidates (the
    sort was a third of the host's time on a CPU) but its choice and order among equal scores are
    unspecified, so when any finite score ties another within the kept ones or at the cut (rare: real
    logits are rarely equal), the kept set is ordered again, and rows tied at the cut are re-ranked with
    the full stable sort. One check of the device decides, so logits without ties cost one `topk`.

    Returns:
        (B, K) scores, descending, and (B, K) flat indices into N.
    """
    n = scores.shape[1]
    # One more than kept: the cut is ambiguous exactly when the first left-out candidate ties the last kept.
    top_scores, top_flat = torch.topk(scores, min(keep + 1, n), dim=1)  # (B, K+1), descending
    later = top_scores[:, 1:]  # (B, K): each score beside the one before it
    tied = (later == top_scores[:, :-1]) & torch.isfinite(later)  # (B, K)
    if not bool(tied.any()):
        return top_scores[:, :keep], top_flat[:, :keep]
    ambiguous = tied[:, keep - 1] if keep < n else torch.zeros_like(tied[:, 0])  # (B,)
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
    _check_shape(batch, start_logits, end_logits)
    n_windows, width = batch.input_ids.shape
    char_starts, char_ends = _char_offsets(batch)  # (B, P) each, -1 outside the context
    cls_index = np.fromiter((f.cls_index for f in batch.features), dtype=np.int64, count=n_windows)  # (B,)
    band = max(1, min(max_answer_len, width))
    keep = min(n_best, width * band)
    search = _search_host if start_logits.device.type == "cpu" else _search_device
    top_scores, top_flat, null_logits = search(
        start_logits, end_logits, char_starts, cls_index, band=band, keep=keep
    )

    token_i = top_flat // band  # (B, K)
    # A -inf candidate (a window with fewer than K spans) may end past the batch: clipped, then dropped.
    token_j = np.minimum(token_i + top_flat % band, width - 1)  # (B, K)
    windows = np.arange(n_windows)[:, None]  # (B, 1)
    starts = char_starts[windows, token_i]  # (B, K)
    ends = char_ends[windows, token_j]  # (B, K)
    logits = top_scores.astype(np.float64)  # (B, K)
    # (B, K): windows with fewer than K spans end in -inf
    valid: npt.NDArray[np.bool_] = np.isfinite(top_scores)
    whole = np.all(valid, axis=1, keepdims=False).tolist()  # (B,) as Python bools
    ranked = _ranked(logits, starts, ends, valid)
    out: list[WindowCandidates] = []
    for row, feature in enumerate(batch.features):
        kept = slice(None) if whole[row] else valid[row]
        out.append(
            WindowCandidates(
                row_key=feature.row_key,
                window_index=feature.window_index,
                n_windows=feature.n_windows,
                starts=starts[row, kept],
                ends=ends[row, kept],
                logits=logits[row, kept],
                null_logit=float(null_logits[row]) if cls_index[row] >= 0 else None,
                ranked=ranked[row],
            )
        )
    return out


def _ranked(
    logits: npt.NDArray[np.float64],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    valid: npt.NDArray[np.bool_],
) -> list[bool]:
    """Per window (B,): its valid candidates' logits strictly decrease and no (start, end) repeats.

    All (B, K); the valid candidates are a prefix of each row (the rest score -inf). Found for the batch
    in a few array ops, so aggregation skips the same checks row by row in Python.
    """
    decreasing = np.all((logits[:, 1:] < logits[:, :-1]) | ~valid[:, 1:], axis=1)  # (B,)
    # One int64 per span (offsets are below 2**31); left-out candidates get distinct negative keys.
    keys = np.where(valid, (starts << 32) | ends, -1 - np.arange(valid.shape[1]))  # (B, K)
    keys.sort(axis=1)
    distinct = np.all(keys[:, 1:] != keys[:, :-1], axis=1)  # (B,)
    ranked: list[bool] = (decreasing & distinct).tolist()
    return ranked


def _search_device(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    char_starts: npt.NDArray[np.int64],
    cls_index: npt.NDArray[np.int64],
    *,
    band: int,
    keep: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The band search on the logits' device (a GPU): only the kept candidates leave it.

    Returns:
        (B, K) scores, descending, ties by flat index; (B, K) flat indices `i * band + d`; (B,) null
        logits `start[cls] + end[cls]` (read at index 0 where a window has no CLS token).

    Raises:
        DecodeError: See `decode_batch`.
    """
    n_windows, width = start_logits.shape
    device = start_logits.device
    raw_start, raw_end = start_logits.float(), end_logits.float()  # (B, P); no copy when already fp32
    pair = raw_start + raw_end  # (B, P): finite everywhere in a sound batch, which one check shows
    if not bool(torch.isfinite(pair).all()):
        _check_values(raw_start, raw_end, char_starts >= 0, cls_index)
    outside = torch.from_numpy(char_starts < 0).to(device)  # (B, P)
    # Tokens outside the context get -inf, so every pair with one of them scores -inf: the (B, P) masks
    # replace a mask over all (B, P, L) pairs.
    start = raw_start.masked_fill(outside, float("-inf"))  # (B, P)
    end = raw_end.masked_fill(outside, float("-inf"))  # (B, P)
    # (B, P, L): start i + end i + d, then flat (B, P*L)
    scores = (start.unsqueeze(2) + _band(end, band, float("-inf"))).reshape(n_windows, width * band)
    top_scores, top_flat = _top_candidates(scores, keep)
    # The CLS token is outside the context: its null logit `start[cls] + end[cls]` is read from `pair`.
    safe_cls = torch.from_numpy(np.maximum(cls_index, 0)).to(device).unsqueeze(1)  # (B, 1)
    null_logits = pair.gather(1, safe_cls).squeeze(1).cpu().numpy()  # (B,)
    return top_scores.cpu().numpy(), top_flat.cpu().numpy(), null_logits


def _search_host(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    char_starts: npt.NDArray[np.int64],
    cls_index: npt.NDArray[np.int64],
    *,
    band: int,
    keep: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The band search in numpy, for logits in this process's memory: `_search_device`'s result.

    The rule is the same (a stable descending sort's first K of the flat (B, P*L) scores), found without
    scoring every pair: a window's K best spans all score at least T, the K-th largest of its per-start
    bests `start[i] + max(end[i : i + L])` (those are K distinct spans). So only the starts whose best
    reaches T are scored, only their spans at or above T are kept, and those few are sorted by (window,
    score descending), stable, so ties stay in flat-index order. A window with fewer than K scored
    starts (T = -inf) keeps all its spans. Float addition is monotonic, so a start's best is exactly its
    best span's score, and every score is the same float32 sum as the device's.

    Returns:
        As `_search_device`.

    Raises:
        DecodeError: See `decode_batch`.
    """
    n_windows, width = start_logits.shape
    raw_start = start_logits.detach().float().numpy()  # (B, P) float32, a view when already fp32
    raw_end = end_logits.detach().float().numpy()  # (B, P)
    pair = raw_start + raw_end  # (B, P): finite everywhere in a sound batch, which one check shows
    if not np.isfinite(pair).all():
        _check_values(start_logits.float(), end_logits.float(), char_starts >= 0, cls_index)
    outside = char_starts < 0  # (B, P)
    start = np.where(outside, _NEG_INF, raw_start)  # (B, P) float32
    padded_end = np.full((n_windows, width + band - 1), _NEG_INF, dtype=np.float32)  # (B, P + L - 1)
    np.copyto(padded_end[:, :width], raw_end, where=~outside)
    best = start + _window_max(padded_end, band, width)  # (B, P): each start's best span
    if keep <= width:
        threshold = np.sort(best, axis=1)[:, width - keep]  # (B,) the K-th largest
        scored_starts = np.flatnonzero(best >= threshold[:, None])  # (M,) flat (b, i): the starts to score
    else:  # more kept than starts: every start is scored
        threshold = np.full(n_windows, _NEG_INF, dtype=np.float32)
        scored_starts = np.arange(n_windows * width)
    window, token = np.divmod(scored_starts, width)  # (M,) each
    step = padded_end.strides[1]
    # (B, P, L) view with ends[b, i, d] = padded_end[b, i + d] (built directly: sliding_window_view's
    # checks cost more than this whole search's arithmetic)
    ends = np.ndarray(
        (n_windows, width, band), np.float32, padded_end, 0, (padded_end.strides[0], step, step)
    )
    scored = start.ravel()[scored_starts, None] + ends[window, token]  # (M, L)
    hits = np.flatnonzero(scored >= threshold[window, None])  # (S,) in flat-index order
    kept, offset = np.divmod(hits, band)  # (S,) each
    values = scored.ravel()[hits]  # (S,)
    rows = window[kept]  # (S,) ascending
    flat = token[kept] * band + offset  # (S,) i * L + d
    # By window, then score descending; ties keep flat order: one stable sort of one integer key (two
    # stable sorts of floats, or lexsort, cost several times more at a GPU batch's thousands of spans).
    order = np.argsort(_window_then_descending(rows, values), kind="stable")  # (S,)
    counts = np.bincount(rows, minlength=n_windows)  # (B,) each at least K
    firsts = np.cumsum(counts) - counts  # (B,)
    picks = order[firsts[:, None] + np.arange(keep)]  # (B, K)
    null_logits = pair[np.arange(n_windows), np.maximum(cls_index, 0)]  # (B,)
    return values[picks], flat[picks], null_logits


def _window_then_descending(
    rows: npt.NDArray[np.int64], values: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint64]:
    """(S,) keys whose ascending order is by `rows` ascending, then `values` descending.

    The float32 bits are mapped to a uint32 that orders as the floats do (negatives' bits inverted, the
    sign bit set on the others), inverted for descending, below the row in the high 32 bits. Equal floats
    give equal keys (-0.0 is made +0.0 first), so a stable sort keeps their order. No NaN reaches here
    (`_check_values`); -inf orders last.
    """
    bits = (values + np.float32(0.0)).view(np.uint32)  # (S,); + 0.0 turns -0.0 into +0.0
    negative = bits >= np.uint32(0x80000000)
    ascending = np.where(negative, ~bits, bits | np.uint32(0x80000000))  # (S,) ordered as the floats
    return (rows.astype(np.uint64) << np.uint64(32)) | (~ascending).astype(np.uint64)


def _window_max(values: npt.NDArray[np.float32], width: int, count: int) -> npt.NDArray[np.float32]:
    """(B, count): `out[b, i] = max(values[b, i : i + width])`, by doubling spans (log2(width) maxima).

    `values` is (B, count + width - 1).
    """
    span = 1
    while span * 2 <= width:
        values = np.maximum(values[:, :-span], values[:, span:])  # now the max over [i, i + 2 span)
        span *= 2
    return np.maximum(values[:, :count], values[:, width - span : width - span + count])


def _check_shape(batch: Batch, start_logits: torch.Tensor, end_logits: torch.Tensor) -> None:
    """Raises `DecodeError` on logits of another shape than the batch."""
    shape = tuple(batch.input_ids.shape)  # (B, P)
    if tuple(start_logits.shape) != shape or tuple(end_logits.shape) != shape:
        raise DecodeError(
            f"logits of shape {tuple(start_logits.shape)} / {tuple(end_logits.shape)} do not match the "
            f"batch {shape}"
        )


def _check_values(
    start: torch.Tensor,
    end: torch.Tensor,
    in_context: npt.NDArray[np.bool_],
    cls_index: npt.NDArray[np.int64],
) -> None:
    """Raises `DecodeError` on NaN anywhere, or an infinite logit on a context or CLS token.

    Only reached when some logit is not finite: infinite logits in padding or on question tokens are
    harmless and pass.
    """
    if bool(torch.isnan(start).any() | torch.isnan(end).any()):
        raise DecodeError("the model produced NaN logits")
    infinite = (torch.isinf(start) | torch.isinf(end)).cpu().numpy()  # (B, P)
    if (infinite & in_context).any():
        raise DecodeError("the model produced infinite logits")
    rows = np.flatnonzero(cls_index >= 0)
    if infinite[rows, cls_index[rows]].any():
        raise DecodeError("the model produced infinite logits at the CLS token")


def _char_offsets(batch: Batch) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(B, P) start and end characters of every token position, -1 outside the context and in padding."""
    real = batch.attention_mask.astype(bool)  # (B, P): collate's mask, ones over each window's own tokens
    starts = padded_rows([f.char_starts for f in batch.features], real, -1)
    return starts, padded_rows([f.char_ends for f in batch.features], real, -1)
