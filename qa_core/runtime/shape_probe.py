"""Measuring batch shapes on this machine: the timing under `docqa tune` and a large job's own probe.

The fastest windows-per-forward cap depends on the CPU, the model and the dtype, so it is measured
where the job runs, never assumed. `measure` times the job's model on synthetic windows (random token
ids: a forward's cost depends on the shape, not the ids) of two lengths, half a window and a whole one
(`featurize.max_seq_len`), since questions over short contexts give short windows and long contexts
full ones. Each round times one forward per candidate cap, in a fresh random order, and a candidate's
figure is its median per-token time over the rounds, summed over both lengths: interleaving and
medians keep the drift and noise of a shared machine out of the comparison. `choose` takes a smaller
cap only when it beats the largest candidate within `TIE_MARGIN` of the best (fewer, larger forwards
pay less per-batch overhead elsewhere). `tune` keeps the choice under this machine's key
(`qa_core.runtime.shapes`), where every later job that leaves the batch caps unset finds it.

A large job (`batch.probe_min_rows`) on a machine without such an entry probes by itself before it
plans its batches (`probe_for_job`): whole windows only, at most 32 per forward, for `PROBE_SECONDS`
(3 rounds at least), so that it costs a few percent of such a job and is paid once per machine
(figures: benchmarks/RESULTS.md).

This is the runtime layer: jobs call it, and so does the `docqa tune` command (`docqa/user_commands.py`);
it imports nothing of jobs, io, tools or train.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from qa_core.config import QAConfig
from qa_core.errors import OutputError
from qa_core.records import Feature
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.shapes import read_tuned, shape_key, store_tuned
from qa_core.stages.batch import collate, padded_length

logger = logging.getLogger(__name__)

CANDIDATE_WINDOWS = (4, 8, 16, 32, 64)
TIE_MARGIN = 0.03  # candidates within 3% of the fastest count as equally fast
# A job's probe: 64 never won on a CPU and costs most; whole windows are where long contexts spend.
PROBE_CANDIDATES = (4, 8, 16, 32)
PROBE_SECONDS = 8.0

Runner = TypeVar("Runner", bound=ModelRunner)


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
    vocab = runner.tokenizer.vocab_size
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
    whole_windows_only: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[tuple[int, ...], dict[int, float], int]:
    """Times one forward per candidate and length per round, until `seconds` are spent (3 rounds at least).

    Args:
        runner: The model.
        config: The job's config (window length, padding multiple).
        seconds: Time to spend on the timed rounds.
        candidates: Windows caps to compare.
        whole_windows_only: Time windows of `max_seq_len` only (not also half as long).
        clock: The timer (tests pass a fake one).

    Returns:
        The lengths, per candidate the median seconds per padded token summed over the lengths, and the
        rounds timed.
    """
    multiple = config.batch.pad_to_multiple_of
    full = config.featurize.max_seq_len
    half = full if whole_windows_only else max(8, full // 2)
    lengths = tuple(sorted({padded_length(half, multiple), padded_length(full, multiple)}))
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


def tune(
    runner: ModelRunner,
    config: QAConfig,
    *,
    seconds: float = 20.0,
    store: bool = True,
    probe: bool = False,
) -> TuneResult:
    """Measures the candidates on `runner` and stores the choice for this machine (unless `store` is off).

    Args:
        runner: The model.
        config: The job's config.
        seconds: Time to spend measuring.
        store: Keep the choice in the cache file (`qa_core.runtime.shapes.store_tuned`).
        probe: A job's shortened probe (`PROBE_CANDIDATES`, whole windows) rather than `docqa tune`'s;
            the entry says so (`_run.json` `batch_shape.source: probed`).

    Raises:
        OutputError: When the cache file cannot be written.
    """
    candidates = PROBE_CANDIDATES if probe else CANDIDATE_WINDOWS
    lengths, per_token, rounds = measure(
        runner, config, seconds=seconds, candidates=candidates, whole_windows_only=probe
    )
    windows = choose(per_token)
    tokens = windows * padded_length(config.featurize.max_seq_len, config.batch.pad_to_multiple_of)
    key = shape_key(config, runner.revision, runner.device)
    stored = None
    if store:
        entry = {
            "max_batch_windows": windows,
            "max_batch_tokens": tokens,
            "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "origin": "probe" if probe else "docqa tune",
            "tokens_per_second": {str(w): len(lengths) / s for w, s in per_token.items()},
        }
        stored = str(store_tuned(key, entry))
    return TuneResult(lengths, per_token, rounds, windows, tokens, key, stored)


def probe_wanted(config: QAConfig, revision: str, device: Any, rows: int) -> bool:
    """Whether a job of `rows` rows should probe first: large enough, caps unset, nothing stored here."""
    batch = config.batch
    if not batch.probe_min_rows or rows < batch.probe_min_rows:
        return False
    if batch.max_batch_windows is not None and batch.max_batch_tokens is not None:
        return False  # the user's caps win; nothing to choose
    return read_tuned(shape_key(config, revision, device)) is None


def probe_for_job(
    config: QAConfig, rows: int, revision: str, device: Any, load: Callable[[], Runner]
) -> Runner | None:
    """Probes and stores this machine's batch shape when a job of `rows` rows wants it (`probe_wanted`).

    Call it before the job plans its batches (`qa_core.runtime.shapes.choose_batch_shape` then reads the
    entry). When the cache file cannot be written the job goes on with the defaults, and a warning says
    why (the probe then runs again in the next job).

    Args:
        config: The job's config.
        rows: The rows the job will answer.
        revision: The model's revision (`qa_core.runtime.loaders.describe_model`).
        device: The device the job's model runs on.
        load: Loads the job's model (called only when probing).

    Returns:
        The model it loaded to probe (the caller may answer with it), or None when it did not probe.
    """
    if not probe_wanted(config, revision, device, rows):
        return None
    runner = load()
    logger.info(
        "probing batch shapes once for this machine and model (%d rows >= batch.probe_min_rows %d; "
        "3 rounds and %.0f s at least; docqa tune does it ahead of a job)",
        rows,
        config.batch.probe_min_rows,
        PROBE_SECONDS,
    )
    started = time.perf_counter()
    try:
        result = tune(runner, config, seconds=PROBE_SECONDS, probe=True)
    except OutputError as err:
        logger.warning("the probe's choice was not kept (%s); the job runs with the defaults", err)
        return runner
    logger.info(
        "probe chose %d windows / %d tokens in %.1f s (%s)",
        result.max_batch_windows,
        result.max_batch_tokens,
        time.perf_counter() - started,
        result.stored_in,
    )
    return runner
