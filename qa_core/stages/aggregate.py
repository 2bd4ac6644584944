"""Stage 6: the candidates of all windows of a record become its `Answer`.

Ranking uses the raw logit sum `start_logit[i] + end_logit[j]`, which is comparable across windows of the
same row (each window's logits come from the same model on the same question). Every span is first
widened to extended grapheme cluster boundaries (`qa_core.stages.graphemes`: token offsets can start or
end inside a user-perceived character, e.g. before a combining accent), so an answer is always whole
characters. A character span seen in several overlapping windows, or snapped from several token spans,
is one candidate with its best logit (never a sum, which would favour spans in overlaps). Ties are broken
by start, then end offset, so the result never depends on batching.

Score definition (also in the README and the output schema): `score` is the softmax probability of the
answer among the row's candidates, `exp((l - m) / T) / sum_c exp((l_c - m) / T)` with `m` the largest
logit and `T` the temperature (`decode.temperature`, fitted by `docqa calibrate`, else 1), where the
candidates are the `n_best` best spans of each window, de-duplicated by character span, plus the null
answer when no-answer handling is on (its logit is the smallest CLS score over the row's windows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qa_core.config import DecodeConfig
from qa_core.records import Answer, Record, SpanScore, WindowCandidates
from qa_core.stages.graphemes import snap_spans


class AggregateError(ValueError):
    """The candidates of a record are inconsistent (missing windows, wrong record)."""


def _merge_spans(
    record: Record, candidates: Sequence[WindowCandidates]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All windows' spans in `record.context`, snapped to grapheme clusters, one per (start, end).

    Each span keeps its max logit; the order is (-logit, start, end). A row has a few dozen candidates
    (`n_best` per window): a dict and a sort of Python floats are several times faster here than numpy's
    lexsort/unique, whose per-call overhead dominates at this size.

    Raises:
        AggregateError: When a span is not inside the context.
    """
    snapped: list[tuple[list[int], list[int]]] = []
    moved = False
    for c in candidates:
        raw_starts, raw_ends = c.starts.tolist(), c.ends.tolist()
        try:
            starts, ends = snap_spans(record.context, raw_starts, raw_ends)
        except ValueError as err:
            raise AggregateError(f"row {record.row_key}, window {c.window_index}: {err}") from err
        moved = moved or starts != raw_starts or ends != raw_ends
        snapped.append((starts, ends))
    if len(candidates) == 1 and not moved and _ranked_and_distinct(candidates[0]):
        # One window whose spans decode already ranked in this order (the usual case) and that snapping
        # left alone (a moved span may now equal another or tie-break differently): nothing to merge.
        only = candidates[0]
        return only.starts.astype(np.int64), only.ends.astype(np.int64), only.logits.astype(np.float64)
    best: dict[tuple[int, int], float] = {}
    for c, (starts, ends) in zip(candidates, snapped, strict=True):
        for span in zip(starts, ends, c.logits.tolist(), strict=True):
            key, logit = (span[0], span[1]), float(span[2])
            if key not in best or logit > best[key]:
                best[key] = logit
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))
    merged_starts = np.array([key[0] for key, _ in ranked], dtype=np.int64)
    merged_ends = np.array([key[1] for key, _ in ranked], dtype=np.int64)
    logits = np.array([logit for _, logit in ranked], dtype=np.float64)
    return merged_starts, merged_ends, logits


def _ranked_and_distinct(window: WindowCandidates) -> bool:
    """Whether a window's spans are distinct and already in (-logit, start, end) order.

    Decode ranks by (-logit, start token, end token); character offsets grow with the token position, so
    this holds unless tokens share offsets (one character split into several tokens) and logits tie.
    """
    lg, st, en = window.logits, window.starts, window.ends
    if len(set(zip(st.tolist(), en.tolist(), strict=True))) != len(st):
        return False
    same, earlier = lg[:-1] == lg[1:], (st[:-1] < st[1:]) | ((st[:-1] == st[1:]) & (en[:-1] < en[1:]))
    return bool(((lg[:-1] > lg[1:]) | (same & earlier)).all())


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax in float64 (stable for logits near +-1e4)."""
    shifted = np.exp(logits - logits.max())
    return np.asarray(shifted / shifted.sum(), dtype=np.float64)


def aggregate(record: Record, candidates: Sequence[WindowCandidates], config: DecodeConfig) -> Answer:
    """The answer of one record from the candidates of all its windows.

    Args:
        record: The record (its context gives the answer text).
        candidates: One `WindowCandidates` per window of the record, in any order.
        config: `top_k`, no-answer handling and threshold.

    Raises:
        AggregateError: When windows are missing, duplicated or belong to another record.
    """
    if not candidates:
        raise AggregateError(f"row {record.row_key}: no window candidates")
    expected = candidates[0].n_windows
    indices = sorted(c.window_index for c in candidates)
    if indices != list(range(expected)) or any(c.row_key != record.row_key for c in candidates):
        raise AggregateError(
            f"row {record.row_key}: got windows {indices} of {expected} (or another row's windows)"
        )
    starts, ends, logits = _merge_spans(record, candidates)
    if logits.size == 0:
        raise AggregateError(f"row {record.row_key}: no valid span in any window")

    null_logit: float | None = None
    if config.handle_no_answer:
        nulls = [c.null_logit for c in candidates if c.null_logit is not None]
        if not nulls:
            raise AggregateError(f"row {record.row_key}: no-answer handling needs a CLS token")
        # The window most sure that an answer exists sets the row's null score.
        null_logit = min(nulls)

    all_logits = logits if null_logit is None else np.append(logits, null_logit)
    # Temperature scaling (1.0 unless the model ships a calibration, see qa_core.evaluation.calibration).
    probs = _softmax(all_logits / config.temperature)
    # Only the spans that can be returned are materialized (`top_k`; the null answer is ranked among
    # them below, and anything it pushes past `top_k` is cut anyway).
    shown = min(config.top_k, logits.size)
    spans = [
        SpanScore(record.context[s:e], int(s), int(e), float(p), float(lg))
        for s, e, lg, p in zip(starts[:shown], ends[:shown], logits[:shown], probs[:shown], strict=True)
    ]
    null_diff: float | None = None
    no_answer = False
    ranked = spans
    if null_logit is not None:
        null_span = SpanScore("", None, None, float(probs[-1]), null_logit)
        null_diff = null_logit - float(logits[0])
        no_answer = null_diff > config.null_threshold
        # The returned answer comes first; the other candidates follow by logit.
        ranked = [null_span, *spans] if no_answer else _insert_by_logit(spans, null_span)
    best = ranked[0]
    return Answer(
        row_key=record.row_key,
        id=record.id,
        answer=best.answer,
        start=best.start,
        end=best.end,
        score=best.score,
        logit_score=best.logit_score,
        no_answer=no_answer,
        null_score_diff=null_diff,
        top_k=tuple(ranked[: config.top_k]) if config.top_k > 1 else (),
        passthrough=record.passthrough,
    )


def _insert_by_logit(spans: list[SpanScore], null_span: SpanScore) -> list[SpanScore]:
    """`spans` with the null answer placed after the winning span, at its logit rank among the rest."""
    rest = spans[1:]
    position = next((k for k, s in enumerate(rest) if s.logit_score < null_span.logit_score), len(rest))
    return [spans[0], *rest[:position], null_span, *rest[position:]]
