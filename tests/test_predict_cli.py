"""`docqa predict` end to end: Parquet in, the output layout out, job-level errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from docqa.cli import main
from tests.conftest import write_parquet

ROWS = [
    {"id": "a", "question": "what city?", "context": "the city of 東京 is north of the river", "title": "t1"},
    {"id": "b", "question": "which team?", "context": "the team won the war \r\n in 1999", "title": "t2"},
    {"id": "a", "question": "what city?", "context": "a different context with a church", "title": "t3"},
    {"id": "c", "question": "", "context": "the city", "title": "t4"},
    {"id": None, "question": "what?", "context": "the city", "title": "t5"},
]


def run_predict(tmp_path: Path, model_dir: Path, *extra: str) -> tuple[int, Path]:
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--input",
            str(source),
            "--output",
            str(out),
            "--model",
            str(model_dir),
            "--no-progress",
            *extra,
        ]
    )
    return code, out


def test_predict_writes_the_layout(tmp_path: Path, tiny_model_dir: Path) -> None:
    code, out = run_predict(
        tmp_path, tiny_model_dir, "--set", "decode.top_k=3", "--set", "input.passthrough_columns=[title]"
    )
    assert code == 0
    assert (out / "COMPLETED").exists()
    answers = pq.read_table(out / "answers")
    rejections = pq.read_table(out / "rejections")
    assert answers.schema.names == [
        "id",
        "answer",
        "start",
        "end",
        "score",
        "logit_score",
        "no_answer",
        "null_score_diff",
        "top_k",
        "title",
    ]
    assert answers.schema.field("start").type == pa.int64()
    assert answers.num_rows == 3 and rejections.num_rows == 2
    for row in answers.to_pylist():
        context = next(r["context"] for r in ROWS if r["title"] == row["title"])
        assert row["answer"] == context[row["start"] : row["end"]]
        assert 0.0 <= row["score"] <= 1.0 and len(row["top_k"]) <= 3
    assert sorted(rejections.column("reason").to_pylist()) == ["EMPTY_QUESTION", "MISSING_ID"]
    assert {"id", "reason", "detail", "question", "context", "title"} <= set(rejections.schema.names)
    info = json.loads((out / "_run.json").read_text())
    assert info["counts"]["rows_read"] == 5 == info["counts"]["answered"] + info["counts"]["rejected"]
    assert info["config"]["decode"]["top_k"] == 3 and len(info["config_hash"]) == 16
    assert info["model"]["revision"].startswith("sha256:")
    # The libraries that answered, as installed (torch with its build label).
    packages = info["environment"]["packages"]
    assert set(packages) == {"torch", "transformers", "tokenizers", "apache-beam", "pyarrow", "pyspark"}
    assert packages["torch"] == torch.__version__ and packages["pyarrow"] == pa.__version__
    assert packages["apache-beam"] == metadata.version("apache-beam")


def test_version_names_the_libraries_that_answer(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    first, libraries = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("docqa ") and f"(Python {sys.version.split()[0]})" in first
    assert f"torch {torch.__version__}" in libraries and f"pyarrow {pa.__version__}" in libraries
    for name in ("transformers", "tokenizers", "apache-beam", "pyspark"):
        assert f"{name} {metadata.version(name)}" in libraries


def test_timings_split_start_up_from_answering(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_run.json` gives start-up (up to a loaded model) and the answering after it, within the wall."""
    import qa_core.jobs.predict
    from qa_core.io.write import OutputWriter

    real_load, real_write = qa_core.jobs.predict.load_runner, OutputWriter.write

    def slow_load(*args: object) -> object:
        time.sleep(0.3)
        return real_load(*args)  # type: ignore[arg-type]

    def slow_write(self: OutputWriter, result: object) -> None:
        time.sleep(0.2)
        real_write(self, result)  # type: ignore[arg-type]

    monkeypatch.setattr(qa_core.jobs.predict, "load_runner", slow_load)
    monkeypatch.setattr(OutputWriter, "write", slow_write)
    code, out = run_predict(tmp_path, tiny_model_dir, "--no-report")
    assert code == 0
    timings = json.loads((out / "_run.json").read_text())["timings"]
    assert 0.3 <= timings["startup_seconds"] < 0.3 + 0.9  # without the 5 rows' 1.0 s of writes
    assert timings["answer_seconds"] >= 1.0  # one write per row: 3 answers, 2 rejections
    assert timings["startup_seconds"] + timings["answer_seconds"] <= timings["wall_seconds"] + 0.002
    # Both are rounded to the millisecond.
    assert timings["answer_rows_per_second"] == pytest.approx(5 / timings["answer_seconds"], rel=0.01)
    assert timings["rows_per_second"] < timings["answer_rows_per_second"]


