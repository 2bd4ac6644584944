"""Calibration metrics and the temperature fit, numpy only, no torch (shared by `report` and `calibrate`).

A row's `score` is meant to estimate P(answer is right). Two figures say how well it does:

- expected calibration error (ECE): scores are put in `n_bins` equal-width bins over [0, 1] (a score of
  exactly 1.0 goes to the last bin) and `ECE = sum_b (n_b / N) * |accuracy_b - mean_score_b|`;
- binary log-loss of the score against the 0/1 correctness label.

The temperature fit rescales every candidate logit of a row by `1 / T` before the softmax (the same
`T` as `decode.temperature`), and picks the `T` minimising the log-loss of the returned answer's score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from qa_core.evaluation.evaluate import exact_match, normalize_answer
from qa_core.evaluation.squad import SquadExample

FloatArray = npt.NDArray[np.float64]
LOG_T_RANGE = (-3.0, 3.0)
"""The fit searches `log T` in this interval (T from about 0.05 to 20)."""


def is_correct(prediction: str, example: SquadExample, squad_v2: bool) -> bool:
    """Whether a prediction exactly matches a gold answer (official normalisation; v2.0: no gold is "")."""
    golds = [a.text for a in example.answers]
    if squad_v2:
        golds = [g for g in golds if normalize_answer(g)] or [""]
    return any(exact_match(prediction, g) for g in golds)


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram.

    Attributes:
        lower: Lower edge of the bin (inclusive).
        upper: Upper edge (exclusive, except 1.0 for the last bin).
        count: Rows whose score falls in the bin.
        mean_score: Mean score of those rows (NaN when empty).
        accuracy: Fraction of them that are correct (NaN when empty).
    """

    lower: float
    upper: float
    count: int
    mean_score: float
    accuracy: float


def _bin_index(scores: FloatArray, n_bins: int) -> npt.NDArray[np.int64]:
    return np.clip((scores * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability_bins(
    scores: Sequence[float] | FloatArray, correct: Sequence[bool], n_bins: int = 10
) -> list[ReliabilityBin]:
    """Equal-width bins of score against the fraction of correct rows.

    Args:
        scores: Scores in [0, 1].
        correct: Whether each row's answer is right.
        n_bins: Number of bins over [0, 1].
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    index = _bin_index(s, n_bins)
    out = []
    for b in range(n_bins):
        mask = index == b
        n = int(mask.sum())
        out.append(
            ReliabilityBin(
                lower=b / n_bins,
                upper=(b + 1) / n_bins,
                count=n,
                mean_score=float(s[mask].mean()) if n else math.nan,
                accuracy=float(y[mask].mean()) if n else math.nan,
            )
        )
    return out


def expected_calibration_error(
    scores: Sequence[float] | FloatArray, correct: Sequence[bool], n_bins: int = 10
) -> float:
    """ECE over `n_bins` equal-width bins (0.0 for no rows)."""
    total = len(scores)
    if total == 0:
        return 0.0
    return float(
        sum(
            b.count / total * abs(b.accuracy - b.mean_score)
            for b in reliability_bins(scores, correct, n_bins)
            if b.count
        )
    )


def binary_log_loss(
    scores: Sequence[float] | FloatArray, correct: Sequence[bool], eps: float = 1e-12
) -> float:
    """Mean negative log-likelihood of the 0/1 labels under the scores (clipped to [eps, 1 - eps])."""
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(correct, dtype=np.float64)
    if p.size == 0:
        return 0.0
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


@dataclass(frozen=True)
class CandidateLogits:
    """The candidate logits of many rows, padded into one matrix for vectorized scoring.

    Attributes:
        logits: (N, K) float64, each row's candidate logits, `-inf` past its last candidate.
        chosen: (N,) index of the returned answer in each row.
        correct: (N,) bool, whether the returned answer is right.
    """

    logits: FloatArray
    chosen: npt.NDArray[np.int64]
    correct: npt.NDArray[np.bool_]

    @classmethod
    def from_rows(
        cls, rows: Sequence[Sequence[float]], chosen: Sequence[int], correct: Sequence[bool]
    ) -> CandidateLogits:
        """Pads per-row logit lists (each non-empty) into a matrix."""
        width = max((len(r) for r in rows), default=1)
        matrix = np.full((len(rows), width), -np.inf, dtype=np.float64)
        for i, row in enumerate(rows):
            matrix[i, : len(row)] = row
        return cls(matrix, np.asarray(chosen, dtype=np.int64), np.asarray(correct, dtype=np.bool_))

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    def scores(self, temperature: float) -> FloatArray:
        """The returned answers' softmax probabilities at `temperature` (what `aggregate` computes)."""
        if len(self) == 0:
            return np.zeros(0, dtype=np.float64)
        scaled = self.logits / temperature
        top = scaled.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
        picked = scaled[np.arange(len(self)), self.chosen]
        return np.asarray(np.exp(picked - log_norm), dtype=np.float64)

    def log_loss(self, temperature: float) -> float:
        """Binary log-loss of the returned answers' scores at `temperature`."""
        return binary_log_loss(self.scores(temperature), self.correct.tolist())

    def ece(self, temperature: float, n_bins: int = 10) -> float:
        """ECE of the returned answers' scores at `temperature`."""
        return expected_calibration_error(self.scores(temperature), self.correct.tolist(), n_bins)


def fit_temperature(data: CandidateLogits, log_t_range: tuple[float, float] = LOG_T_RANGE) -> float:
    """The temperature minimising the log-loss of the returned answers' scores.

    A 1-D search over `log T`: a coarse grid of 61 points first (the loss need not be unimodal over the
    whole range), then golden-section search in the bracket around the best grid point.

    Args:
        data: Candidate logits, returned-answer indices and correctness labels.
        log_t_range: Search interval of `log T`; the result is clipped to it.

    Returns:
        The fitted temperature (> 0); 1.0 for no rows.
    """
    if len(data) == 0:
        return 1.0
    lo, hi = log_t_range
    grid = np.linspace(lo, hi, 61)
    losses = [data.log_loss(math.exp(g)) for g in grid]
    best = int(np.argmin(losses))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = data.log_loss(math.exp(c)), data.log_loss(math.exp(d))
    for _ in range(60):
        if b - a < 1e-6:
            break
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = data.log_loss(math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = data.log_loss(math.exp(d))
    middle = float((a + b) / 2.0)
    candidates = [(losses[best], float(grid[best])), (data.log_loss(math.exp(middle)), middle)]
    return math.exp(min(candidates)[1])
