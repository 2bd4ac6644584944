"""`docqa run`'s units: the splittable unit reader, every worker on a one-row-group file, kill and resume.

* `ReadUnit` reads exactly rows `[start, stop)` of the input (a one-row-group file cut into units, units
  that cross file boundaries), and a split of its restriction (`OffsetRestrictionTracker.try_split`, what
  a runner with dynamic work rebalancing does to a straggler) neither loses nor repeats a row.
* A 2,000-row file written as ONE row group, on the FnApiRunner with two SDK worker processes
  (`--direct_running_mode=multi_processing --direct_num_workers=2`): both processes answer rows (Beam
  counters per worker process, `_run.json` `beam.rows_per_worker`, named `host:pid`; the pids are not
  the launcher's), and the output equals `docqa predict`'s on the same input and config.
* The launcher (`python -m pipelines.run`, in its own process group) is SIGKILLed once some part files
  exist, then rerun with `--resume`: the output rows equal an uninterrupted run's and `_run.json` says
  parts were reused; on the FnApiRunner and on the portable runner with an EXTERNAL worker pool.

The model is the tiny random BERT of `tests/conftest.py` (meaningless, deterministic answers).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from docqa.cli import main
from pipelines.io import ReadUnit, UnitRows
from pipelines.runners import local_runner
from qa_core.config import InputConfig
from qa_core.io.read import file_row_counts, read_input_schema
from qa_core.io.sources import TableSource
from qa_core.jobs.parts import COUNTS_KEY, PART_KEY, PartRange, plan_units
from tests.conftest import SHARED_SQUAD
from tests.worker_pools import WorkerPool, signal_group, start_pools, subprocess_env

SQUAD_DEV = SHARED_SQUAD / "dev-v1.1.json.zip"
COLUMNS = ["id", "title", "question", "context"]
SCORE_TOLERANCE = 1e-4
JOB_TIMEOUT_S = 240.0
WORDS = ["the", "river", "city", "church", "school", "team", "music", "film", "war", "state", "north"]


def rows_of(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic question rows, every 50th with a blank question (a rejection)."""
    rows = []
    for i in range(count):
        words = [WORDS[(i * 7 + k * (seed + 3)) % len(WORDS)] for k in range(20 + i % 60)]
        question = "  " if i % 50 == 7 else f"which {WORDS[i % len(WORDS)]}?"
        rows.append({"id": f"r{i}", "title": f"t{i % 9}", "question": question, "context": " ".join(words)})
    return rows


def table_source(files: list[Path]) -> TableSource:
    """The one-table source of `files`, in order (what the launcher plans and sends as a side input)."""
    names = [str(f) for f in files]
    config = InputConfig()
    return TableSource(tuple(names), tuple(file_row_counts(names)), read_input_schema(names, config), config)


def read_unit(files: list[Path], unit: PartRange) -> list[tuple[int, Any]]:
    """`ReadUnit` of one unit, in this process, with a tracker over its whole range: (position, id)."""
    provider = UnitRows()
    tracker = provider.create_tracker(provider.initial_restriction(unit))
    return [(position, row["id"]) for position, row in ReadUnit().process(unit, table_source(files), tracker)]


def test_read_unit_cuts_a_one_row_group_file_into_units(tmp_path: Path) -> None:
    source = tmp_path / "one_group.parquet"
    rows = rows_of(50)
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=len(rows))
    assert pq.ParquetFile(source).metadata.num_row_groups == 1
    units = plan_units(len(rows), 2, 10)
    assert len(units) == 8 and all(0 < u.rows <= 10 for u in units)  # 4 core ranges of 12-13, cut at 10
    with BeamTestPipeline(runner=local_runner(PipelineOptions())) as p:
        read = (
            p
            | beam.Create(units)
            | beam.Reshuffle()
            | beam.ParDo(
                ReadUnit(), beam.pvalue.AsSingleton(p | "Source" >> beam.Create([table_source([source])]))
            )
            | beam.Map(lambda item: (item[0], item[1]["id"], item[1]["question"]))
        )
        assert_that(read, equal_to([(i, r["id"], r["question"]) for i, r in enumerate(rows)]))


def test_read_unit_ranges_cross_file_boundaries(tmp_path: Path) -> None:
    """Files of 7 (row groups of 3), 0 and 12 rows: every range is the slice of all rows, in order."""
    rows = rows_of(19)
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"]
    pq.write_table(pa.Table.from_pylist(rows[:7]), files[0], row_group_size=3)
    pq.write_table(pa.Table.from_pylist(rows[:0], schema=pa.Table.from_pylist(rows).schema), files[1])
    pq.write_table(pa.Table.from_pylist(rows[7:]), files[2], row_group_size=5)
    for start, stop in [(0, 19), (5, 9), (6, 8), (7, 7), (2, 3), (12, 19), (0, 7)]:
        got = read_unit(files, PartRange(0, start, stop))
        assert got == [(i, rows[i]["id"]) for i in range(start, stop)], (start, stop)


