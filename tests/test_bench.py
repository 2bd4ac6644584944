"""`docqa bench` runs every mode end to end and reports consistent figures (no speed assertions)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from docqa.bench import long_contexts, main
from docqa.bench_options import DEFAULT_MODES
from docqa.bench_table import combine_rounds, format_table, summarize
from qa_core.errors import ModelLoadError
from qa_core.evaluation.squad import load_squad, squad_to_table


def _squad(questions: int) -> dict[str, Any]:
    """A SQuAD document of `questions` paragraphs of growing length, one question each."""
    return {
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
                    for i in range(questions)
                ],
            }
        ],
    }


# The spark mode needs the [spark] extra and a Java runtime (CI installs both).
SPARK = importlib.util.find_spec("pyspark") is not None and shutil.which("java") is not None


def test_bench_all_modes(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(_squad(6)))
    out = tmp_path / "bench.json"
    modes = [m for m in DEFAULT_MODES if SPARK or m != "spark"]
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--n", "6", "--modes", ",".join(modes)]
    assert main([*argv, "--json", str(out)]) == 0
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == set(modes)
    assert results["bound"]["ratio_to_bound"] == 1.0
    for r in results.values():
        assert r["questions"] == 6 and r["questions_per_s"] > 0 and r["peak_rss_mb"] > 0
    # docqa pads to the batch's longest; the stock handler pads every window to max_seq_len.
    assert results["predict"]["padding_efficiency"] > results["beam-stock"]["padding_efficiency"]
    # At the jobs' shape the bound runs the same batches as predict and run (same caps, same padding).
    bound = results["bound"]
    assert (
        bound["chosen_padded_tokens"]
        == results["predict"]["padded_tokens"]
        == results["run"]["padded_tokens"]
    )
    assert bound["seconds"] <= bound["chosen_seconds"]  # the fastest shape, the jobs' among them
    # The whole commands (a subprocess each) include imports and the model load: slower than answering.
    for mode in ("predict", "run", *(["spark"] if SPARK else [])):
        assert 0 < results[mode]["whole_questions_per_s"] < results[mode]["questions_per_s"], mode
    if SPARK:
        assert results["spark"]["real_tokens"] == results["predict"]["real_tokens"]
        assert results["spark"]["partitions"] >= 1 and results["spark"]["startup_seconds"] > 0
    # The host mode runs predict's batches with an instant forward, and splits its time by stage.
    host = results["host"]
    assert host["padded_tokens"] == results["predict"]["padded_tokens"]
    stages = host["host_stages_us_per_row"]
    assert {"read", "validate", "tokenize and windows", "collate", "decode"} <= set(stages)
    assert sum(stages.values()) == pytest.approx(host["host_us_per_row"])
    assert host["tokenizer_distinct_us_per_row"] > 0 and host["tokenizer_pairs_us_per_row"] > 0
    assert host["host_gc_us_per_row"] >= 0 and host["host_gc_full_collections"] >= 0
    table = capsys.readouterr().out
    assert "whole q/s" in table and "bound: fastest at" in table
    assert "us/row with an instant forward" in table and "garbage collection" in table


@pytest.mark.skipif(not SPARK, reason="needs pyspark and a Java runtime")
def test_bench_spark_cluster_spreads_one_row_group_over_the_cluster(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The spark-cluster mode starts a standalone cluster of one-core workers (one per core) and stops
    it; a one-row-group input is answered in units on every executor, as predict answers it."""
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(_squad(8)))
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--n", "8"]
    assert main([*argv, "--modes", "predict,spark-cluster", "--json", str(out)]) == 0
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    cluster = results["spark-cluster"]
    assert cluster["real_tokens"] == results["predict"]["real_tokens"]
    assert cluster["partitions"] >= 2 and cluster["executors"] >= 2  # one worker per core, here 2
    assert cluster["cluster_start_seconds"] > 0 and cluster["whole_questions_per_s"] > 0
    assert "executors; the cluster's start" in capsys.readouterr().out


