"""The decoder's two band searches (numpy for logits in host memory, torch on a device) agree exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from qa_core.stages.decode import _search_device, _search_host, _window_then_descending


def _case(rng: np.random.Generator, levels: int) -> tuple[tuple[Any, ...], int, int]:
    """Random logits of a batch: tie-heavy when `levels` > 0, context tokens anywhere, CLS anywhere."""
    rows, width = int(rng.integers(1, 9)), int(rng.integers(1, 60))
    if levels:
        start = rng.integers(0, levels, (rows, width)).astype(np.float32)
        end = rng.integers(0, levels, (rows, width)).astype(np.float32)
    else:
        start = rng.standard_normal((rows, width), dtype=np.float32)
        end = rng.standard_normal((rows, width), dtype=np.float32)
    char_starts = np.where(rng.random((rows, width)) < 0.3, -1, 5).astype(np.int64)  # (B, P)
    cls_index = rng.integers(-1, width, rows).astype(np.int64)  # (B,) -1: no CLS token
    band = int(rng.integers(1, 12))
    band = max(1, min(band, width))
    keep = int(rng.integers(1, 3 * width + 1))
    keep = min(keep, width * band)
    arrays = (torch.from_numpy(start), torch.from_numpy(end), char_starts, cls_index)
    return arrays, band, keep


@pytest.mark.parametrize("levels", [0, 2, 5, 40])
def test_host_search_equals_device_search(levels: int) -> None:
    """Same kept scores, spans and null logits; -inf candidates (dropped by decode) may differ in span."""
    rng = np.random.default_rng(levels)
    for trial in range(400):
        arrays, band, keep = _case(rng, levels)
        host_scores, host_flat, host_null = _search_host(*arrays, band=band, keep=keep)
        device_scores, device_flat, device_null = _search_device(*arrays, band=band, keep=keep)
        assert host_scores.dtype == device_scores.dtype == np.float32, trial
        assert np.array_equal(host_scores, device_scores), trial
        finite = np.isfinite(device_scores)
        assert np.array_equal(host_flat[finite], device_flat[finite]), trial
        assert np.array_equal(host_null, device_null), trial


def test_window_then_descending_orders_as_python_sorts_the_floats() -> None:
    """By row, then value descending, equal values (-0.0 and +0.0 too) in input order; -inf last."""
    rng = np.random.default_rng(7)
    pool = np.array([-np.inf, -3.5, -1.0, -0.0, 0.0, 1e-45, -1e-45, 2.0, 2.0, 7.25, 3e38], dtype=np.float32)
    for _ in range(200):
        n = int(rng.integers(1, 80))
        rows = np.sort(rng.integers(0, 6, n)).astype(np.int64)
        values = rng.choice(pool, n).astype(np.float32)
        order = np.argsort(_window_then_descending(rows, values), kind="stable")
        # Python's sort is stable and compares -0.0 == 0.0: the rule itself.
        expected = sorted(range(n), key=lambda k: (int(rows[k]), -float(values[k])))
        assert order.tolist() == expected
