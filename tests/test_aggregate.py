"""`aggregate` and its fast paths against a brute-force reference on hand-built window candidates.

The reference is the rule as the module docstring states it, written the slow way: every span snapped
alone, a dict of each character span's max logit, a sort by (-logit, start, end), a numpy softmax. The
engine's shortcuts (a lone ranked window returned as it is, the sort-and-dedup merge, the softmax's max
and divisions in Python) must give the same `Answer` to the last bit, ties and multi-window rows included.
"""

from __future__ import annotations

import itertools
import math
import random
import unicodedata

import numpy as np
import pytest

from qa_core.config import DecodeConfig
from qa_core.records import Answer, Record, SpanScore, WindowCandidates
from qa_core.stages import aggregate as aggregate_module
from qa_core.stages.aggregate import AggregateError, aggregate
from qa_core.stages.graphemes import boundary_everywhere, snap_span

# Words of whole clusters and cut ones: NFD accents (a token end before U+0301 snaps forward), a conjunct.
WORDS = ["alpha", "beta", unicodedata.normalize("NFD", "José"), "café", "नमस्ते", "x", "東京"]


def reference(record: Record, candidates: list[WindowCandidates], config: DecodeConfig) -> Answer:
    """The answer by the documented rule, one span at a time (no shortcut of the engine's)."""
    best: dict[tuple[int, int], float] = {}
    for window in candidates:
        for start, end, logit in zip(window.starts, window.ends, window.logits, strict=True):
            span = snap_span(record.context, int(start), int(end))
            if span not in best or float(logit) > best[span]:
                best[span] = float(logit)
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))
    nulls = [c.null_logit for c in candidates if c.null_logit is not None]
    null = min(nulls) if config.handle_no_answer else None
    logits = np.array([lg for _, lg in ranked] + ([] if null is None else [null]), dtype=np.float64)
    scaled = logits / config.temperature
    exps = np.exp(scaled - scaled.max())
    probs = exps / exps.sum()
    entries = [
        SpanScore(record.context[s:e], s, e, float(p), lg)
        for ((s, e), lg), p in zip(ranked, probs[: len(ranked)], strict=True)
    ]
    order, diff, no_answer = entries, None, False
    if null is not None:
        null_entry = SpanScore("", None, None, float(probs[-1]), null)
        diff = null - ranked[0][1]
        no_answer = diff > config.null_threshold
        if no_answer:
            order = [null_entry, *entries]
        else:  # after the winner, before the first other span with a lower logit
            rest = entries[1:]
            order = [entries[0], *[r for r in rest if r.logit_score >= null], null_entry]
            order += [r for r in rest if r.logit_score < null]
    top = order[0]
    return Answer(
        record.row_key,
        record.id,
        top.answer,
        top.start,
        top.end,
        top.score,
        top.logit_score,
        no_answer,
        diff,
        tuple(order[: config.top_k]) if config.top_k > 1 else (),
        record.passthrough,
    )


def random_row(rng: random.Random, key: str) -> tuple[Record, list[WindowCandidates]]:
    """A row of 1-3 windows: spans at word edges (some cut inside a cluster), logits often tied."""
    context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    n_windows = rng.choice([1, 1, 1, 2, 3])
    tied = rng.random() < 0.4
    windows = []
    for index in range(n_windows):
        spans = []
        for _ in range(rng.randint(1, 8)):
            start = rng.randint(0, len(context) - 1)
            spans.append((start, rng.randint(start + 1, len(context))))
        if rng.random() < 0.3:  # the same span twice in a window (tokens sharing offsets)
            spans.append(rng.choice(spans))
        draw = (lambda: float(rng.randint(-2, 2))) if tied else (lambda: rng.gauss(0.0, 3.0))
        logits = [draw() for _ in spans]
        # Decode's order: by logit, descending (ties: the order drawn, which is not by characters).
        order = sorted(range(len(spans)), key=lambda k: -logits[k])
        windows.append(
            WindowCandidates(
                key,
                index,
                n_windows,
                np.array([spans[k][0] for k in order], np.int64),
                np.array([spans[k][1] for k in order], np.int64),
                np.array([logits[k] for k in order], np.float64),
                float(rng.randint(-3, 3)) if rng.random() < 0.5 else rng.gauss(0.0, 3.0),
            )
        )
    rng.shuffle(windows)
    return Record(key, f"id-{key}", "q", context, {"p": key}, ("p",)), windows


