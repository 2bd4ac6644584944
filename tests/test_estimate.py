"""`docqa estimate`: exact on a full sample (vs. a predict run), close on a partial one, honest hours."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from qa_core.config import load_config
from qa_core.io.read import resolve_inputs
from qa_core.io.sample import read_layout, sample_rows
from qa_core.tools.estimate import GPU_ASSUMED_SPEEDUP, estimate
from tests.user_commands_data import WORDS, run_command

SETTINGS = [
    "featurize.max_seq_len=32",
    "featurize.doc_stride=8",
    "featurize.min_context_tokens=12",
    "featurize.max_question_len=12",
    "batch.sort_buffer_windows=100000",  # one sort buffer, so predict's batches equal the estimate's
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("estimate_in")
    for part in range(2):
        rows = []
        for i in range(120):
            n = 1 + (i * 13 + part * 5) % 40
            rows.append(
                {
                    "id": f"{part}-{i}",
                    "question": "" if i % 30 == 7 else f"what is the {WORDS[i % len(WORDS)]}?",
                    "context": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n)),
                }
            )
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{part}.parquet", row_group_size=25)
    return folder


def _config(model: Path) -> list[str]:
    return [f"model.name_or_path={model}", *SETTINGS]


def test_sample_is_spread_over_files_and_row_groups(inputs: Path) -> None:
    layout = read_layout(resolve_inputs(str(inputs / "*.parquet")))
    assert layout.rows == 240 and len(layout.row_groups) == 10
    rows = sample_rows(layout, ["id"], 10)
    assert len(rows) == 10 and len({r["id"].split("-")[0] for r in rows}) == 2
    assert len(sample_rows(layout, ["id"], 1000)) == 240


def test_full_sample_matches_a_predict_run(inputs: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config([], _config(tiny_model_dir))
    result = estimate(config, str(inputs), sample=10_000)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(inputs), "--output", str(out), "--no-progress"]
    assert main([*argv, *(x for s in SETTINGS for x in ("--set", s)), "--model", str(tiny_model_dir)]) == 0
    counts = json.loads((out / "_run.json").read_text())["counts"]
    assert result.rows == result.sampled_rows == counts["rows_read"] == 240
    assert result.answered_rows == counts["answered"]
    assert result.sample_rejected_by_reason == counts["rejected_by_reason"]
    assert (result.windows, result.real_tokens) == (counts["windows"], counts["real_tokens"])
    assert result.padded_tokens == counts["padded_tokens"]
    assert result.padding_waste == counts["padded_tokens"] - counts["real_tokens"]
    assert result.cpu_hours is None and result.gpu_hours is None


def test_partial_sample_and_hours(inputs: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    config = load_config([], _config(tiny_model_dir))
    full = estimate(config, str(inputs), sample=10_000)
    bench = tmp_path / "bench.json"
    result = {"mode": "predict", "seconds": 2.0, "real_tokens": 1000, "padded_tokens": 2000}
    bench.write_text(json.dumps({"meta": {"argv": ["--n", "6"]}, "results": [result]}))
    part = estimate(config, str(inputs), sample=60, bench=str(bench))
    assert part.sampled_rows == 60 and part.rows == 240
    assert abs(part.windows - full.windows) / full.windows < 0.25
    assert abs(part.real_tokens - full.real_tokens) / full.real_tokens < 0.25
    assert part.real_tokens_rel_error is not None and part.real_tokens_rel_error < 0.25
    assert part.cpu.measured and part.cpu.basis == "padded" and part.cpu.tokens_per_s == 1000
    assert part.cpu_hours == pytest.approx(part.padded_tokens / 1000 / 3600, rel=1e-6)
    assert not part.gpu.measured and "ASSUMED" in part.gpu.source
    assert part.cpu_hours is not None
    assert part.gpu_hours == pytest.approx(part.cpu_hours / GPU_ASSUMED_SPEEDUP)
    measured = estimate(config, str(inputs), sample=60, bench=str(bench), gpu_bench=str(bench))
    assert measured.gpu.measured and measured.gpu_hours == pytest.approx(part.cpu_hours)


def test_estimate_command(
    inputs: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"results": [{"mode": "run", "real_tokens_per_s": 500.0}]}))
    out = tmp_path / "estimate.json"
    argv = ["estimate", "--input", str(inputs / "*.parquet"), "--model", str(tiny_model_dir)]
    assert run_command([*argv, "--sample", "40", "--bench", str(bench), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "240 rows" in printed and "ASSUMPTION" in printed and "measured" in printed
    document = json.loads(out.read_text())
    assert document["rows"] == 240 and document["cpu"]["basis"] == "real"
    assert document["cpu_hours"] == pytest.approx(document["real_tokens"] / 500 / 3600)
    assert run_command([*argv, "--set", "input.question_column=query"]) == 2
    assert "has no column" in capsys.readouterr().err
