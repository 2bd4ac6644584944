"""`docqa tune`: time the forward pass at a few batch shapes on this machine and keep the fastest.

The probe runs the job's model on synthetic windows (random token ids; a forward's cost depends on the
shape, not the ids) of two lengths, half a window and a whole one (`featurize.max_seq_len`), since
questions over short contexts give short windows and long contexts full ones. Each round times one
forward per candidate cap, in a fresh random order, and a candidate's figure is its median per-token
time over the rounds, summed over both lengths: interleaving and medians keep the drift and noise of a
shared machine out of the comparison. A smaller cap is chosen only when it beats the largest candidate
that is within `TIE_MARGIN` of the best (fewer, larger forwards pay less per-batch overhead elsewhere).

The choice is stored per model, device, dtype, threads and window length (`qa_core.runtime.shapes`); a
job on this machine whose config leaves `batch.max_batch_windows` / `max_batch_tokens` unset uses it.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qa_core.config import QAConfig
from qa_core.records import Feature
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.shapes import shape_key, store_tuned
from qa_core.stages.batch import collate, padded_length

CANDIDATE_WINDOWS = (4, 8, 16, 32, 64)
TIE_MARGIN = 0.03  # candidates within 3% of the fastest count as equally fast


@dataclass(frozen=True)
class TuneResult:
    """The measured candidates and the choice.

    Attributes:
        lengths: The window lengths timed (tokens).
        seconds_per_token: Per candidate cap, the median seconds per padded token, summed over lengths.
        rounds: Rounds timed.
        max_batch_windows: The chosen windows cap.
        max_batch_tokens: The chosen tokens cap (the windows cap times `max_seq_len`: the windows cap binds).
        key: What the choice is stored under (`qa_core.runtime.shapes.shape_key`).
        stored_in: The cache file, once stored.
    """

    lengths: tuple[int, ...]
    seconds_per_token: dict[int, float]
    rounds: int
    max_batch_windows: int
    max_batch_tokens: int
    key: dict[str, Any]
    stored_in: str | None = None

    def format_table(self) -> str:
        """The candidates' speeds relative to the chosen one, as a text table."""
        best = self.seconds_per_token[self.max_batch_windows]
        lines = [f"{'windows':>8}  {'tokens/s':>10}  {'x chosen':>8}", "-" * 32]
        for windows, seconds in sorted(self.seconds_per_token.items()):
            mark = "  <- chosen" if windows == self.max_batch_windows else ""
            lines.append(f"{windows:>8}  {len(self.lengths) / seconds:>10.0f}  {best / seconds:>8.2f}{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`--json`)."""
        return {
            "lengths": list(self.lengths),
            "tokens_per_second": {str(w): len(self.lengths) / s for w, s in self.seconds_per_token.items()},
            "rounds": self.rounds,
            "max_batch_windows": self.max_batch_windows,
            "max_batch_tokens": self.max_batch_tokens,
            "key": self.key,
            "stored_in": self.stored_in,
        }


def synthetic_windows(runner: ModelRunner, length: int, count: int, seed: int = 0) -> list[Feature]:
    """`count` windows of `length` tokens: [CLS]-like first id, random ids, a question and a context part."""
    rng = np.random.default_rng(seed)
    vocab = int(getattr(runner.tokenizer, "vocab_size", 1000))
    windows = []
    for k in range(count):
        ids = rng.integers(min(1000, vocab // 2), vocab, size=length).astype(np.int32)
        types = np.zeros(length, dtype=np.int8)
        types[length // 4 :] = 1
        offsets = np.where(types == 1, np.arange(length), -1).astype(np.int32)
        windows.append(Feature(str(k), 0, 1, ids, types, offsets, offsets + 1, 0))
    return windows


def choose(seconds_per_token: dict[int, float]) -> int:
    """The largest cap within `TIE_MARGIN` of the fastest."""
    fastest = min(seconds_per_token.values())
    return max(w for w, s in seconds_per_token.items() if s <= fastest * (1 + TIE_MARGIN))


def measure(
    runner: ModelRunner,
    config: QAConfig,
    *,
    seconds: float,
    candidates: Sequence[int] = CANDIDATE_WINDOWS,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[tuple[int, ...], dict[int, float], int]:
    """Times one forward per candidate and length per round, until `seconds` are spent (3 rounds at least).

    Returns:
        The lengths, per candidate the median seconds per padded token summed over the lengths, and the
        rounds timed.
    """
    multiple = config.batch.pad_to_multiple_of
    full = config.featurize.max_seq_len
    lengths = tuple(sorted({padded_length(max(8, full // 2), multiple), padded_length(full, multiple)}))
    batches = {
        (windows, length): collate(
            synthetic_windows(runner, length, windows, seed=length), runner.pad_token_id, multiple
        )
        for windows in candidates
        for length in lengths
    }
    for batch in batches.values():  # warm-up: first calls of a shape pay for kernel selection
        runner.forward(batch)
    timings: dict[tuple[int, int], list[float]] = {shape: [] for shape in batches}
    order = list(batches)
    shuffle = random.Random(0).shuffle
    started, rounds = clock(), 0
    while rounds < 3 or clock() - started < seconds:
        shuffle(order)
        for shape in order:
            begin = clock()
            runner.forward(batches[shape])
            timings[shape].append((clock() - begin) / batches[shape].padded_tokens)
        rounds += 1
    per_token = {
        windows: sum(statistics.median(timings[(windows, length)]) for length in lengths)
        for windows in candidates
    }
    return lengths, per_token, rounds


def tune(runner: ModelRunner, config: QAConfig, *, seconds: float = 20.0, store: bool = True) -> TuneResult:
    """Measures the candidates on `runner` and stores the choice for this machine (unless `store` is off).

    Raises:
        OutputError: When the cache file cannot be written.
    """
    lengths, per_token, rounds = measure(runner, config, seconds=seconds)
    windows = choose(per_token)
    tokens = windows * padded_length(config.featurize.max_seq_len, config.batch.pad_to_multiple_of)
    key = shape_key(config, runner.revision, runner.device)
    stored = None
    if store:
        entry = {
            "max_batch_windows": windows,
            "max_batch_tokens": tokens,
            "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tokens_per_second": {str(w): len(lengths) / s for w, s in per_token.items()},
        }
        stored = str(store_tuned(key, entry))
    return TuneResult(lengths, per_token, rounds, windows, tokens, key, stored)
