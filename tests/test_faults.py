"""Faults: a poison row, out-of-memory on big batches, a worker killed mid-run, a crash mid-write, reruns.

Nothing is ever lost silently: a row ends as an answer or a rejection, a run that cannot finish says so
and leaves no `COMPLETED`, and the same input and config give the same answer rows every time.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import qa_core.jobs.parts
from docqa.cli import main
from pipelines.run import run
from qa_core.config import load_config
from qa_core.engine.loop import QAEngine
from qa_core.errors import OutputError
from qa_core.io.write import OutputWriter
from qa_core.jobs.predict import predict
from qa_core.records import Answer
from qa_core.runtime.torch_runner import TorchRunner
from tests import fakes
from tests.conftest import write_parquet
from tests.test_engine import MarkerModel, make_rows

REPO = Path(__file__).resolve().parents[1]


def marker_rows(n: int, poison_at: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        words = "the film river church" if i in poison_at else "the river church"
        rows.append({"id": f"r{i:03d}", "question": "what?", "context": f"{words} number {i} " * (1 + i % 5)})
    return rows


def outputs(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    assert (out / "COMPLETED").exists()
    info = json.loads((out / "_run.json").read_text())
    return (
        pq.read_table(out / "answers").to_pylist(),
        pq.read_table(out / "rejections").to_pylist(),
        info["counts"],
    )


# --- a poison row -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["predict", "run"])
def test_poison_row_rejects_only_that_row(
    engine: str, tmp_path: Path, tiny_model: TorchRunner, tiny_model_dir: Path
) -> None:
    source = write_parquet(tmp_path / "in.parquet", marker_rows(24, poison_at=(7,)))
    out = tmp_path / "out"
    config = load_config([], [f"model.name_or_path={tiny_model_dir}"])
    if engine == "predict":
        predict(config, str(source), str(out), progress=False, model=fakes.poison_model(tiny_model.tokenizer))
    else:
        argv = ["--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
        run(argv, model_handler=fakes.FakeModelHandler(config, str(tiny_model_dir), kind="poison"))
    answers, rejections, counts = outputs(out)
    assert [(r["id"], r["reason"]) for r in rejections] == [("r007", "MODEL_ERROR")]
    assert "poisoned batch" in rejections[0]["detail"]
    assert len(answers) == 23 and {a["answer"] for a in answers} == {"river church"}
    assert counts["batch_splits"] > 0 and counts["rejected_by_reason"] == {"MODEL_ERROR": 1}


# --- out of memory ------------------------------------------------------------------------------------

OOM_SETTINGS = ["batch.max_batch_windows=16", "batch.max_batch_tokens=100000"]


def test_oom_splits_batches_and_answers_every_row(tiny_model: TorchRunner) -> None:
    model = fakes.oom_model(tiny_model.tokenizer, max_windows=3)
    engine = QAEngine(model, load_config([], OOM_SETTINGS))
    rows = marker_rows(40)
    results = list(engine.answer_rows(rows))
    assert [r.id for r in results] == [r["id"] for r in rows]
    assert all(isinstance(r, Answer) and r.answer == "river church" for r in results)
    assert engine.stats.oom_splits > 0 and model.model.ooms == engine.stats.oom_splits
    assert engine.stats.batch_splits >= engine.stats.oom_splits


@pytest.mark.parametrize("engine", ["predict", "run"])
def test_oom_in_both_engines(
    engine: str, tmp_path: Path, tiny_model: TorchRunner, tiny_model_dir: Path
) -> None:
    source = write_parquet(tmp_path / "in.parquet", marker_rows(30))
    out = tmp_path / "out"
    settings = [*OOM_SETTINGS, f"model.name_or_path={tiny_model_dir}"]
    config = load_config([], settings)
    if engine == "predict":
        predict(config, str(source), str(out), progress=False, model=fakes.oom_model(tiny_model.tokenizer, 3))
    else:
        argv = ["--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
        argv += [arg for s in OOM_SETTINGS for arg in ("--set", s)]
        handler = fakes.FakeModelHandler(config, str(tiny_model_dir), kind="oom", max_windows=3)
        run(argv, model_handler=handler)
    answers, rejections, counts = outputs(out)
    assert rejections == [] and len(answers) == 30
    assert {a["answer"] for a in answers} == {"river church"}
    assert counts["oom_splits"] > 0


# --- a worker process killed mid-run ------------------------------------------------------------------

KILL_DRIVER = textwrap.dedent(
    """
    import sys
    from pipelines.run import run
    from qa_core.jobs.guard import run_guarded
    from qa_core.config import load_config
    from tests.fakes import KillOnceHandler

    source, out, model_dir, marker_file = sys.argv[1:5]
    config = load_config([], [f"model.name_or_path={model_dir}", "batch.max_batch_windows=4"])
    argv = ["--input", source, "--output", out, "--model", model_dir, "--set", "batch.max_batch_windows=4",
            "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    handler = KillOnceHandler(config, model_dir, marker_file)
    sys.exit(run_guarded("run", lambda: run(argv, model_handler=handler)))
    """
)


def test_worker_killed_mid_run_never_loses_rows_silently(tmp_path: Path, tiny_model_dir: Path) -> None:
    """One worker process dies (`os._exit`) in its first batch under the multi-process DirectRunner.

    The run either completes with every row exactly once, or fails with exit code 2, one line naming
    the cause and no `COMPLETED` (Beam 2.77's DirectRunner does the latter); it never hangs (timeout)
    and never finishes with rows missing or doubled.
    """
    rows = marker_rows(40)
    source = write_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    marker_file = tmp_path / "killed"
    result = subprocess.run(
        [sys.executable, "-c", KILL_DRIVER, str(source), str(out), str(tiny_model_dir), str(marker_file)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert marker_file.exists(), f"no worker was killed: {result.stderr[-3000:]}"
    if result.returncode == 0:
        answers, rejections, counts = outputs(out)
        ids = sorted([a["id"] for a in answers] + [r["id"] for r in rejections])
        assert ids == sorted(r["id"] for r in rows), "every row exactly once"
        assert counts["rows_read"] == 40
    else:
        assert result.returncode == 2, result.stderr[-3000:]
        assert not (out / "COMPLETED").exists()
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("docqa run: error: the pipeline failed:"), last
        assert "worker process died" in last and "not marked COMPLETED" in last
        # The leftovers are refused as an unfinished run; --overwrite replaces them.
        argv = ["run", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
        assert main(argv) == 2
        assert main([*argv, "--overwrite"]) == 0
        answers, rejections, counts = outputs(out)
        assert sorted(a["id"] for a in answers) == sorted(r["id"] for r in rows) and rejections == []


# --- a crash mid-write --------------------------------------------------------------------------------


class CrashModel(MarkerModel):
    """The marker model, interrupted (like Ctrl-C or a kill) on its `crash_at`-th forward pass."""

    def __init__(self, start_id: int, end_id: int, crash_at: int) -> None:
        super().__init__(start_id, end_id)
        self.calls, self.crash_at = 0, crash_at

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> SimpleNamespace:
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return super().forward(input_ids, attention_mask, token_type_ids)


def test_crash_mid_write_leaves_nothing_that_looks_complete(
    tmp_path: Path,
    tiny_model: TorchRunner,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_parquet(tmp_path / "in.parquet", marker_rows(300))
    out = tmp_path / "out"
    # With small sort buffers and batches the first answers are in a half-written part file when the
    # crash comes at the 40th batch.
    settings = ["batch.sort_buffer_windows=8", "batch.max_batch_windows=4"]
    monkeypatch.setattr(qa_core.jobs.parts, "OutputWriter", functools.partial(OutputWriter, flush_rows=5))
    ids = fakes.token_ids(tiny_model.tokenizer, fakes.START_WORD, fakes.END_WORD)
    crashing = fakes.wrap(CrashModel(*ids, crash_at=40), tiny_model.tokenizer, "crash")
    with pytest.raises(KeyboardInterrupt):
        predict(load_config([], settings), str(source), str(out), progress=False, model=crashing)

    assert not (out / "COMPLETED").exists() and not (out / "_run.json").exists()
    leftovers = sorted(p.name for p in (out / "answers").iterdir())
    assert len(leftovers) == 1 and re.fullmatch(
        r"_in-progress-part-00000\.parquet\.[0-9a-f]{8}\.tmp", leftovers[0]
    )
    assert not list(out.glob("*/*.parquet")), "nothing named like a finished part file"
    assert pq.read_table(out / "answers").num_rows == 0, "dataset readers skip the in-progress file"

    argv = ["predict", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    argv += ["--no-progress", *[arg for s in settings for arg in ("--set", s)]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run" in err and "--overwrite" in err and "Traceback" not in err
    with pytest.raises(OutputError, match="unfinished run"):  # the same check, before the model loads
        predict(load_config([], settings), str(source), str(out), progress=False, model=crashing)
    marker = fakes.marker(tiny_model.tokenizer)
    predict(load_config([], settings), str(source), str(out), overwrite=True, progress=False, model=marker)
    answers, rejections, counts = outputs(out)
    assert len(answers) == 300 and rejections == [] and counts["rows_read"] == 300
    assert sorted(p.name for p in (out / "answers").iterdir()) == ["part-00000.parquet"]


# --- reruns -------------------------------------------------------------------------------------------


def rerun_rows() -> list[dict[str, Any]]:
    rows = make_rows(30, seed=5)
    rows += [
        {"id": "empty", "question": "", "context": "the city"},
        {"id": "null-context", "question": "what?", "context": None},
    ]
    return rows


@pytest.mark.parametrize("engine", ["predict", "run"])
def test_rerun_gives_identical_answer_rows(engine: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", rerun_rows())
    tables = []
    for attempt in ("first", "second"):
        out = tmp_path / attempt
        argv = [engine, "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
        argv += ["--set", "decode.top_k=3"] + (["--no-progress"] if engine == "predict" else [])
        assert main(argv) == 0
        info = json.loads((out / "_run.json").read_text())
        answers = pq.read_table(out / "answers")
        rejections = pq.read_table(out / "rejections")
        if engine == "run":  # shards and their order are the runner's choice
            answers, rejections = answers.sort_by("id"), rejections.sort_by("id")
        tables.append((answers, rejections, info["config_hash"], info["model"]["revision"]))
    (a1, r1, h1, v1), (a2, r2, h2, v2) = tables
    assert a1.num_rows == 30 and r1.num_rows == 2
    assert a1.equals(a2), "answer rows differ between two runs of the same input and config"
    assert r1.equals(r2) and (h1, v1) == (h2, v2)
    assert a1.schema.equals(a2.schema, check_metadata=True)
    assert isinstance(a1.column("top_k").type, pa.ListType)
