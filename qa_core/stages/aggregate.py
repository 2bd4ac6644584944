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

import itertools
import operator
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from qa_core.config import DecodeConfig
from qa_core.records import Answer, Record, SpanScore, WindowCandidates
from qa_core.stages.graphemes import boundary_everywhere, snap_spans


class AggregateError(ValueError):
    """The candidates of a record are inconsistent (missing windows, wrong record)."""


# A row's spans, best first: (starts, ends, logits), Python lists of one length. A row has a few dozen
# candidates (`n_best` per window): at this size, lists and a sort of tuples are several times faster than
# numpy, whose per-call overhead dominates.
Spans = tuple[list[int], list[int], list[float]]


def _snapped(record: Record, window: WindowCandidates, everywhere: bool) -> Spans:
    """A window's spans as lists, snapped to grapheme clusters, in the window's order.

    `everywhere` is `boundary_everywhere(record.context)`, found once for the row's windows.

    Raises:
        AggregateError: When a span is not inside the context.
    """
    try:
        starts, ends = snap_spans(record.context, window.starts.tolist(), window.ends.tolist(), everywhere)
    except ValueError as err:
        raise AggregateError(f"row {record.row_key}, window {window.window_index}: {err}") from err
    return starts, ends, window.logits.tolist()


def _merge_spans(record: Record, candidates: Sequence[WindowCandidates]) -> Spans:
    """All windows' spans in `record.context`, snapped to grapheme clusters, one per (start, end).

    Each span keeps its max logit; the order is (-logit, start, end). The rule is `_merge_spans_general`.
    Where no two logits tie and no span comes twice (what decode gives, unless logits tie or overlapping
    windows find the same span) there is nothing to merge and the order is by logit alone: a lone
    window's spans are in it already (decode ranks them, and says so in `ranked` when nothing tied),
    several windows' are sorted by logit.

    Raises:
        AggregateError: When a span is not inside the context.
    """
    everywhere = boundary_everywhere(record.context)
    windows = [_snapped(record, c, everywhere) for c in candidates]
    if len(windows) == 1:
        if everywhere and candidates[0].ranked:  # nothing snapped: decode's checks hold
            return windows[0]
        starts, ends, logits = windows[0]
        # Strictly decreasing logits leave no tie for (start, end) to break; NaN fails the comparison.
        ranked = len(logits) == len(starts) and all(map(operator.gt, logits, logits[1:]))
        if ranked and len(set(zip(starts, ends, strict=True))) == len(starts):
            return windows[0]
        return _merge_spans_general(windows)
    starts = list(itertools.chain.from_iterable(w[0] for w in windows))
    ends = list(itertools.chain.from_iterable(w[1] for w in windows))
    logits = list(itertools.chain.from_iterable(w[2] for w in windows))
    count = len(logits)
    if len(set(logits)) == count and len(set(zip(starts, ends, strict=True))) == count:
        # A float key, no tuples (NaN, which decode refuses, has no order here or in the general merge).
        order = sorted(range(count), key=logits.__getitem__, reverse=True)
        return [starts[k] for k in order], [ends[k] for k in order], [logits[k] for k in order]
    return _merge_spans_general(windows)


def _merge_spans_general(windows: Sequence[Spans]) -> Spans:
    """Spans of any windows merged: one per (start, end) with its max logit, by (-logit, start, end).

    Sorting every (-logit, start, end) and keeping each span's first entry is the same as keeping each
    span's max logit, then sorting: the first entry of a span is its max, and the order of those is kept.
    Equal logits of one span keep the first in window order (the sort is stable).
    """
    # Each window's spans are one sorted run already (decode ranks them): the sort merges the runs.
    entries = sorted(
        itertools.chain.from_iterable(zip(map(operator.neg, w[2]), w[0], w[1], strict=True) for w in windows)
    )
    seen: set[tuple[int, int]] = set()
    merged: Spans = ([], [], [])
    for negated, start, end in entries:
        if (start, end) not in seen:
            seen.add((start, end))
            merged[0].append(start)
            merged[1].append(end)
            merged[2].append(-negated)
    return merged


def _softmax(logits: list[float], temperature: float) -> tuple[npt.NDArray[np.float64], float]:
    """`exp(x - max x)` of `x = logits / temperature` (float64, stable near +-1e4) and its sum.

    Probability k is `exps[k] / total`: every step is the one a numpy softmax over the array takes (the
    same divisions, max, exp and pairwise sum), so the scores are the same to the last bit. Python's max
    skips a NaN that numpy's returns, but a NaN makes every probability NaN either way.
    """
    scaled = logits if temperature == 1.0 else [value / temperature for value in logits]
    exps = np.exp(np.subtract(scaled, max(scaled)))  # (K,) float64
    return exps, float(np.add.reduce(exps))