@pytest.mark.parametrize("claimed", [0, 1, 5, 12, 19])
@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9])
def test_a_split_unit_loses_and_repeats_no_row(tmp_path: Path, claimed: int, fraction: float) -> None:
    """The split a runner makes of a straggler: part way through, the rest handed to another reader."""
    source = tmp_path / "in.parquet"
    rows = rows_of(40)
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=40)
    unit = PartRange(3, 10, 30)
    provider = UnitRows()
    restriction = provider.initial_restriction(unit)
    assert list(provider.split(unit, restriction)) == [restriction]  # no initial split: units are sized
    assert provider.restriction_size(unit, restriction) == 20
    tracker = provider.create_tracker(restriction)
    fn, table = ReadUnit(), table_source([source])
    reading: Iterator[tuple[int, dict[str, Any]]] = fn.process(unit, table, tracker)
    first = [next(reading)[0] for _ in range(claimed)]
    split = tracker.try_split(fraction)
    first += [position for position, _ in reading]
    tracker.check_done()
    rest: list[int] = []
    if split is not None:
        primary, residual = split
        assert primary.stop == residual.start and residual.stop == 30
        rest_tracker = provider.create_tracker(residual)
        rest = [position for position, _ in fn.process(unit, table, rest_tracker)]
        rest_tracker.check_done()
    assert sorted(first + rest) == list(range(10, 30)), (first, rest)
    assert len(set(first) & set(rest)) == 0


def settings(model_dir: Path, *extra: str) -> list[str]:
    items = [f"model.name_or_path={model_dir}", "runtime.device=cpu", "input.passthrough_columns=[title]"]
    items += ["batch.max_batch_windows=16", "batch.max_batch_tokens=4096", *extra]
    return [arg for item in items for arg in ("--set", item)]


