"""Batch shapes chosen for the machine: the config's, `docqa tune`'s stored choice, or the defaults."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from docqa.cli import main
from qa_core.config import DEFAULT_BATCH_TOKENS, DEFAULT_BATCH_WINDOWS, QAConfig, load_config
from qa_core.engine.loop import QAEngine
from qa_core.runtime.shape_probe import choose, measure, tune
from qa_core.runtime.shapes import choose_batch_shape, shape_key, store_tuned
from qa_core.runtime.torch_runner import TorchRunner
from tests.conftest import write_parquet

CPU = torch.device("cpu")
SMALL = ["featurize.max_seq_len=64", "featurize.min_context_tokens=32", "featurize.doc_stride=16"]
SMALL_FLAGS = [arg for setting in SMALL for arg in ("--set", setting)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCQA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_untuned_machines_get_the_defaults(cache: Path) -> None:
    shape = choose_batch_shape(QAConfig(), "rev", CPU)
    assert (shape.max_batch_windows, shape.max_batch_tokens, shape.source) == (
        DEFAULT_BATCH_WINDOWS,
        DEFAULT_BATCH_TOKENS,
        "default",
    )
    assert "docqa tune" in shape.reason
    assert (DEFAULT_BATCH_WINDOWS, DEFAULT_BATCH_TOKENS) == (8, 3072)  # measured: benchmarks/RESULTS.md
    gpu = choose_batch_shape(QAConfig(), "rev", torch.device("cuda"))  # a GPU's untuned caps are larger
    assert (gpu.max_batch_windows, gpu.max_batch_tokens, gpu.source) == (32, 8192, "default")


def test_a_tuned_shape_is_used_only_for_its_model_dtype_and_machine(cache: Path) -> None:
    config = QAConfig()
    store_tuned(shape_key(config, "rev", CPU), {"max_batch_windows": 8, "max_batch_tokens": 3072})
    shape = choose_batch_shape(config, "rev", CPU)
    assert (shape.max_batch_windows, shape.max_batch_tokens, shape.source) == (8, 3072, "tuned")
    assert choose_batch_shape(config, "another model", CPU).source == "default"
    bf16 = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="bf16"))
    assert choose_batch_shape(bf16, "rev", CPU).source == "default"
    longer = load_config([], ["featurize.max_seq_len=512"])
    assert choose_batch_shape(longer, "rev", CPU).source == "default"


def test_the_users_setting_always_wins(cache: Path) -> None:
    config = QAConfig()
    store_tuned(shape_key(config, "rev", CPU), {"max_batch_windows": 8, "max_batch_tokens": 3072})
    both = load_config([], ["batch.max_batch_windows=64", "batch.max_batch_tokens=100000"])
    assert choose_batch_shape(both, "rev", CPU).source == "config"
    one = load_config([], ["batch.max_batch_windows=64"])
    shape = choose_batch_shape(one, "rev", CPU)
    assert (shape.max_batch_windows, shape.max_batch_tokens) == (64, 3072)  # the other from the tuning


def test_a_broken_cache_is_ignored(cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / "batch_shapes.json").write_text("{not json")
    assert choose_batch_shape(QAConfig(), "rev", CPU).source == "default"


def test_choose_prefers_the_largest_cap_within_the_margin() -> None:
    assert choose({4: 1.00, 8: 0.90, 16: 0.92, 32: 1.20}) == 16  # 0.92 is within 3% of 0.90
    assert choose({4: 1.00, 8: 0.90, 16: 0.95, 32: 1.20}) == 8
    assert choose({8: 1.0, 32: 1.0}) == 32


def test_measure_interleaves_rounds_and_takes_medians(tiny_model: TorchRunner) -> None:
    """With a clock that makes one shape slow, that shape loses; at least three rounds are timed."""
    config = load_config([], SMALL)
    now = [0.0]
    slow_next = [False]
    forward = tiny_model.forward

    def timed_forward(batch):  # type: ignore[no-untyped-def]
        slow_next[0] = batch.input_ids.shape[0] == 32
        return forward(batch)

    def clock() -> float:
        now[0] += 10.0 if slow_next[0] else 1.0
        slow_next[0] = False
        return now[0]

    runner = dataclasses.replace(tiny_model)  # a copy over the same model, with a timed forward
    runner.forward = timed_forward  # type: ignore[method-assign]
    lengths, per_token, rounds = measure(runner, config, seconds=0, candidates=(8, 32), clock=clock)
    assert lengths == (32, 64) and rounds == 3
    assert choose(per_token) == 8


def test_tune_then_predict_uses_and_records_the_shape(
    cache: Path, tiny_model: TorchRunner, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = load_config([], [f"model.name_or_path={tiny_model_dir}", *SMALL])
    result = tune(tiny_model, config, seconds=0)
    assert result.stored_in and Path(result.stored_in).is_file()
    # The engine (the Python API) reads no per-machine cache; the jobs decide the shape before answering.
    assert QAEngine(tiny_model, config).batch_shape.source == "default"
    source = write_parquet(
        tmp_path / "in.parquet", [{"id": "a", "question": "what?", "context": "the river"}]
    )
    argv = ["predict", "--input", str(source), "--model", str(tiny_model_dir), "--no-progress", "--no-report"]
    small = SMALL_FLAGS
    assert main([*argv, "--output", str(tmp_path / "tuned"), *small]) == 0
    shape = _shape_of(tmp_path / "tuned")
    assert shape["source"] == "tuned" and shape["max_batch_windows"] == result.max_batch_windows
    assert (
        main(
            [
                *argv,
                "--output",
                str(tmp_path / "set"),
                *small,
                "--set",
                "batch.max_batch_windows=3",
                "--set",
                "batch.max_batch_tokens=999",
            ]
        )
        == 0
    )
    shape = _shape_of(tmp_path / "set")
    assert (shape["source"], shape["max_batch_windows"], shape["max_batch_tokens"]) == ("config", 3, 999)


def test_tune_command(
    cache: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "tune",
        "--model",
        str(tiny_model_dir),
        "--seconds",
        "0",
        "--json",
        str(tmp_path / "t.json"),
        *SMALL_FLAGS,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "<- chosen" in out and "stored in" in out
    assert json.loads((tmp_path / "t.json").read_text())["max_batch_windows"] in (4, 8, 16, 32, 64)


@pytest.fixture
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("qa_core.runtime.shape_probe.PROBE_SECONDS", 0.0)  # three rounds, however fast


def _job_argv(tiny_model_dir: Path, source: Path, output: Path, *settings: str) -> list[str]:
    flags = [arg for setting in settings for arg in ("--set", setting)]
    return [
        "--input",
        str(source),
        "--output",
        str(output),
        "--model",
        str(tiny_model_dir),
        "--no-progress",
        *SMALL_FLAGS,
        *flags,
    ]


def _shape_of(output: Path) -> dict[str, Any]:
    """The `batch_shape` a finished job recorded in its `_run.json`."""
    shape: dict[str, Any] = json.loads((output / "_run.json").read_text())["batch_shape"]
    return shape


def _three_rows(tmp_path: Path) -> Path:
    rows = [{"id": str(k), "question": "what?", "context": f"the river {k}"} for k in range(3)]
    return write_parquet(tmp_path / "in.parquet", rows)


def test_a_large_untuned_job_probes_once_and_later_jobs_reuse_it(
    cache: Path, quick_probe: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = _three_rows(tmp_path)
    below = _job_argv(tiny_model_dir, source, tmp_path / "small", "batch.probe_min_rows=4")
    assert main(["predict", *below, "--no-report"]) == 0
    assert _shape_of(tmp_path / "small")["source"] == "default"
    assert not (cache / "batch_shapes.json").exists()  # 3 rows < 4: no probe

    large = _job_argv(tiny_model_dir, source, tmp_path / "large", "batch.probe_min_rows=3")
    assert main(["predict", *large, "--no-report"]) == 0
    shape = _shape_of(tmp_path / "large")
    assert shape["source"] == "probed" and "probe" in shape["reason"]
    (entry,) = json.loads((cache / "batch_shapes.json").read_text()).values()
    assert entry["origin"] == "probe" and shape["max_batch_windows"] == entry["max_batch_windows"]
    assert set(entry["tokens_per_second"]) == {"4", "8", "16", "32"}  # the probe's candidates

    again = _job_argv(tiny_model_dir, source, tmp_path / "again", "batch.probe_min_rows=3")
    assert main(["predict", *again, "--no-report"]) == 0
    (later,) = json.loads((cache / "batch_shapes.json").read_text()).values()
    assert later == entry  # not probed again
    assert _shape_of(tmp_path / "again")["source"] == "probed"

    # Workers answer with a share of the threads: the launcher probes (and plans) as they run.
    workers = _job_argv(tiny_model_dir, source, tmp_path / "workers", "batch.probe_min_rows=3")
    assert main(["predict", *workers, "--no-report", "--workers", "2"]) == 0
    threads = torch.get_num_threads()
    entries = json.loads((cache / "batch_shapes.json").read_text()).values()
    assert sorted(e["key"]["threads"] for e in entries) == sorted({max(1, threads // 2), threads})
    assert _shape_of(tmp_path / "workers")["source"] == "probed"


def test_no_probe_when_the_caps_are_set_or_probing_is_off(
    cache: Path, quick_probe: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = _three_rows(tmp_path)
    off = _job_argv(tiny_model_dir, source, tmp_path / "off", "batch.probe_min_rows=0")
    assert main(["predict", *off, "--no-report"]) == 0
    caps = ("batch.probe_min_rows=1", "batch.max_batch_windows=2", "batch.max_batch_tokens=512")
    assert main(["predict", *_job_argv(tiny_model_dir, source, tmp_path / "set", *caps), "--no-report"]) == 0
    assert not (cache / "batch_shapes.json").exists()
    shape = _shape_of(tmp_path / "set")
    assert (shape["source"], shape["max_batch_windows"]) == ("config", 2)


def test_docqa_run_probes_on_the_launcher_for_local_workers(
    cache: Path, quick_probe: None, tiny_model_dir: Path, tmp_path: Path
) -> None:
    source = _three_rows(tmp_path)
    argv = _job_argv(tiny_model_dir, source, tmp_path / "run", "batch.probe_min_rows=3")
    assert main(["run", *argv]) == 0
    shape = _shape_of(tmp_path / "run")
    assert shape["source"] == "probed"
