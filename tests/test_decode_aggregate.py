"""Decode + aggregate against a brute-force O(n^2) reference on thousands of random logit sets."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from qa_core.config import DecodeConfig
from qa_core.records import Feature, Record
from qa_core.stages.aggregate import AggregateError, aggregate
from qa_core.stages.batch import collate
from qa_core.stages.decode import DecodeError, _ranked, _top_candidates, decode_batch


@dataclass
class Case:
    record: Record
    features: list[Feature]
    start: list[np.ndarray]  # per window, float32 (T,)
    end: list[np.ndarray]


def make_case(rng: np.random.Generator, key: str, tie_heavy: bool, huge: bool) -> Case:
    """A row with 1-4 overlapping windows over shared context tokens, CLS anywhere."""
    n_ctx = int(rng.integers(1, 30))
    widths = rng.integers(1, 4, size=n_ctx)
    gaps = rng.integers(0, 2, size=n_ctx)
    starts = np.cumsum(np.concatenate([[0], (widths + gaps)[:-1]])).astype(np.int32)
    ends = (starts + widths).astype(np.int32)
    context = "".join(chr(0x61 + int(rng.integers(0, 26))) for _ in range(int(ends[-1]) + 1))
    win = int(rng.integers(1, n_ctx + 1))
    stride = int(rng.integers(1, win + 1)) if win > 1 else 1
    slices = []
    pos = 0
    while True:
        slices.append((pos, min(pos + win, n_ctx)))
        if pos + win >= n_ctx:
            break
        pos += max(1, win - stride + 1) if win > 1 else 1
    features, start_logits, end_logits = [], [], []
    for w, (a, b) in enumerate(slices):
        n_q = int(rng.integers(1, 5))
        length = n_q + (b - a) + int(rng.integers(0, 3))
        cs = np.full(length, -1, dtype=np.int32)
        ce = np.full(length, -1, dtype=np.int32)
        cs[n_q : n_q + b - a] = starts[a:b]
        ce[n_q : n_q + b - a] = ends[a:b]
        non_ctx = np.flatnonzero(cs < 0)
        cls = int(rng.choice(non_ctx))
        features.append(
            Feature(
                key,
                w,
                len(slices),
                np.arange(length, dtype=np.int32) + 5,
                np.zeros(length, np.int8),
                cs,
                ce,
                cls,
            )
        )
        if tie_heavy:
            s = rng.integers(-2, 3, size=length).astype(np.float32)
            e = rng.integers(-2, 3, size=length).astype(np.float32)
        else:
            scale = 1e4 if huge else 3.0
            s = (rng.standard_normal(length) * scale).astype(np.float32)
            e = (rng.standard_normal(length) * scale).astype(np.float32)
        start_logits.append(s)
        end_logits.append(e)
    return Case(Record(key, key, "q", context), features, start_logits, end_logits)


def brute_force(case: Case, cfg: DecodeConfig) -> tuple[list[tuple[int, int, float]], float | None]:
    """Every valid (i, j) of every window, n_best per window, merged by character span."""
    merged: dict[tuple[int, int], float] = {}
    nulls = []
    for f, s, e in zip(case.features, case.start, case.end, strict=True):
        cands = []
        for i in range(f.length):
            for j in range(i, min(f.length, i + cfg.max_answer_len)):
                if f.char_starts[i] >= 0 and f.char_starts[j] >= 0:
                    cands.append((-float(np.float32(s[i]) + np.float32(e[j])), i, j))
        cands.sort()
        for neg, i, j in cands[: cfg.n_best]:
            span = (int(f.char_starts[i]), int(f.char_ends[j]))
            merged[span] = max(merged.get(span, -math.inf), -neg)
        nulls.append(float(np.float32(s[f.cls_index]) + np.float32(e[f.cls_index])))
    ranked = sorted(((lg, a, b) for (a, b), lg in merged.items()), key=lambda t: (-t[0], t[1], t[2]))
    return [(a, b, lg) for lg, a, b in ranked], (min(nulls) if cfg.handle_no_answer else None)


def run_engine(case: Case, cfg: DecodeConfig, order: list[int]) -> object:
    feats = [case.features[k] for k in order]
    batch = collate(feats, 0, 8)
    width = batch.input_ids.shape[1]
    start = torch.full((len(feats), width), 7.0)  # padding garbage that must never be chosen
    end = torch.full((len(feats), width), 7.0)
    for row, k in enumerate(order):
        start[row, : case.features[k].length] = torch.from_numpy(case.start[k])
        end[row, : case.features[k].length] = torch.from_numpy(case.end[k])
    cands = decode_batch(batch, start, end, cfg.max_answer_len, cfg.n_best)
    return aggregate(case.record, cands, cfg)


@pytest.mark.parametrize("mode", ["ties", "normal", "huge"])
def test_matches_brute_force(mode: str) -> None:
    rng = np.random.default_rng({"ties": 1, "normal": 2, "huge": 3}[mode])
    for trial in range(1200):
        cfg = DecodeConfig(
            max_answer_len=int(rng.integers(1, 6)),
            top_k=int(rng.integers(1, 4)),
            n_best=int(rng.integers(3, 8)),
            handle_no_answer=bool(rng.integers(0, 2)),
            null_threshold=float(rng.choice([0.0, 1.0, -1.0])),
        )
        case = make_case(rng, f"r{trial}", tie_heavy=mode == "ties", huge=mode == "huge")
        order = list(rng.permutation(len(case.features)))
        answer = run_engine(case, cfg, order)
        spans, null = brute_force(case, cfg)
        logits = np.array([lg for _, _, lg in spans] + ([null] if null is not None else []))
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        best_a, best_b, best_lg = spans[0]
        no_answer = null is not None and null - best_lg > cfg.null_threshold
        if no_answer:
            assert (answer.answer, answer.start, answer.end) == ("", None, None)
            assert answer.logit_score == pytest.approx(null)
            assert answer.score == pytest.approx(probs[-1], rel=1e-9, abs=1e-12)
        else:
            assert (answer.start, answer.end) == (best_a, best_b), (trial, cfg)
            assert answer.answer == case.record.context[best_a:best_b]
            assert answer.logit_score == best_lg
            assert answer.score == pytest.approx(probs[0], rel=1e-9, abs=1e-12)
        assert answer.no_answer == no_answer
        assert 0.0 <= answer.score <= 1.0
        if null is not None:
            assert answer.null_score_diff == pytest.approx(null - best_lg)
        else:
            assert answer.null_score_diff is None
        if cfg.top_k > 1:
            span_entries = [t for t in answer.top_k if t.start is not None]
            expected = [(a, b) for a, b, _ in spans][: len(span_entries)]
            assert [(t.start, t.end) for t in span_entries] == expected
            assert len(answer.top_k) == min(cfg.top_k, len(spans) + (null is not None))


def test_order_and_batch_independence() -> None:
    rng = np.random.default_rng(7)
    cfg = DecodeConfig(top_k=3, handle_no_answer=True)
    for trial in range(200):
        case = make_case(rng, f"r{trial}", tie_heavy=True, huge=False)
        first = run_engine(case, cfg, list(range(len(case.features))))
        again = run_engine(case, cfg, list(reversed(range(len(case.features)))))
        assert first == again


def test_cls_not_at_index_zero_gives_null_score() -> None:
    f = Feature(
        "k",
        0,
        1,
        np.arange(4, dtype=np.int32),
        np.zeros(4, np.int8),
        np.array([0, 2, -1, -1], np.int32),
        np.array([1, 3, -1, -1], np.int32),
        cls_index=3,
    )
    batch = collate([f], 0, 8)
    start = torch.zeros(1, 8)
    end = torch.zeros(1, 8)
    start[0, 3], end[0, 3] = 5.0, 6.0
    (cands,) = decode_batch(batch, start, end, 30, 20)
    assert cands.null_logit == 11.0
    answer = aggregate(Record("k", 1, "q", "a b"), [cands], DecodeConfig(handle_no_answer=True))
    assert answer.no_answer and answer.answer == "" and answer.logit_score == 11.0


def test_softmax_stable_near_1e4() -> None:
    f = Feature(
        "k",
        0,
        1,
        np.arange(3, dtype=np.int32),
        np.zeros(3, np.int8),
        np.array([-1, 0, 2], np.int32),
        np.array([-1, 1, 3], np.int32),
        cls_index=0,
    )
    start = torch.tensor([[0.0, 1e4, -1e4, 0, 0, 0, 0, 0]])
    end = torch.tensor([[0.0, 1e4, 1e4, 0, 0, 0, 0, 0]])
    (cands,) = decode_batch(collate([f], 0, 8), start, end, 30, 20)
    answer = aggregate(Record("k", 1, "q", "a b"), [cands], DecodeConfig())
    assert answer.answer == "a" and math.isfinite(answer.score) and answer.score == pytest.approx(0.5)


def test_max_answer_len_edge() -> None:
    length = 6
    f = Feature(
        "k",
        0,
        1,
        np.arange(length, dtype=np.int32),
        np.zeros(length, np.int8),
        np.arange(length, dtype=np.int32) * 2,
        np.arange(length, dtype=np.int32) * 2 + 1,
        cls_index=-1,
    )
    start = torch.zeros(1, 8)
    end = torch.zeros(1, 8)
    start[0, 0], end[0, 5] = 10.0, 10.0  # the best pair spans 6 tokens
    for limit, expected_end in ((6, 11), (5, 1)):
        (cands,) = decode_batch(collate([f], 0, 8), start, end, limit, 20)
        answer = aggregate(Record("k", 1, "q", "a b c d e f"), [cands], DecodeConfig(max_answer_len=limit))
        assert (answer.start, answer.end) == (0, expected_end)


def _one_context_token() -> Feature:
    """A window of two tokens: one context token (characters 0-1), then the CLS."""
    return Feature(
        "k",
        0,
        1,
        np.arange(2, dtype=np.int32),
        np.zeros(2, np.int8),
        np.array([0, -1], np.int32),
        np.array([1, -1], np.int32),
        cls_index=1,
    )


def test_nan_logits_raise() -> None:
    f = _one_context_token()
    start = torch.full((1, 8), float("nan"))
    with pytest.raises(DecodeError, match="NaN"):
        decode_batch(collate([f], 0, 8), start, torch.zeros(1, 8), 30, 20)


@pytest.mark.parametrize(("position", "raises"), [(0, True), (1, True), (5, False)])
def test_infinite_logits_raise_where_they_are_used(position: int, raises: bool) -> None:
    """An overflowed (fp16) logit on a context token or the CLS would win with inf; padding is unused."""
    f = _one_context_token()
    end = torch.zeros(1, 8)
    end[0, position] = float("inf")
    if raises:
        with pytest.raises(DecodeError, match="infinite"):
            decode_batch(collate([f], 0, 8), torch.zeros(1, 8), end, 30, 20)
    else:
        (window,) = decode_batch(collate([f], 0, 8), torch.zeros(1, 8), end, 30, 20)
        assert (window.starts.tolist(), window.ends.tolist(), window.logits.tolist()) == ([0], [1], [0.0])


def test_missing_window_is_an_error() -> None:
    rng = np.random.default_rng(3)
    while True:
        case = make_case(rng, "k", tie_heavy=False, huge=False)
        if len(case.features) > 1:
            break
    batch = collate(case.features[:1], 0, 8)
    width = batch.input_ids.shape[1]
    start = torch.zeros(1, width)
    start[0, : case.features[0].length] = torch.from_numpy(case.start[0])
    cands = decode_batch(batch, start, torch.zeros(1, width), 30, 20)
    with pytest.raises(AggregateError):
        aggregate(case.record, cands, DecodeConfig())


@pytest.mark.parametrize("levels", [3, 50, 0])
def test_top_candidates_rank_like_a_stable_sort(levels: int) -> None:
    """topk + the tie fix-up keep exactly the stable sort's first K, ties at the cut-off included."""
    gen = torch.Generator().manual_seed(levels)
    for trial in range(300):
        rows, width = (
            int(torch.randint(1, 9, (1,), generator=gen)),
            int(torch.randint(1, 40, (1,), generator=gen)),
        )
        if levels:  # few distinct values: ties everywhere, also across the cut-off
            scores = torch.randint(0, levels, (rows, width), generator=gen).float()
        else:
            scores = torch.randn(rows, width, generator=gen)
        scores[torch.rand(rows, width, generator=gen) < 0.3] = float("-inf")  # masked candidates
        keep = int(torch.randint(1, width + 1, (1,), generator=gen))
        want_scores, want_flat = torch.sort(scores, dim=1, descending=True, stable=True)
        got_scores, got_flat = _top_candidates(scores, keep)
        finite = torch.isfinite(want_scores[:, :keep])  # masked candidates are dropped by the caller
        assert torch.equal(got_scores, want_scores[:, :keep]), trial
        assert torch.equal(got_flat[finite], want_flat[:, :keep][finite]), trial


