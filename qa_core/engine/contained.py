"""Device half of the engine: one padded batch through the model and the span decoder, failures contained.

A batch that fails (out of memory, a window the model cannot run) is split in halves down to single
windows, so only windows that fail alone cost their rows (`MODEL_ERROR`). An error after which no batch
can run (`DeviceFailedError`, a CUDA error other than out-of-memory) fails the job instead: rejecting
every later row would mark a broken run COMPLETED.
"""

from __future__ import annotations

import logging
import time

import torch

from qa_core.config import QAConfig
from qa_core.engine.stats import EngineStats
from qa_core.errors import DeviceFailedError
from qa_core.records import Feature, WindowCandidates
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.batch import Batch, collate
from qa_core.stages.decode import decode_batch

logger = logging.getLogger(__name__)

WindowFailures = list[tuple[Feature, str]]


def run_batch_contained(
    runner: ModelRunner, batch: Batch, config: QAConfig, stats: EngineStats | None = None
) -> tuple[list[WindowCandidates], WindowFailures]:
    """Forward + decode of a batch; a failing batch is split in halves down to single windows.

    Args:
        runner: The model runner.
        batch: The padded batch.
        config: `decode` (span search) and `batch.pad_to_multiple_of` (re-collating the halves).
        stats: Counts batches, tokens, splits and model time when given.

    Returns:
        Candidates of every window that succeeded, and (window, error) for windows that still failed
        alone (their rows become `MODEL_ERROR` rejections).

    Raises:
        DeviceFailedError: The device cannot run any batch any more.
    """
    try:
        return _forward_and_decode(runner, batch, config, stats), []
    except DeviceFailedError:
        raise
    except torch.AcceleratorError as err:  # CUDA errors but out-of-memory: the context is unusable
        raise DeviceFailedError(
            f"the {runner.device} device failed: {err} (no batch can run after this; rerun the job)"
        ) from err
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
        out_of_memory = isinstance(err, torch.cuda.OutOfMemoryError)
    # The halves run outside the `except` block: there the error's traceback would keep the failed
    # forward's frames, and with them its activations on the device, alive during the retry.
    if out_of_memory:
        torch.cuda.empty_cache()
        if stats is not None:
            stats.oom_splits += 1
    if len(batch.features) == 1:
        logger.warning("window of row %s failed: %s", batch.features[0].row_key, error)
        return [], [(batch.features[0], error)]
    if stats is not None:
        stats.batch_splits += 1
    half = len(batch.features) // 2
    results: list[WindowCandidates] = []
    failures: WindowFailures = []
    for part in (batch.features[:half], batch.features[half:]):
        sub = collate(part, runner.pad_token_id, config.batch.pad_to_multiple_of)
        ok, bad = run_batch_contained(runner, sub, config, stats)
        results.extend(ok)
        failures.extend(bad)
    return results, failures


def _forward_and_decode(
    runner: ModelRunner, batch: Batch, config: QAConfig, stats: EngineStats | None
) -> list[WindowCandidates]:
    """One batch through the model and the span decoder, counted in `stats`."""
    started = time.perf_counter()
    start_logits, end_logits = runner.forward(batch)  # (B, P) float32 each
    out = decode_batch(batch, start_logits, end_logits, config.decode.max_answer_len, config.decode.n_best)
    if stats is not None:
        stats.model_seconds += time.perf_counter() - started
        stats.batches += 1
        stats.real_tokens += batch.real_tokens
        stats.padded_tokens += batch.padded_tokens
    return out
