"""A job owns its output, and `docqa predict --resume` finishes a killed job as a clean run would have."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from docqa.cli import main
from qa_core.io.ownership import JOB_FILE
from qa_core.io.write import prepare_output
from tests.conftest import write_parquet

WORDS = ["river", "city", "bridge", "church", "team", "war", "north", "south", "town", "built"]


def many_rows(n: int) -> list[dict[str, Any]]:
    """`n` rows, some of them bad (rejections must survive a resume too)."""
    rows: list[dict[str, Any]] = []
    for i in range(n):
        context = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(12 + i % 40))
        question = "" if i % 97 == 5 else f"where is the {WORDS[i % len(WORDS)]} {i}?"
        rows.append({"id": f"q{i}", "question": question, "context": context})
    return rows


def predict_argv(source: Path, out: Path, model_dir: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--input",
        str(source),
        "--output",
        str(out),
        "--model",
        str(model_dir),
        "--no-progress",
        "--no-report",
        *extra,
    ]


def read_output(out: Path) -> tuple[pa.Table, pa.Table]:
    """Both tables, their part files read in name order (input order)."""
    tables = []
    for folder in ("answers", "rejections"):
        parts = sorted((out / folder).glob("*.parquet"))
        tables.append(pa.concat_tables([pq.read_table(p) for p in parts]))
    return tables[0], tables[1]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_parquet(tmp_path_factory.mktemp("resume_in") / "in.parquet", many_rows(4000))


def test_resume_after_sigkill_equals_a_clean_run(
    big_input: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Kill a predict part way (SIGKILL: no cleanup at all), resume it, and compare with a clean run."""
    settings = ["--set", "output.part_rows=200"]
    clean = tmp_path / "clean"
    assert main(predict_argv(big_input, clean, tiny_model_dir, *settings)) == 0

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "docqa", *predict_argv(big_input, killed, tiny_model_dir, *settings)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while len(list((killed / "rejections").glob("part-*.parquet"))) < 4:
            assert process.poll() is None, "the job finished before it could be killed: use more rows"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (killed / "COMPLETED").exists()

    assert main(predict_argv(big_input, killed, tiny_model_dir, *settings, "--resume")) == 0
    info = json.loads((killed / "_run.json").read_text())
    counts = info["counts"]
    assert counts["rows_read"] == 4000 and counts["answered"] + counts["rejected"] == 4000
    assert counts["parts"] == 20 and 4 <= counts["reused_parts"] < 20
    assert counts["reused_rows"] == 200 * counts["reused_parts"]
    clean_counts = json.loads((clean / "_run.json").read_text())["counts"]
    # The kept parts' counters come from their footers: the counts are a clean run's (timings aside), but
    # for the context cache's, which count this process's work: a context the killed attempt tokenized
    # for a kept part is tokenized again when a later part asks it.
    reused = ("reused_parts", "reused_rows", "model_seconds", "contexts_tokenized", "context_reuse_rate")
    assert {k: v for k, v in counts.items() if k not in reused} == {
        k: v for k, v in clean_counts.items() if k not in reused
    }
    for resumed_table, clean_table in zip(read_output(killed), read_output(clean), strict=True):
        assert resumed_table.equals(clean_table)  # same rows, same answers, same scores, same order
    assert not list(killed.rglob("_in-progress-*"))


def test_resume_refuses_another_job(
    big_input: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    small = write_parquet(tmp_path / "small.parquet", many_rows(30))
    assert main(predict_argv(small, out, tiny_model_dir, "--set", "output.part_rows=10")) == 0
    (out / "COMPLETED").unlink()  # as if killed before the end
    capsys.readouterr()
    before = sorted(p.name for p in (out / "answers").iterdir())

    for extra, what in [
        (["--set", "decode.top_k=2"], "another config"),
        (["--set", "output.part_rows=5"], "another config"),
    ]:
        argv = predict_argv(small, out, tiny_model_dir, "--set", "output.part_rows=10", *extra, "--resume")
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0] and "--overwrite" in err[0]
    other_input = write_parquet(tmp_path / "other.parquet", many_rows(31))
    assert (
        main(predict_argv(other_input, out, tiny_model_dir, "--set", "output.part_rows=10", "--resume")) == 2
    )
    assert "another input files" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "answers").iterdir()) == before  # a refused resume changes nothing

    both = predict_argv(small, out, tiny_model_dir, "--resume", "--overwrite")
    assert main(both) == 2 and "pass one" in capsys.readouterr().err


def test_resume_of_nothing_starts_afresh_and_of_a_finished_run_is_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_parquet(tmp_path / "small.parquet", many_rows(12))
    out = tmp_path / "out"
    assert main(predict_argv(small, out, tiny_model_dir, "--resume")) == 0
    assert json.loads((out / "_run.json").read_text())["counts"]["reused_rows"] == 0
    assert main(predict_argv(small, out, tiny_model_dir, "--resume")) == 2
    assert "COMPLETED" in capsys.readouterr().err