def output_rows(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Answers and rejections in part-file order (input order)."""
    return pq.read_table(out / "answers").to_pylist(), pq.read_table(out / "rejections").to_pylist()


def assert_same_rows(got: Path, expected: Path) -> None:
    """Ids, answer text, spans and rejections equal, in order; scores within `SCORE_TOLERANCE`."""
    (answers, rejected), (want_answers, want_rejected) = output_rows(got), output_rows(expected)
    assert [(r["id"], r["answer"], r["start"], r["end"], r["title"]) for r in answers] == [
        (r["id"], r["answer"], r["start"], r["end"], r["title"]) for r in want_answers
    ]
    for row, want in zip(answers, want_answers, strict=True):
        assert math.isclose(row["score"], want["score"], rel_tol=0, abs_tol=SCORE_TOLERANCE), row["id"]
    assert [(r["id"], r["reason"]) for r in rejected] == [(r["id"], r["reason"]) for r in want_rejected]


@pytest.fixture(scope="module")
def one_group_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 rows as ONE row group: SQuAD v1.1 dev questions when the shared data is there, else synthetic."""
    path = tmp_path_factory.mktemp("one_group") / "questions.parquet"
    if SQUAD_DEV.is_file():
        from qa_core.evaluation.squad import load_squad, squad_to_table

        table = squad_to_table(load_squad(str(SQUAD_DEV))).select(COLUMNS).slice(0, 2000)
    else:
        table = pa.Table.from_pylist(rows_of(2000))
    pq.write_table(table, path, row_group_size=table.num_rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1 and table.num_rows == 2000
    return path


def test_both_sdk_workers_answer_a_one_row_group_file_as_predict_does(
    one_group_input: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    argv = ["--input", str(one_group_input), "--no-progress", "--no-report", *settings(tiny_model_dir)]
    assert main(["predict", *argv, "--output", str(tmp_path / "predict")]) == 0
    beam_args = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    assert main(["run", *argv, "--output", str(tmp_path / "run"), *beam_args]) == 0

    info = json.loads((tmp_path / "run" / "_run.json").read_text())
    assert info["beam"]["plan"] == {"cores": 2, "task_rows": 2000, "units": 4}
    per_worker = info["beam"]["rows_per_worker"]
    print("rows per worker:", per_worker)  # the measured spread, shown with -s
    assert len(per_worker) == 2 and all(rows > 0 for rows in per_worker.values()), per_worker
    assert sum(per_worker.values()) == 2000
    assert all(int(name.rsplit(":", 1)[1]) != os.getpid() for name in per_worker)  # SDK worker processes
    assert sorted(p.name for p in (tmp_path / "run" / "answers").iterdir()) == [
        f"part-{k:05d}.parquet" for k in range(4)
    ]
    footer = pq.read_metadata(tmp_path / "run" / "rejections" / "part-00002.parquet").metadata
    assert json.loads(footer[PART_KEY.encode()])["start"] == 1000
    assert json.loads(footer[COUNTS_KEY.encode()])["rows"] == 500
    assert_same_rows(tmp_path / "run", tmp_path / "predict")
    expected = json.loads((tmp_path / "predict" / "_run.json").read_text())["counts"]
    for key in ("rows_read", "answered", "rejected", "rejected_by_reason", "windows"):
        assert info["counts"][key] == expected[key], key


# --- kill and resume -------------------------------------------------------------------------------


def launch(
    source: Path, out: Path, model_dir: Path, *beam_args: str, resume: bool = False
) -> subprocess.Popen[str]:
    """`python -m pipelines.run` as a launcher subprocess in its own process group."""
    argv = [sys.executable, "-m", "pipelines.run", "--input", str(source), "--output", str(out)]
    argv += ["--no-progress", *settings(model_dir, "output.task_rows=10"), *beam_args]
    if resume:
        argv.append("--resume")
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=out.parent,
        env=subprocess_env(),
        start_new_session=True,  # its own process group: SIGKILL reaches whatever it started
    )


def finish(process: subprocess.Popen[str]) -> None:
    try:
        _, stderr = process.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"the launcher ran past {JOB_TIMEOUT_S} s: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-3000:]


def kill_once_parts_exist(process: subprocess.Popen[str], out: Path, parts: int = 3) -> int:
    """SIGKILLs the launcher's process group once `parts` answer part files exist; returns how many did."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        written = len(list((out / "answers").glob("part-*.parquet"))) if (out / "answers").is_dir() else 0
        if written >= parts:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            return written
        if process.poll() is not None:
            pytest.fail(f"the job ended (code {process.returncode}) before {parts} parts were written")
        time.sleep(0.005)
    signal_group(process.pid, signal.SIGKILL)
    pytest.fail(f"no {parts} part files after {JOB_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def resume_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("resume_input") / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows_of(600)), path, row_group_size=600)
    return path


@pytest.fixture(scope="module")
def uninterrupted(resume_input: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    finish(launch(resume_input, out, tiny_model_dir))
    info = json.loads((out / "_run.json").read_text())
    assert info["beam"]["plan"]["units"] == 60 and info["counts"]["reused_parts"] == 0
    # Every part was written in the bundle that answered its unit, as the units finished, none after
    # the grouping (a barrier, which would put every part at the end of the answering).
    metrics = info["counts"]["metrics"]
    assert metrics["parts_written"] == 60 and "rows_written_after_grouping" not in metrics
    return out


def kill_then_resume(source: Path, out: Path, model_dir: Path, beam_args: list[str]) -> dict[str, Any]:
    """Kills a run once parts exist, resumes it, returns the resumed run's `_run.json`."""
    written = kill_once_parts_exist(launch(source, out, model_dir, *beam_args), out)
    assert not (out / "COMPLETED").exists()
    finish(launch(source, out, model_dir, *beam_args, resume=True))
    info: dict[str, Any] = json.loads((out / "_run.json").read_text())
    print(f"killed with {written} parts written; resumed: {info['counts']}")
    return info


def test_a_killed_run_resumes_on_the_fn_api_runner(
    resume_input: Path, uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    info = kill_then_resume(resume_input, out, tiny_model_dir, [])
    counts = info["counts"]
    assert counts["parts"] == 60 and 0 < counts["reused_parts"] < 60
    assert counts["reused_rows"] == 10 * counts["reused_parts"]
    assert counts["metrics"]["rows_read"] == 600 - counts["reused_rows"]  # only the other units were read
    assert (out / "COMPLETED").exists()
    assert_same_rows(out, uninterrupted)


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    (pool,) = start_pools(1, tmp_path_factory.mktemp("pool"))
    try:
        yield pool
    finally:
        pool.stop()


def test_a_killed_run_resumes_on_an_external_worker_pool(
    resume_input: Path, uninterrupted: Path, tiny_model_dir: Path, tmp_path: Path, worker_pool: WorkerPool
) -> None:
    beam_args = [
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{worker_pool.port}",
    ]
    out = tmp_path / "out"
    info = kill_then_resume(resume_input, out, tiny_model_dir, beam_args)
    assert info["engine"] == "beam:PortableRunner"
    # The pool's SDK worker is not in the launcher's process group: it outlives the kill and goes on
    # writing the parts of the data it already holds (its owner token is still the folder's), so the
    # resume may find every part written and have nothing left to run.
    assert 0 < info["counts"]["reused_parts"] <= 60
    assert worker_pool.started_workers() >= 2  # the killed attempt's SDK worker and the resumed one's
    assert (out / "COMPLETED").exists()
    assert_same_rows(out, uninterrupted)