def test_tokens_sharing_offsets_with_tied_logits_rank_by_characters() -> None:
    """One window where two tokens share a character (a character split into two tokens): spans tied on
    logit must still rank by (start, end) characters, not by token position."""
    cs = np.array([-1, 0, 0, 1, -1], np.int32)  # CLS, two tokens of character 0, one of character 1, SEP
    ce = np.array([-1, 1, 1, 2, -1], np.int32)
    feature = Feature("k", 0, 1, np.arange(5, dtype=np.int32) + 5, np.zeros(5, np.int8), cs, ce, 0)
    start = np.array([0, 2, 1, -9, 0], np.float32)  # span (1, 3) = chars (0, 2) and (2, 2) = chars (0, 1)
    end = np.array([0, -9, 2, 1, 0], np.float32)  # both score 3.0
    case = Case(Record("k", "k", "q", "ab"), [feature], [start], [end])
    cfg = DecodeConfig(top_k=3, n_best=5)
    answer = run_engine(case, cfg, [0])
    spans, _ = brute_force(case, cfg)
    assert [(t.start, t.end) for t in answer.top_k] == [(a, b) for a, b, _ in spans][:3]
    assert (answer.start, answer.end) == (0, 1)


def test_ranked_says_when_a_window_needs_no_merging() -> None:
    """`_ranked` against Python: valid logits strictly decreasing and every (start, end) once."""
    rng = np.random.default_rng(11)
    seen = {True: 0, False: 0}
    for _ in range(500):
        rows, keep = int(rng.integers(1, 6)), int(rng.integers(1, 7))
        logits = -np.sort(-rng.integers(0, 6, (rows, keep)).astype(np.float64), axis=1)  # ties likely
        counts = rng.integers(0, keep + 1, rows)  # valid prefix lengths
        valid = np.arange(keep) < counts[:, None]
        logits[~valid] = -np.inf
        starts = rng.integers(0, 4, (rows, keep)).astype(np.int64)  # repeats likely
        ends = starts + rng.integers(0, 3, (rows, keep))
        got = _ranked(logits, starts, ends, valid)
        for row in range(rows):
            n = int(counts[row])
            values = logits[row, :n].tolist()
            spans = list(zip(starts[row, :n].tolist(), ends[row, :n].tolist(), strict=True))
            expected = all(a > b for a, b in itertools.pairwise(values)) and len(set(spans)) == n
            assert got[row] is expected
            seen[expected] += 1
    assert min(seen.values()) > 100  # both answers were tested
