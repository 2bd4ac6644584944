"""Host tuning: the Python API leaves its process alone, `tune_host` tunes it, `trimming` trims CPU batches.

Process-wide settings are read in fresh processes (a subprocess each), so no test leaves the pytest
process tuned and none depends on what an earlier test did to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.runtime import heap
from qa_core.runtime.fit import ModelLimits
from qa_core.runtime.host_tuning import TrimmingRunner, trimming
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.torch_runner import TorchRunner
from qa_core.stages.batch import Batch

MB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
# Every environment variable that host tuning reads or sets.
TUNING_ENVS = (*heap.ONEDNN_CACHE_ENVS, *heap.MALLOC_ENVS, heap.ARROW_POOL_ENV)


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> object:
    """The JSON that `script` prints last, run in a fresh process without any tuning variable set."""
    clean = {k: v for k, v in os.environ.items() if k not in TUNING_ENVS}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# What a process's tuning looks like from inside it.
_STATE = """
import gc, json, os
import pyarrow as pa
from qa_core.runtime import heap
from qa_core.runtime.host_tuning import tuning_report

def state():
    return {
        "env": {name: os.environ.get(name) for name in (*heap.ONEDNN_CACHE_ENVS, *heap.MALLOC_ENVS)},
        "pinned": heap.malloc_thresholds_pinned(),
        "pool": pa.default_memory_pool().backend_name,
        "trims": heap.heap_trim_calls(),
        "tuned": tuning_report() is not None,
        "frozen": gc.get_freeze_count() > 0,
    }
"""

# The Python API on the bundled model on a CPU: loading (`load_runner`, and `qa_core.load_model` in
# `api` mode), then answering rows (`qa_core.answer_rows`, `QAEngine`) and a table (`qa_core.answer_table`).
_API_SCRIPT = (
    _STATE
    + """
import sys
import qa_core
from qa_core.engine.loop import QAEngine
from qa_core.runtime.loaders import load_runner

config = qa_core.load_config(overrides=["runtime.device=cpu", "batch.max_batch_windows=2"])
initial = state()
model = load_runner(config.model, config.runtime)
if sys.argv[1] == "api":
    model = qa_core.load_model(config)
loaded = state()
rows = [
    {"id": i, "question": "Where is the church?", "context": "The church is by the river. " * (1 + i)}
    for i in range(12)
]
answered = list(qa_core.answer_rows(model, config, rows)) + list(QAEngine(model, config).answer_rows(rows))
answers, rejections = qa_core.answer_table(model, config, pa.Table.from_pylist(rows))
assert len(answered) == 24 and answers.num_rows + rejections.num_rows == 12
print(json.dumps([initial, loaded, state()]))
"""
)


def _states(mode: str) -> tuple[object, object, object]:
    """The process's state before the model loads, once it has loaded, and once rows were answered."""
    initial, loaded, answered = _run(_API_SCRIPT, mode)  # type: ignore[misc]
    if initial["pool"] == "system":
        pytest.skip("this pyarrow's default pool is the system allocator: a switch could not show")
    assert initial == {
        "env": dict.fromkeys((*heap.ONEDNN_CACHE_ENVS, *heap.MALLOC_ENVS)),
        "pinned": False,
        "pool": initial["pool"],
        "trims": 0,
        "tuned": False,
        "frozen": False,
    }
    return initial, loaded, answered


def test_the_engine_leaves_its_process_alone() -> None:
    _, loaded, answered = _states("engine")
    assert answered == loaded  # above all: no heap trim after the CPU batches


def test_loading_and_the_python_api_leave_the_process_alone() -> None:
    # Needs model loading without its process tuning (issue 30: loading.py's calls removed).
    initial, loaded, answered = _states("api")
    assert loaded == initial and answered == initial


# `tune_host` twice in a fresh process: what it did, and the process's state afterwards.
_TUNE_SCRIPT = (
    _STATE
    + """
from qa_core.runtime.host_tuning import tune_host
first = tune_host()
assert tune_host() is first  # once per process
print(json.dumps([first.to_dict(), state()]))
"""
)


@pytest.mark.skipif(not heap.can_trim(), reason="needs glibc")
def test_tune_host_applies_every_setting() -> None:
    tuning, state = _run(_TUNE_SCRIPT)  # type: ignore[misc]
    assert tuning.pop("frozen_objects") > 10_000  # the imported modules' objects (pyarrow's, numpy's, ...)
    assert tuning == {
        "onednn_caches": list(heap.ONEDNN_CACHE_ENVS),
        "malloc_thresholds": True,
        "arrow_system_pool": True,
        "heap_trim": True,
        "environment": [],
    }
    capped = dict.fromkeys(heap.ONEDNN_CACHE_ENVS, str(heap.ONEDNN_CACHE_CAPACITY))
    assert state["env"] == capped | dict.fromkeys(heap.MALLOC_ENVS)
    assert (state["pinned"], state["pool"], state["trims"], state["tuned"]) == (True, "system", 0, True)
    assert state["frozen"]


@pytest.mark.skipif(not heap.can_trim(), reason="needs glibc")
def test_tune_host_leaves_what_the_environment_sets() -> None:
    ideep, onednn = heap.ONEDNN_CACHE_ENVS
    env = {ideep: "500", "MALLOC_TOP_PAD_": "0", heap.ARROW_POOL_ENV: "system"}
    tuning, state = _run(_TUNE_SCRIPT, env=env)  # type: ignore[misc]
    assert tuning.pop("frozen_objects") > 10_000
    assert tuning == {
        "onednn_caches": [onednn],
        "malloc_thresholds": False,
        "arrow_system_pool": False,
        "heap_trim": True,
        "environment": [ideep, "MALLOC_TOP_PAD_", heap.ARROW_POOL_ENV],
    }
    assert (state["env"][ideep], state["env"][onednn], state["pinned"]) == ("500", "16", False)