def _check_windows(record: Record, candidates: Sequence[WindowCandidates]) -> None:
    """Raises `AggregateError` unless `candidates` are windows 0..n-1 of `record`, each once."""
    if not candidates:
        raise AggregateError(f"row {record.row_key}: no window candidates")
    first = candidates[0]
    lone = len(candidates) == 1 and first.window_index == 0 and first.n_windows == 1
    if lone and first.row_key == record.row_key:  # the usual row: one window, nothing to sort
        return
    expected = first.n_windows
    indices = sorted(c.window_index for c in candidates)
    if indices != list(range(expected)) or any(c.row_key != record.row_key for c in candidates):
        raise AggregateError(
            f"row {record.row_key}: got windows {indices} of {expected} (or another row's windows)"
        )


def aggregate(record: Record, candidates: Sequence[WindowCandidates], config: DecodeConfig) -> Answer:
    """The answer of one record from the candidates of all its windows.

    Args:
        record: The record (its context gives the answer text).
        candidates: One `WindowCandidates` per window of the record, in any order.
        config: `top_k`, no-answer handling and threshold.

    Raises:
        AggregateError: When windows are missing, duplicated or belong to another record.
    """
    _check_windows(record, candidates)
    starts, ends, logits = _merge_spans(record, candidates)
    if not logits:
        raise AggregateError(f"row {record.row_key}: no valid span in any window")

    null_logit: float | None = None
    if config.handle_no_answer:
        nulls = [c.null_logit for c in candidates if c.null_logit is not None]
        if not nulls:
            raise AggregateError(f"row {record.row_key}: no-answer handling needs a CLS token")
        # The window most sure that an answer exists sets the row's null score.
        null_logit = min(nulls)

    # Temperature scaling (1.0 unless the model ships a calibration, see qa_core.evaluation.calibration).
    # float(): a hand-built null logit may be a numpy scalar, which a float64 array would have converted.
    exps, total = _softmax(logits if null_logit is None else [*logits, float(null_logit)], config.temperature)
    null_diff: float | None = None
    no_answer = False
    if null_logit is not None:
        null_diff = null_logit - logits[0]
        no_answer = null_diff > config.null_threshold
    top_k = _top_k(
        record.context,
        (starts, ends, logits),
        exps,
        total,
        null_logit=null_logit,
        no_answer=no_answer,
        top_k=config.top_k,
    )
    if null_logit is not None and no_answer:  # the null answer won
        answer, start, end, score, logit = "", None, None, float(exps[-1]) / total, null_logit
    else:
        start, end, logit = starts[0], ends[0], logits[0]
        answer, score = record.context[start:end], float(exps[0]) / total
    return Answer(
        record.row_key,
        record.id,
        answer,
        start,
        end,
        score,
        logit,
        no_answer,
        null_diff,
        top_k,
        record.passthrough,
    )


def _top_k(
    context: str,
    spans: Spans,
    exps: npt.NDArray[np.float64],
    total: float,
    *,
    null_logit: float | None,
    no_answer: bool,
    top_k: int,
) -> tuple[SpanScore, ...]:
    """The `top_k` column: the returned answer first, then the other candidates by logit; () for 1."""
    if top_k <= 1:
        return ()
    starts, ends, logits = spans
    # Only the spans that can be shown are materialized (the null answer, ranked among them, only pushes
    # later ones past `top_k`).
    ranked = [
        SpanScore(context[starts[k] : ends[k]], starts[k], ends[k], float(exps[k]) / total, logits[k])
        for k in range(min(top_k, len(logits)))
    ]
    if null_logit is not None:
        null_span = SpanScore("", None, None, float(exps[-1]) / total, null_logit)
        ranked = [null_span, *ranked] if no_answer else _insert_by_logit(ranked, null_span)
    return tuple(ranked[:top_k])


def _insert_by_logit(spans: list[SpanScore], null_span: SpanScore) -> list[SpanScore]:
    """`spans` with the null answer placed after the winning span, at its logit rank among the rest."""
    rest = spans[1:]
    position = next((k for k, s in enumerate(rest) if s.logit_score < null_span.logit_score), len(rest))
    return [spans[0], *rest[:position], null_span, *rest[position:]]
