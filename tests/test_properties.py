"""Property tests (hypothesis) of decode + aggregate on hand-built windows and arbitrary logits.

Invariants: every span has end >= start and covers at most `max_answer_len` context tokens, every answer
is `context[start:end]`, scores are probabilities, and the answer of a row depends only on the row: not
on which other rows share its batches, how the batches are padded, or the order of windows and batches.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qa_core.config import BatchConfig, DecodeConfig
from qa_core.records import Answer, Feature, Record, SpanScore, WindowCandidates
from qa_core.stages.aggregate import aggregate
from qa_core.stages.batch import collate, padded_length, plan_batches
from qa_core.stages.decode import decode_batch

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
PAD_LOGIT = 1e5  # larger than any real logit: padding positions must never be chosen


@dataclass
class Row:
    """One record, its windows and each window's (start, end) logits."""

    record: Record
    features: list[Feature]
    logits: list[tuple[np.ndarray, np.ndarray]]
    token_spans: list[tuple[int, int]]  # character span of each context token


logit_values = st.one_of(
    st.integers(-3, 3).map(float),  # many ties
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
)


@st.composite
def rows(draw: st.DrawFn, key: str = "r") -> Row:
    n_tokens = draw(st.integers(1, 14))
    widths = draw(st.lists(st.integers(1, 3), min_size=n_tokens, max_size=n_tokens))
    gaps = draw(st.lists(st.integers(0, 2), min_size=n_tokens, max_size=n_tokens))
    spans, position = [], draw(st.integers(0, 2))
    for width, gap in zip(widths, gaps, strict=True):
        spans.append((position, position + width))
        position += width + gap
    alphabet = st.sampled_from(list("abcxyz é東👍\u200b"))
    context = "".join(draw(st.lists(alphabet, min_size=position + 1, max_size=position + 1)))
    window = draw(st.integers(1, n_tokens))
    overlap = draw(st.integers(0, window - 1))
    slices, first = [], 0
    while True:
        slices.append((first, min(first + window, n_tokens)))
        if first + window >= n_tokens:
            break
        first += window - overlap
    features, logits = [], []
    for index, (a, b) in enumerate(slices):
        n_question = draw(st.integers(1, 3))
        trailing = draw(st.integers(0, 2))
        length = n_question + (b - a) + trailing
        starts = np.full(length, -1, np.int32)
        ends = np.full(length, -1, np.int32)
        starts[n_question : n_question + b - a] = [s for s, _ in spans[a:b]]
        ends[n_question : n_question + b - a] = [e for _, e in spans[a:b]]
        outside = [int(k) for k in np.flatnonzero(starts < 0)]
        cls = draw(st.sampled_from(outside))
        ids = np.arange(length, dtype=np.int32) + 5
        features.append(Feature(key, index, len(slices), ids, np.zeros(length, np.int8), starts, ends, cls))
        values = st.lists(logit_values, min_size=length, max_size=length)
        logits.append((np.array(draw(values), np.float32), np.array(draw(values), np.float32)))
    return Row(Record(key, key, "q", context), features, logits, spans)


@st.composite
def decode_configs(draw: st.DrawFn) -> DecodeConfig:
    n_best = draw(st.integers(1, 8))
    return DecodeConfig(
        max_answer_len=draw(st.integers(1, 6)),
        n_best=n_best,
        top_k=draw(st.integers(1, min(3, n_best))),
        handle_no_answer=draw(st.booleans()),
        null_threshold=draw(st.sampled_from([0.0, 1.0, -1.0])),
    )


def decode(windows: list[tuple[Row, int]], config: DecodeConfig, pad_to: int) -> list[WindowCandidates]:
    """Decodes (row, window index) pairs as one padded batch, padding logits set to PAD_LOGIT."""
    batch = collate([row.features[k] for row, k in windows], 0, pad_to)
    width = batch.input_ids.shape[1]
    start = torch.full((len(windows), width), PAD_LOGIT)
    end = torch.full((len(windows), width), PAD_LOGIT)
    for position, (row, k) in enumerate(windows):
        n = row.features[k].length
        start[position, :n] = torch.from_numpy(row.logits[k][0])
        end[position, :n] = torch.from_numpy(row.logits[k][1])
    return decode_batch(batch, start, end, config.max_answer_len, config.n_best)


def answer_alone(row: Row, config: DecodeConfig) -> tuple[Answer, list[WindowCandidates]]:
    """The row's answer with each window decoded in a batch of its own, in window order."""
    candidates = [c for k in range(len(row.features)) for c in decode([(row, k)], config, 1)]
    return aggregate(row.record, candidates, config), candidates


def tokens_inside(row: Row, start: int, end: int) -> int:
    return sum(1 for s, e in row.token_spans if s >= start and e <= end)