def test_bench_predict_with_workers_times_the_answering(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--workers` runs predict in worker processes and times it from every worker loaded; `--repeat`
    answers the questions again with fresh ids (the bound repeats them too)."""
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(_squad(4)))
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--n", "4", "--repeat", "3"]
    assert main([*argv, "--workers", "2", "--modes", "bound,predict", "--json", str(out)]) == 0
    results = {r["mode"]: r for r in json.loads(out.read_text())["results"]}
    predict, bound = results["predict"], results["bound"]
    assert predict["questions"] == bound["questions"] == 12
    assert predict["real_tokens"] == bound["real_tokens"]  # the same windows, split over two workers
    assert predict["workers"] == 2 and predict["worker_models"] == "per_worker"
    # Spawned workers import torch and load a model before answering: start-up is outside the figure,
    # and so is the workers' exit.
    assert predict["startup_seconds"] > 0.2
    assert 0 < predict["seconds"] < predict["whole_seconds"] - predict["startup_seconds"]
    assert "predict: 2 workers (per_worker), start-up" in capsys.readouterr().out


def test_bench_host_with_workers_runs_the_rows_in_processes_at_once(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--modes host --workers 2` adds the figures of two instant-forward processes over halves of the
    rows beside the one-process figures, which keep their keys."""
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(_squad(5)))
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--n", "5", "--repeat", "2"]
    assert main([*argv, "--workers", "2", "--modes", "host", "--json", str(out)]) == 0
    (host,) = json.loads(out.read_text())["results"]
    assert host["questions"] == 10 and host["host_us_per_row"] > 0 and host["tokenizer_pairs_us_per_row"] > 0
    assert sum(host["host_stages_us_per_row"].values()) == pytest.approx(host["host_us_per_row"])
    assert host["host_workers"] == 2 and host["host_workers_rows"] == 10  # every row, split in two
    assert host["host_workers_threads"] >= 1
    assert host["host_workers_rows_per_s"] == pytest.approx(10 / host["host_workers_seconds"])
    assert host["host_workers_scaling"] == pytest.approx(
        host["host_workers_rows_per_s"] / host["questions_per_s"]
    )
    assert 0 < host["host_workers_us_per_row"] <= host["host_workers_us_per_row_max"]
    # Spawned processes import torch before they are ready: their start is outside the timed answering.
    assert host["host_workers_startup_seconds"] > host["host_workers_seconds"]
    assert "host, 2 processes at once (" in capsys.readouterr().out


def test_bench_host_workers_raise_a_workers_error(tmp_path: Path, tiny_model: Any) -> None:
    """A host worker's own error reaches the bench as it is, not as a hang or a silent death."""
    from docqa.bench_host import InstantRunner, bench_host_workers
    from qa_core.config import InputConfig, QAConfig
    from qa_core.errors import InputError

    config = QAConfig()
    config = dataclasses.replace(config, input=InputConfig(question_column="no_such_column"))
    rows = [{"id": f"q{i}", "question": "what?", "context": "the river"} for i in range(2)]
    with pytest.raises(InputError, match="no_such_column"):
        bench_host_workers(InstantRunner.over(tiny_model), config, rows, tmp_path, 2)


def test_bench_rounds_take_each_rounds_ratios_against_its_own_bound(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(_squad(4)))
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--n", "4", "--modes", "bound,predict"]
    assert main([*argv, "--rounds", "2", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["meta"]["rounds"] == 2
    predict = {r["mode"]: r for r in document["results"]}["predict"]
    assert len(predict["rounds"]) == 2
    ratios = [r["ratio_to_bound"] for r in predict["rounds"]]
    assert predict["ratio_to_bound"] == pytest.approx(sum(ratios) / 2)  # the median of two
    assert predict["questions_per_s"] in [r["questions_per_s"] for r in predict["rounds"]]
    table = capsys.readouterr().out
    assert "2 rounds: each mode's median round" in table and "predict per round: " in table


def _raw(mode: str, seconds: float, whole: float | None = None) -> dict[str, Any]:
    """A mode's figures as a child process reports them: 10 questions, 100 real of 125 padded tokens."""
    figures: dict[str, Any] = {"mode": mode, "questions": 10, "seconds": seconds, "peak_rss_mb": seconds}
    figures.update(real_tokens=100, padded_tokens=125)
    return figures if whole is None else {**figures, "whole_seconds": whole}


def test_combine_rounds_keeps_the_median_round_and_the_median_of_same_round_ratios() -> None:
    # The machine slows down in round 2: predict's own median round (1.1 s) sits beside a slow bound,
    # so its ratio to the median bound (1.0 s) would be 0.91; the same-round ratios are 0.8, 0.909, 1.0.
    rounds = [
        summarize([_raw("bound", 1.0), _raw("predict", 1.25, whole=2.0)]),
        summarize([_raw("bound", 2.0), _raw("predict", 2.2, whole=4.0)]),
        summarize([_raw("bound", 0.5), _raw("predict", 0.5, whole=1.0)]),
    ]
    bound, predict = combine_rounds(rounds)
    assert bound["seconds"] == 1.0 and bound["ratio_to_bound"] == 1.0
    assert predict["seconds"] == 1.25 and predict["questions_per_s"] == 8.0  # its median round's own
    assert predict["ratio_to_bound"] == pytest.approx(1.0 / 1.1)
    assert predict["whole_ratio_to_bound"] == 0.5 and predict["whole_questions_per_s"] == 5.0
    assert predict["peak_rss_mb"] == 2.2  # the largest of the rounds
    assert [r["ratio_to_bound"] for r in predict["rounds"]] == pytest.approx([0.8, 1.0 / 1.1, 1.0])
    assert "predict per round: 8.00 q/s (0.80x, whole 0.50x); 4.55 q/s (0.91x, whole 0.50x)" in format_table(
        [bound, predict]
    )
    assert combine_rounds(rounds[:1]) == rounds[0]  # one round: as it is


@pytest.mark.parametrize(
    "bad",
    [
        ["--workers", "0"],
        ["--repeat", "0"],
        ["--n", "0"],
        ["--rounds", "0"],
        ["--context-paragraphs", "0"],
        ["--workers", "2", "--modes", "bound"],
        ["--workers", "2", "--modes", "seed,run"],
    ],
)
def test_bench_rejects_bad_arguments(tiny_model_dir: Path, bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_model_dir), *bad])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_on_cuda_without_a_gpu_fails_before_any_mode_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "bench.json"
    with pytest.raises(ModelLoadError, match="torch sees no CUDA device"):
        main(["--model", str(tiny_model_dir), "--device", "cuda", "--n", "2", "--json", str(out)])
    assert not out.exists()


def test_long_contexts_put_the_questions_paragraph_first_then_the_next_ones(tmp_path: Path) -> None:
    squad = _squad(3)
    squad["data"].append(
        {
            "title": "U",
            "paragraphs": [
                dict(
                    squad["data"][0]["paragraphs"][0],
                    qas=[
                        {
                            "id": "u0",
                            "question": "who?",
                            "answers": [{"text": "the river", "answer_start": 0}],
                        }
                    ],
                )
            ],
        }
    )
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    table = squad_to_table(load_squad(str(path)))
    paragraphs = [p["context"] for p in squad["data"][0]["paragraphs"]]
    joined = long_contexts(table, 2).column("context").to_pylist()
    assert joined[:3] == [
        paragraphs[0] + "\n\n" + paragraphs[1],
        paragraphs[1] + "\n\n" + paragraphs[2],
        paragraphs[2] + "\n\n" + paragraphs[0],  # wraps round within the article
    ]
    assert joined[3] == paragraphs[0]  # a one-paragraph article keeps its paragraph
    for row, context in zip(table.to_pylist(), joined, strict=True):
        answer = row["answers"][0]
        start = answer["answer_start"]
        assert context[start : start + len(answer["text"])] == answer["text"]
