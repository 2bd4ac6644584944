"""`docqa bench` runs every mode end to end and reports consistent figures (no speed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.bench import MODES, main
from qa_core.model import ModelLoadError


def test_bench_all_modes(tmp_path: Path, tiny_model_dir: Path) -> None:
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "the river and the church " * (3 + i),
                        "qas": [
                            {
                                "id": f"q{i}",
                                "question": "what?",
                                "answers": [{"text": "the river", "answer_start": 0}],
                            }
                        ],
                    }
                    for i in range(6)
                ],
            }
        ],
    }
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(squad))
    out = tmp_path / "bench.json"
    assert main(["--model", str(tiny_model_dir), "--data", str(data), "--n", "6", "--json", str(out)]) == 0
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == set(MODES)
    assert results["bound"]["ratio_to_bound"] == 1.0
    for r in results.values():
        assert r["questions"] == 6 and r["questions_per_s"] > 0 and r["peak_rss_mb"] > 0
    # docqa pads to the batch's longest; the stock handler pads every window to max_seq_len.
    assert results["predict"]["padding_efficiency"] > results["beam-stock"]["padding_efficiency"]
    # The bound runs the same batches as predict and run (same caps, same padding multiple).
    assert results["bound"]["padded_tokens"] == results["predict"]["padded_tokens"]
    assert results["bound"]["padded_tokens"] == results["run"]["padded_tokens"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_on_cuda_without_a_gpu_fails_before_any_mode_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "bench.json"
    with pytest.raises(ModelLoadError, match="torch sees no CUDA device"):
        main(["--model", str(tiny_model_dir), "--device", "cuda", "--n", "2", "--json", str(out)])
    assert not out.exists()
