"""The heap trim after CPU batches: it hands memory back only once the slack has piled up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qa_core import heap

MB = 1 << 20


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts `malloc_trim` calls; the trim state starts from nothing trimmed."""
    calls: list[int] = []
    monkeypatch.setattr(heap, "_MALLOC_TRIM", calls.append)
    monkeypatch.setattr(heap._TrimState, "resident_after_trim", 0)
    yield calls


def _resident(monkeypatch: pytest.MonkeyPatch, sizes_mb: list[int | None]) -> None:
    sizes = iter([None if size is None else size * MB for size in sizes_mb])
    monkeypatch.setattr(heap, "_resident_bytes", lambda: next(sizes))


def test_trims_only_when_the_slack_has_piled_up(trims: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    assert heap.TRIM_SLACK_BYTES == 128 * MB
    # Each call reads the resident set; a trim reads it again afterwards (what the trim left).
    _resident(monkeypatch, [500, 300, 400, 427, 429, 200])
    heap.release_free_heap()  # 500 - 0 >= 128: trim, leaves 300
    heap.release_free_heap()  # 400 - 300 < 128: keep
    heap.release_free_heap()  # 427 - 300 < 128: keep
    assert len(trims) == 1
    heap.release_free_heap()  # 429 - 300 >= 128: trim, leaves 200
    assert len(trims) == 2 and heap._TrimState.resident_after_trim == 200 * MB


def test_trims_every_time_without_a_resident_set(trims: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    _resident(monkeypatch, [None] * 6)
    for _ in range(3):
        heap.release_free_heap()
    assert len(trims) == 3


def test_reads_this_processes_resident_set() -> None:
    resident = heap._resident_bytes()
    assert resident is None or 10 * MB < resident < 64 * 1024 * MB