def test_aggregate_matches_the_reference_bit_for_bit() -> None:
    rng = random.Random(11)
    fast_path_rows = 0
    for trial in range(3000):
        record, windows = random_row(rng, f"r{trial}")
        config = DecodeConfig(
            top_k=rng.randint(1, 4),
            handle_no_answer=rng.random() < 0.5,
            null_threshold=rng.choice([0.0, 1.0, -1.0]),
            temperature=rng.choice([1.0, 0.7, 2.5]),
        )
        got = aggregate(record, windows, config)
        # repr: floats compared to the last bit (-0.0 included), every field of the answer and its top_k
        assert repr(got) == repr(reference(record, windows, config)), (trial, record.context, windows)
        logits = windows[0].logits.tolist()
        fast_path_rows += len(windows) == 1 and all(a > b for a, b in itertools.pairwise(logits))
    assert fast_path_rows > 500  # the lone-window shortcut was taken, not only the general merge


def test_shortcuts_equal_the_general_merge() -> None:
    """Without ties and repeated spans the merge sorts by logit alone (a lone window: not at all)."""
    rng = random.Random(3)
    shortcuts = 0
    for trial in range(3000):
        record, windows = random_row(rng, f"r{trial}")
        everywhere = boundary_everywhere(record.context)
        snapped = [aggregate_module._snapped(record, w, everywhere) for w in windows]
        got = aggregate_module._merge_spans(record, windows)
        assert got == aggregate_module._merge_spans_general(snapped), (trial, record.context)
        logits = [logit for w in snapped for logit in w[2]]
        spans = [span for w in snapped for span in zip(w[0], w[1], strict=True)]
        shortcuts += len(windows) > 1 and len(set(logits)) == len(logits) == len(set(spans))
    assert shortcuts > 100  # the multi-window shortcut was taken


def test_merge_keeps_each_spans_max_logit_and_breaks_ties_by_characters() -> None:
    merged = aggregate_module._merge_spans_general(
        [
            ([5, 0, 2], [7, 1, 3], [1.0, 1.0, 0.5]),  # decode's order: ties not by characters
            ([2, 0], [3, 1], [2.0, 0.5]),  # (2, 3) again, higher: it moves up; (0, 1) lower: ignored
        ]
    )
    assert merged == ([2, 0, 5], [3, 1, 7], [2.0, 1.0, 1.0])
    # Equal logits of one span (0.0 and -0.0): the first in window order is kept.
    assert aggregate_module._merge_spans_general([([0, 0], [1, 1], [0.0, -0.0])])[2] == [0.0]
    assert math.copysign(1.0, aggregate_module._merge_spans_general([([0], [1], [-0.0])])[2][0]) == -1.0


@pytest.mark.parametrize("temperature", [1.0, 0.3, 7.0])
def test_softmax_is_numpys_to_the_last_bit(temperature: float) -> None:
    rng = np.random.default_rng(5)
    specials = [math.inf, -math.inf, math.nan, 1e4, -1e4, 0.0, -0.0]
    for _ in range(2000):
        values = (rng.standard_normal(int(rng.integers(1, 45))) * rng.choice([1.0, 1e3])).tolist()
        if rng.random() < 0.2:
            values[int(rng.integers(0, len(values)))] = float(rng.choice(specials))
        scaled = np.array(values) / temperature
        with np.errstate(invalid="ignore"):  # inf - inf, NaN: every probability NaN
            exps, total = aggregate_module._softmax(values, temperature)
            shifted = np.exp(scaled - scaled.max())
            expected = shifted / shifted.sum()
            got = exps / total
        assert got.tobytes() == expected.tobytes(), values


def test_window_checks() -> None:
    record = Record("k", 1, "q", "ab")

    def window(index: int, n_windows: int, key: str = "k") -> WindowCandidates:
        return WindowCandidates(key, index, n_windows, np.array([0]), np.array([1]), np.array([1.0]), None)

    wrong = [[], [window(1, 1)], [window(0, 2)], [window(0, 1, "other")], [window(0, 2), window(0, 2)]]
    for windows in wrong:
        with pytest.raises(AggregateError, match="row k"):
            aggregate(record, windows, DecodeConfig())
    assert aggregate(record, [window(1, 2), window(0, 2)], DecodeConfig()).answer == "a"
    outside = WindowCandidates("k", 0, 1, np.array([0]), np.array([3]), np.array([1.0]), None)
    with pytest.raises(AggregateError, match="not inside"):
        aggregate(record, [outside], DecodeConfig())


def test_windows_without_spans() -> None:
    record = Record("k", 1, "q", "ab")
    empty = [
        WindowCandidates("k", k, 2, np.array([], np.int64), np.array([], np.int64), np.array([]), 1.0)
        for k in range(2)
    ]
    lone = WindowCandidates("k", 0, 1, np.array([], np.int64), np.array([], np.int64), np.array([]), 1.0)
    for windows in (empty, [lone]):  # the general merge and the lone-window shortcut
        with pytest.raises(AggregateError, match="no valid span"):
            aggregate(record, windows, DecodeConfig())