def test_existing_output_needs_overwrite(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_predict(tmp_path, tiny_model_dir)[0] == 0
    code, out = run_predict(tmp_path, tiny_model_dir)
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert run_predict(tmp_path, tiny_model_dir, "--overwrite")[0] == 0
    assert (out / "COMPLETED").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/model"], "does not exist"),
        (["--set", "input.question_column=query"], "has no column"),
        (["--set", "runtime.device=cuda"], "GPU"),
    ],
)
def test_job_errors_fail_fast(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    pytest.importorskip("torch")
    import torch

    if "cuda" in args[-1] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--input",
            str(source),
            "--output",
            str(out),
            "--model",
            str(tiny_model_dir),
            "--no-progress",
            *args,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (out / "COMPLETED").exists()


def test_pickle_checkpoint_refused(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    code, _ = run_predict(tmp_path, pickled)
    assert code == 2 and "allow_pickle" in capsys.readouterr().err


def test_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["predict", "--input", str(tmp_path / "nope*.parquet"), "--output", str(tmp_path / "o")])
    assert code == 2 and "no input Parquet files" in capsys.readouterr().err


def test_python_m_docqa_exits_with_the_commands_code(tmp_path: Path) -> None:
    """`python -m docqa` (and the console script) run `console_main`: `main`'s exit code, its message."""
    missing = str(tmp_path / "nope*.parquet")
    child = subprocess.run(
        [sys.executable, "-m", "docqa", "predict", "--input", missing, "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 2 and "no input Parquet files" in child.stderr


def test_convert_then_eval_round_trip(tmp_path: Path, tiny_model_dir: Path) -> None:
    squad = {
        "version": "1.1",
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "the river and the church",
                        "qas": [
                            {
                                "id": "x1",
                                "question": "what?",
                                "answers": [{"text": "the river", "answer_start": 0}],
                            },
                            {
                                "id": "x2",
                                "question": "which?",
                                "answers": [{"text": "church", "answer_start": 18}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    data = tmp_path / "squad.json"
    data.write_text(json.dumps(squad))
    table = tmp_path / "squad.parquet"
    assert main(["convert-squad", "--data", str(data), "--output", str(table)]) == 0
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--input",
                str(table),
                "--output",
                str(out),
                "--model",
                str(tiny_model_dir),
                "--no-progress",
            ]
        )
        == 0
    )
    scores = tmp_path / "scores.json"
    assert main(["eval", "--data", str(data), "--predictions", str(out), "--json", str(scores)]) == 0
    result = json.loads(scores.read_text())
    assert result["total"] == 2


FAKE_INFO = {
    "counts": {"rows_read": 0, "answered": 0, "rejected": 0, "rejected_by_reason": {}},
    "timings": {"wall_seconds": 0, "startup_seconds": 0, "answer_rows_per_second": 0, "rows_per_second": 0},
}


@pytest.mark.parametrize(("extra", "workers"), [([], 3), (["--workers", "2"], 2)])
def test_workers_flag_wins_over_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], workers: int
) -> None:
    import qa_core.jobs.predict

    seen: dict[str, object] = {}

    def fake_predict(config: object, *args: object, **kwargs: object) -> dict[str, object]:
        seen.update(config=config, **kwargs)
        return FAKE_INFO

    monkeypatch.setattr(qa_core.jobs.predict, "predict", fake_predict)
    argv = ["predict", "--input", "x", "--output", str(tmp_path / "o"), "--no-report"]
    assert main([*argv, "--set", "runtime.workers=3", *extra]) == 0
    assert seen["workers"] == workers == seen["config"].runtime.workers  # type: ignore[attr-defined]


def test_unknown_flags_are_errors_except_for_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["predict", "--input", "x", "--output", "o", "--runner", "DirectRunner"])
    assert (
        raised.value.code == 2 and "unrecognized arguments: --runner DirectRunner" in capsys.readouterr().err
    )
    import pipelines.run

    seen: list[list[str]] = []
    monkeypatch.setattr(pipelines.run, "run", lambda argv: seen.append(list(argv)) or FAKE_INFO)
    out = str(tmp_path / "o")
    argv = ["--debug", "run", "--input", "x", "--output", out, "--runner", "DirectRunner", "--no-report"]
    assert main(argv) == 0
    assert seen == [["--input", "x", "--output", out, "--runner", "DirectRunner", "--no-report"]]


@pytest.mark.parametrize("command", ["run", "bench", "train", "predict"])
def test_every_command_has_full_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: docqa {command}" in text and "--config" in text


def test_cli_start_up_imports_no_beam_torch_or_benchmark() -> None:
    code = (
        "import sys, docqa.cli\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'torch', 'transformers')"
        " or m == 'docqa.bench' or m == 'pipelines.run']\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only docqa's job errors become one line; anything else is a bug and propagates."""
    import qa_core.evaluation.squad

    def broken(*args: object) -> int:
        raise ValueError("a bug")

    monkeypatch.setattr(qa_core.evaluation.squad, "convert_squad", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["convert-squad", "--data", "x.json", "--output", "y.parquet"])


def test_missing_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.json")
    assert main(["convert-squad", "--data", missing, "--output", str(tmp_path / "o.parquet")]) == 2
    assert main(["eval", "--data", missing, "--predictions", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"docqa convert-squad: error: {missing}: SQuAD file does not exist",
        f"docqa eval: error: {missing}: SQuAD file does not exist",
    ]


def test_cut_questions_are_counted_and_said(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A question cut to fit a window is never silent: `_run.json`, the summary line and the report."""
    code, out = run_predict(tmp_path, tiny_model_dir, "--set", "featurize.max_question_len=2")
    assert code == 0
    counts = json.loads((out / "_run.json").read_text())["counts"]
    # "what city?" (x2) and "which team?" are 3 tokens: cut; "what?" has no id, "" is empty: rejected.
    assert counts["questions_cut"] == 3
    assert "3 questions cut to fit a window" in capsys.readouterr().out
    assert "questions cut to fit a window" in (out / "report.html").read_text()

    (tmp_path / "whole").mkdir()
    code, out = run_predict(tmp_path / "whole", tiny_model_dir)
    assert code == 0 and json.loads((out / "_run.json").read_text())["counts"]["questions_cut"] == 0
