"""The heap trim after CPU batches: it hands memory back only once the slack has piled up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qa_core.config import ModelConfig, RuntimeConfig
from qa_core.runtime import heap
from qa_core.runtime.loaders import load_runner

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


def test_caps_onednn_caches_unless_the_environment_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    ideep, onednn = heap.ONEDNN_CACHE_ENVS
    monkeypatch.setenv(ideep, "")  # recorded, so the value set below is undone after the test
    monkeypatch.delenv(ideep)
    monkeypatch.setenv(onednn, "500")  # the user's choice wins
    assert heap.cap_onednn_caches(12) == [ideep]
    assert (os.environ[ideep], os.environ[onednn]) == ("12", "500")


def test_loading_a_cpu_model_leaves_the_process_alone(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library never tunes its caller's process: the command-line jobs apply the host tuning."""
    for name in heap.ONEDNN_CACHE_ENVS:
        monkeypatch.setenv(name, "")  # recorded, so anything loading set would be undone after the test
        monkeypatch.delenv(name)
    pinned: list[bool] = []
    monkeypatch.setattr(heap, "fix_malloc_thresholds", lambda: pinned.append(True) or True)
    load_runner(ModelConfig(name_or_path=str(tiny_model_dir)), RuntimeConfig(device="cpu"))
    assert not [name for name in heap.ONEDNN_CACHE_ENVS if name in os.environ] and not pinned


# Four 20 MB activations live at once, then freed, ten times over (as a forward's are); prints the page
# faults of the last nine rounds.
_ACTIVATIONS_SCRIPT = """
import resource, sys
import torch
from qa_core.runtime import heap
print(heap.fix_malloc_thresholds())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(10):
    if round == 1:
        before = faults()
    live = [torch.empty(5 << 20).fill_(1.0) for _ in range(4)]
    del live
print(faults() - before)
"""


def _activation_faults(env: dict[str, str]) -> tuple[bool, int]:
    env = {**{k: v for k, v in os.environ.items() if k not in heap.MALLOC_ENVS}, **env}
    done = subprocess.run(
        [sys.executable, "-c", _ACTIVATIONS_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    pinned, faults = done.stdout.split()
    return pinned == "True", int(faults)


@pytest.mark.skipif(heap._MALLOPT is None, reason="needs glibc's mallopt")
def test_pinned_thresholds_keep_freed_activations_mapped() -> None:
    pinned, faults_pinned = _activation_faults({})
    # The user's malloc options win: nothing is pinned, and glibc trims the freed 80 MB every round.
    unpinned, faults_dynamic = _activation_faults({"MALLOC_TOP_PAD_": "0"})
    assert pinned and not unpinned
    assert faults_dynamic > 9 * 4 * (20 << 20) // 4096 // 2, faults_dynamic  # each round faults its pages
    assert faults_pinned < faults_dynamic / 2, (faults_pinned, faults_dynamic)


# Runs a bf16 linear over 320 batch shapes in a fresh process and prints how much its resident set grew.
_SHAPES_SCRIPT = """
import sys
import torch
from qa_core.runtime import heap
if sys.argv[1] == "capped":
    heap.cap_onednn_caches()
layer = torch.nn.Linear(384, 1536).to(torch.bfloat16)
with torch.no_grad():
    layer(torch.ones(1, 8, 384, dtype=torch.bfloat16))
    heap._MALLOC_TRIM(0)
    before = heap._resident_bytes()
    for rows in range(1, 33):
        for width in range(64, 224, 16):
            layer(torch.ones(rows, width, 384, dtype=torch.bfloat16))
    heap._MALLOC_TRIM(0)  # what stays is what something still holds
print(heap._resident_bytes() - before)
"""


def _growth(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in heap.ONEDNN_CACHE_ENVS}
    done = subprocess.run(
        [sys.executable, "-c", _SHAPES_SCRIPT, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(heap._MALLOC_TRIM is None, reason="needs glibc's malloc_trim and /proc")
def test_the_caps_keep_new_batch_shapes_from_growing_the_resident_set() -> None:
    uncapped = _growth("uncapped")
    if uncapped < 32 * MB:
        pytest.skip(f"this CPU's bf16 matmuls do not fill oneDNN's caches (+{uncapped / MB:.0f} MB)")
    capped = _growth("capped")
    assert capped < uncapped / 4, (capped / MB, uncapped / MB)