def test_a_torn_part_is_answered_again(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A part whose file is cut short, or whose footer names another range, is not kept."""
    small = write_parquet(tmp_path / "small.parquet", many_rows(40))
    out, clean = tmp_path / "out", tmp_path / "clean"
    settings = ["--set", "output.part_rows=10"]
    assert main(predict_argv(small, clean, tiny_model_dir, *settings)) == 0
    assert main(predict_argv(small, out, tiny_model_dir, *settings)) == 0
    (out / "COMPLETED").unlink()
    torn = out / "answers" / "part-00001.parquet"
    torn.write_bytes(torn.read_bytes()[:-20])  # no valid footer any more
    (out / "rejections" / "part-00003.parquet").unlink()  # one half of a pair
    assert main(predict_argv(small, out, tiny_model_dir, *settings, "--resume")) == 0
    counts = json.loads((out / "_run.json").read_text())["counts"]
    assert (counts["reused_parts"], counts["reused_rows"]) == (2, 20)
    for resumed_table, clean_table in zip(read_output(out), read_output(clean), strict=True):
        assert resumed_table.equals(clean_table)


def test_a_job_that_lost_its_output_to_another_stops(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two jobs with --overwrite on one folder: the later owns it; the earlier writes no part or COMPLETED."""
    from qa_core.jobs import parts

    small = write_parquet(tmp_path / "small.parquet", many_rows(30))
    out = tmp_path / "out"
    answer_parts = parts.answer_parts

    def a_second_job_starts(*args: Any, **kwargs: Any) -> None:
        prepare_output(str(out), overwrite=True, plan={"config_hash": "another job"})
        answer_parts(*args, **kwargs)

    monkeypatch.setattr("qa_core.jobs.predict.answer_parts", a_second_job_starts)
    assert main(predict_argv(small, out, tiny_model_dir, "--overwrite")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken over" in err[0]
    assert not (out / "COMPLETED").exists()
    assert not list((out / "answers").glob("*.parquet"))  # nothing mixed into the other job's folder
    assert json.loads((out / JOB_FILE).read_text())["config_hash"] == "another job"


def test_predict_checks_the_footers_before_completed(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stray part file (another writer) makes the footers disagree with the rows read: no COMPLETED."""
    from qa_core.jobs import parts

    small = write_parquet(tmp_path / "small.parquet", many_rows(30))
    out = tmp_path / "out"
    answer_parts = parts.answer_parts

    def a_stray_part(*args: Any, **kwargs: Any) -> None:
        answer_parts(*args, **kwargs)
        stray = pq.read_table(out / "answers" / "part-00000.parquet")
        pq.write_table(stray, out / "answers" / "part-00099.parquet")

    monkeypatch.setattr("qa_core.jobs.predict.answer_parts", a_stray_part)
    assert main(predict_argv(small, out, tiny_model_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rows read (30) != answers (58) + rejections (1)" in err[0]
    assert not (out / "COMPLETED").exists()


def test_completed_is_taken_back_when_the_folder_is_claimed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another job claiming the folder between the last ownership check and the marker: no COMPLETED."""
    from qa_core.errors import OutputError
    from qa_core.io import ownership
    from qa_core.io.write import mark_completed

    out = str(tmp_path / "out")
    token = prepare_output(out, overwrite=False)
    checks: list[str] = []

    def claimed_just_before_the_marker(output_dir: str, owner: str) -> None:
        checks.append(owner)
        if len(checks) == 3:  # after _run.json and before COMPLETED had passed their checks
            ownership.claim_output(output_dir, {"engine": "predict", "config_hash": "another job"})
        ownership.check_owner(output_dir, owner)

    monkeypatch.setattr("qa_core.io.write.check_owner", claimed_just_before_the_marker)
    with pytest.raises(OutputError, match="taken over"):
        mark_completed(out, {"counts": {}}, owner=token)
    assert len(checks) == 3 and not (tmp_path / "out" / "COMPLETED").exists()


def test_resume_with_workers(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Worker processes resume too: each answers only the missing parts of its range."""
    small = write_parquet(tmp_path / "small.parquet", many_rows(120))
    out, clean = tmp_path / "out", tmp_path / "clean"
    settings = ["--set", "output.part_rows=20", "--workers", "2"]
    assert main(predict_argv(small, clean, tiny_model_dir, *settings)) == 0
    assert main(predict_argv(small, out, tiny_model_dir, *settings)) == 0
    (out / "COMPLETED").unlink()
    for name in ("part-00001.parquet", "part-00004.parquet", "part-00005.parquet"):  # in both ranges
        (out / "answers" / name).unlink()
    assert main(predict_argv(small, out, tiny_model_dir, *settings, "--resume")) == 0
    counts = json.loads((out / "_run.json").read_text())["counts"]
    assert (counts["parts"], counts["reused_parts"], counts["reused_rows"]) == (6, 3, 60)
    for resumed_table, clean_table in zip(read_output(out), read_output(clean), strict=True):
        assert resumed_table.equals(clean_table)


def test_resume_refuses_a_batch_shape_tuned_in_between(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`docqa tune` between two attempts changes how the rest would be batched: refused, one line."""
    from qa_core.config import load_config
    from qa_core.runtime.loaders import describe_model
    from qa_core.runtime.shapes import shape_key, store_tuned

    monkeypatch.setenv("DOCQA_CACHE_DIR", str(tmp_path / "cache"))
    small = write_parquet(tmp_path / "small.parquet", many_rows(30))
    out = tmp_path / "out"
    assert main(predict_argv(small, out, tiny_model_dir, "--set", "output.part_rows=10")) == 0
    (out / "COMPLETED").unlink()
    capsys.readouterr()
    config = load_config([], [f"model.name_or_path={tiny_model_dir}", "output.part_rows=10"])
    key = shape_key(config, describe_model(config.model), torch.device("cpu"))
    store_tuned(key, {"max_batch_windows": 4, "max_batch_tokens": 1536})
    assert main(predict_argv(small, out, tiny_model_dir, "--set", "output.part_rows=10", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "batch shape" in err[0]