class _Runner:
    """A `ModelRunner` whose forward returns zero logits, on the host or (says it) on a device."""

    def __init__(self, on_host: bool, fail: bool = False) -> None:
        self.tokenizer = object()
        self.model_id, self.revision = "fake", "r1"
        self.device = torch.device("cpu" if on_host else "meta")
        self.on_host, self.fail = on_host, fail

    @property
    def pad_token_id(self) -> int:
        return 7

    @property
    def limits(self) -> ModelLimits:
        return ModelLimits("fake", 64, "64 position embeddings", has_cls=True)

    @property
    def computes_on_host(self) -> bool:
        return self.on_host

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fail:
            raise RuntimeError("forward failed")
        shape = batch.input_ids.shape  # (B, P)
        return torch.zeros(shape), torch.ones(shape)


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts `malloc_trim` calls; the trim state starts from nothing trimmed."""
    calls: list[int] = []
    monkeypatch.setattr(heap, "_MALLOC_TRIM", calls.append)
    monkeypatch.setattr(heap._TrimState, "resident_after_trim", 0)
    monkeypatch.setattr(heap._TrimState, "calls", 0)
    yield calls


def _batch() -> Batch:
    ids = torch.ones(2, 8, dtype=torch.int64).numpy()
    return Batch((), ids, ids, ids * 0)


def test_trimming_trims_after_host_batches_only(trims: list[int]) -> None:
    on_host, on_device = trimming(_Runner(on_host=True)), trimming(_Runner(on_host=False))
    start, end = on_host.forward(_batch())
    assert (start.shape, float(end.sum())) == ((2, 8), 16.0)  # the runner's logits, untouched
    on_device.forward(_batch())
    on_device.forward(_batch())
    assert heap.heap_trim_calls() == 1
    with pytest.raises(RuntimeError, match="forward failed"):
        trimming(_Runner(on_host=True, fail=True)).forward(_batch())
    assert heap.heap_trim_calls() == 1  # the halves' trim follows, not the failed batch's


def test_trimming_delegates_the_runner_contract() -> None:
    inner = _Runner(on_host=False)
    wrapped = trimming(inner)
    assert isinstance(wrapped, TrimmingRunner) and trimming(wrapped) is wrapped
    members = ("tokenizer", "model_id", "revision", "device", "pad_token_id", "limits", "computes_on_host")
    assert [getattr(wrapped, name) for name in members] == [getattr(inner, name) for name in members]


def test_a_trimming_engine_trims_once_per_cpu_batch(
    tiny_model: TorchRunner, trims: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = QAConfig()
    rows = [{"id": i, "question": "where?", "context": "the river church " * (1 + i)} for i in range(9)]
    runner: ModelRunner = trimming(tiny_model)
    engine = QAEngine(runner, config)
    assert len(list(engine.answer_rows(rows))) == 9
    assert engine.stats.batches > 1 and heap.heap_trim_calls() == engine.stats.batches
    # Past the slack since the last trim, the wrapper's call trims.
    trimmed = len(trims)
    monkeypatch.setattr(heap, "_resident_bytes", lambda: 10 * heap.TRIM_SLACK_BYTES)
    runner.forward(_batch())
    assert len(trims) == trimmed + 1


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
    assert heap.heap_trim_calls() == 4


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


# Four 20 MB activations live at once, then freed, ten times over (as a forward's are), in a process
# tuned by `tune_host`; prints whether it pinned the thresholds and the page faults of the last nine rounds.
_ACTIVATIONS_SCRIPT = """
import json, resource
import torch
from qa_core.runtime.host_tuning import tune_host
pinned = tune_host().malloc_thresholds
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for round in range(10):
    if round == 1:
        before = faults()
    live = [torch.empty(5 << 20).fill_(1.0) for _ in range(4)]
    del live
print(json.dumps([pinned, faults() - before]))
"""


@pytest.mark.skipif(not heap.can_trim(), reason="needs glibc's mallopt")
def test_pinned_thresholds_keep_freed_activations_mapped() -> None:
    pinned, faults_pinned = _run(_ACTIVATIONS_SCRIPT)  # type: ignore[misc]
    # The user's malloc options win: nothing is pinned, and glibc trims the freed 80 MB every round.
    unpinned, faults_dynamic = _run(_ACTIVATIONS_SCRIPT, env={"MALLOC_TOP_PAD_": "0"})  # type: ignore[misc]
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


@pytest.mark.skipif(not heap.can_trim(), reason="needs glibc's malloc_trim and /proc")
def test_the_caps_keep_new_batch_shapes_from_growing_the_resident_set() -> None:
    uncapped = _run(_SHAPES_SCRIPT, "uncapped")
    assert isinstance(uncapped, int)
    if uncapped < 32 * MB:
        pytest.skip(f"this CPU's bf16 matmuls do not fill oneDNN's caches (+{uncapped / MB:.0f} MB)")
    capped = _run(_SHAPES_SCRIPT, "capped")
    assert isinstance(capped, int) and capped < uncapped / 4, (capped / MB, uncapped / MB)