def check_span(row: Row, span: Answer | SpanScore, config: DecodeConfig) -> None:
    if span.start is None or span.end is None:
        assert span.answer == ""
        return
    assert 0 <= span.start < span.end <= len(row.record.context)
    assert span.answer == row.record.context[span.start : span.end]
    assert span.start in {s for s, _ in row.token_spans} and span.end in {e for _, e in row.token_spans}
    assert 1 <= tokens_inside(row, span.start, span.end) <= config.max_answer_len


@PROPERTY_SETTINGS
@given(row=rows(), config=decode_configs())
def test_spans_are_valid_substrings_within_the_length_limit(row: Row, config: DecodeConfig) -> None:
    answer, candidates = answer_alone(row, config)
    for window in candidates:
        assert len(window.starts) <= config.n_best
        assert np.all(window.ends >= window.starts) and np.all(window.starts >= 0)
        assert np.all(np.diff(window.logits) <= 0), "candidates come best first"
        for s, e in zip(window.starts, window.ends, strict=True):
            assert 1 <= tokens_inside(row, int(s), int(e)) <= config.max_answer_len
    check_span(row, answer, config)
    assert 0.0 <= answer.score <= 1.0
    assert answer.no_answer == (answer.start is None)
    if config.top_k == 1:
        assert answer.top_k == ()
    assert len(answer.top_k) <= config.top_k
    for entry in answer.top_k:
        check_span(row, entry, config)
        assert 0.0 <= entry.score <= 1.0
    if answer.top_k:
        assert (answer.top_k[0].start, answer.top_k[0].end) == (answer.start, answer.end)
        assert sum(e.score for e in answer.top_k) <= 1.0 + 1e-9


@PROPERTY_SETTINGS
@given(
    row=rows("target"),
    others=st.lists(rows("other"), max_size=3),
    config=decode_configs(),
    pad_to=st.sampled_from([1, 8, 32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_answer_independent_of_batch_composition_and_order(
    row: Row, others: list[Row], config: DecodeConfig, pad_to: int, seed: int
) -> None:
    alone, _ = answer_alone(row, config)
    rng = np.random.default_rng(seed)
    # The row's windows mixed with other rows' windows, shuffled, cut into random batches.
    others = [
        Row(
            Record(f"other{n}", n, "q", o.record.context),
            [
                Feature(
                    f"other{n}",
                    f.window_index,
                    f.n_windows,
                    f.input_ids,
                    f.token_type_ids,
                    f.char_starts,
                    f.char_ends,
                    f.cls_index,
                )
                for f in o.features
            ],
            o.logits,
            o.token_spans,
        )
        for n, o in enumerate(others)
    ]
    windows = [(r, k) for r in [row, *others] for k in range(len(r.features))]
    order = rng.permutation(len(windows))
    cuts = sorted(rng.choice(np.arange(1, len(windows)), size=min(2, len(windows) - 1), replace=False))
    batches = np.split(order, cuts) if len(windows) > 1 else [order]
    candidates: dict[str, list[WindowCandidates]] = {}
    for batch in rng.permutation(len(batches)):
        for window in decode([windows[i] for i in batches[batch]], config, pad_to):
            candidates.setdefault(window.row_key, []).append(window)
    mixed = aggregate(row.record, candidates["target"], config)
    assert mixed == alone
    reversed_order = aggregate(row.record, list(reversed(candidates["target"])), config)
    assert reversed_order == alone


def _window(key: str, length: int) -> Feature:
    ids = np.ones(length, dtype=np.int64)
    offsets = np.full(length, -1, dtype=np.int64)
    return Feature(key, 0, 1, ids, np.zeros(length, dtype=np.int64), offsets, offsets, 0)


@given(
    lengths=st.lists(st.integers(1, 64), max_size=60),
    windows_cap=st.integers(1, 8),
    tokens_cap=st.integers(1, 256),
    multiple=st.sampled_from([1, 8]),
)
def test_batches_hold_every_window_once_under_the_caps_shortest_first(
    lengths: list[int], windows_cap: int, tokens_cap: int, multiple: int
) -> None:
    config = BatchConfig(
        max_batch_windows=windows_cap, max_batch_tokens=tokens_cap, pad_to_multiple_of=multiple
    )
    windows = [_window(f"r{i:03d}", n) for i, n in enumerate(lengths)]
    batches = plan_batches(windows, config)

    def padded(batch: list[Feature]) -> int:
        return len(batch) * padded_length(max(f.length for f in batch), multiple)

    for batch in batches:
        assert len(batch) == 1 or (len(batch) <= windows_cap and padded(batch) <= tokens_cap)
    # Brute force: read in order, the batches are the windows sorted by length (ties by row key), and
    # each batch closed only because its successor's first window did not fit in it.
    by_length = sorted(windows, key=lambda f: (f.length, f.row_key, f.window_index))
    assert [f.row_key for batch in batches for f in batch] == [f.row_key for f in by_length]
    for batch, following in itertools.pairwise(batches):
        grown = [*batch, following[0]]
        assert len(grown) > windows_cap or padded(grown) > tokens_cap
