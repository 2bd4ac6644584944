"""`docqa predict --workers`: row ranges, ranged reading, and N processes writing the same answers as one."""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from qa_core.config import InputConfig, load_config
from qa_core.engine.stats import EngineStats
from qa_core.errors import InputError, WorkerError
from qa_core.io.read import iter_rows, output_schemas
from qa_core.io.sources import TableSource
from qa_core.io.write import prepare_output
from qa_core.jobs import workers
from qa_core.jobs.parts import PartRange, row_ranges
from qa_core.runtime import heap
from qa_core.runtime.host_tuning import tuning_report
from tests.test_bad_files import ROWS, assert_job_error, corrupt_pages, docqa, good_file
from tests.test_predict_cli import ROWS as CLI_ROWS


@pytest.mark.parametrize(("rows", "workers"), [(0, 3), (1, 4), (7, 3), (10, 10), (11, 2), (1000, 7)])
def test_row_ranges_cover_the_rows_in_order(rows: int, workers: int) -> None:
    ranges = row_ranges(rows, workers)
    assert len(ranges) == max(1, min(workers, rows))
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1 and (rows == 0 or min(sizes) >= 1)


def test_iter_rows_range_matches_a_slice(tmp_path: Path) -> None:
    """Any [start, stop) over files of several row groups (and an empty file) is the slice of all rows."""
    files, first = [], 0
    for k, (rows, group_rows) in enumerate([(7, 3), (0, 5), (10, 4), (1, 1)]):
        table = pa.table(
            {
                "id": [str(first + i) for i in range(rows)],
                "question": ["q"] * rows,
                "context": ["c"] * rows,
            }
        )
        pq.write_table(table, tmp_path / f"f{k}.parquet", row_group_size=group_rows)
        files.append(str(tmp_path / f"f{k}.parquet"))
        first += rows
    every = [r["id"] for r in iter_rows(files, InputConfig(), batch_rows=2)]
    assert every == [str(i) for i in range(first)]
    for start in range(first + 2):
        for stop in [None, *range(first + 2)]:
            got = [r["id"] for r in iter_rows(files, InputConfig(), batch_rows=2, start=start, stop=stop)]
            assert got == every[start:stop], (start, stop)


def test_engine_stats_add_up() -> None:
    one = EngineStats(rows=3, answered=2, rejected=Counter(EMPTY_QUESTION=1), windows_per_row=Counter({1: 2}))
    two = EngineStats(
        rows=2,
        answered=1,
        rejected=Counter(EMPTY_QUESTION=1, MISSING_ID=1),
        windows_per_row=Counter({1: 1, 3: 1}),
        model_seconds=0.5,
    )
    one.add(two)
    assert (one.rows, one.answered, one.model_seconds) == (5, 3, 0.5)
    assert one.rejected == Counter(EMPTY_QUESTION=2, MISSING_ID=1)
    assert one.windows_per_row == Counter({1: 3, 3: 1})


def _predict(source: Path, out: Path, model_dir: Path, *extra: str) -> int:
    args = ["predict", "--input", str(source), "--output", str(out), "--model", str(model_dir)]
    return main([*args, "--no-progress", "--no-report", "--set", "input.passthrough_columns=[title]", *extra])


@pytest.mark.parametrize("worker_models", ["per_worker", "shared"])
def test_workers_write_what_one_process_writes(
    tmp_path: Path, tiny_model_dir: Path, worker_models: str
) -> None:
    """Three workers over two files (good and bad rows) give one process's tables, in input order, with
    a model each or all served by the device server."""
    source = tmp_path / "in"
    source.mkdir()
    rows = [dict(r, title=f"{r['title']}-{k}") for k in range(3) for r in CLI_ROWS]  # 15 rows, 6 rejected
    pq.write_table(pa.Table.from_pylist(rows[:8]), source / "a.parquet", row_group_size=3)
    pq.write_table(pa.Table.from_pylist(rows[8:]), source / "b.parquet")
    assert _predict(source, tmp_path / "one", tiny_model_dir) == 0
    shared = ["--set", f"runtime.worker_models={worker_models}"]
    assert _predict(source, tmp_path / "three", tiny_model_dir, "--workers", "3", *shared) == 0
    for table in ("answers", "rejections"):
        one = pq.read_table(tmp_path / "one" / table)
        three = pq.read_table(tmp_path / "three" / table)
        assert three.schema == one.schema
        assert three.to_pylist() == one.to_pylist(), table  # fp32 on a CPU: batch-independent
    assert sorted(p.name for p in (tmp_path / "three" / "answers").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert (tmp_path / "three" / "COMPLETED").exists()
    counts = json.loads((tmp_path / "three" / "_run.json").read_text())["counts"]
    expected = json.loads((tmp_path / "one" / "_run.json").read_text())["counts"]
    for key in ("rows_read", "answered", "rejected", "rejected_by_reason", "windows", "windows_per_row"):
        assert counts[key] == expected[key], key
    assert counts["rows_read"] == 15 and counts["rejected"] == 6
    model = json.loads((tmp_path / "three" / "_run.json").read_text())["model"]
    assert model == json.loads((tmp_path / "one" / "_run.json").read_text())["model"]
    timings = json.loads((tmp_path / "three" / "_run.json").read_text())["timings"]
    # Start-up lasts until every spawned process has imported torch and loaded its model (or tokenizer).
    assert timings["startup_seconds"] > 0.2
    # The workers' exit (after their last answer) is in the wall time only.
    assert 0 < timings["answer_seconds"] < timings["wall_seconds"] - timings["startup_seconds"]


@pytest.mark.parametrize("host_tuning", [True, False])
def test_a_worker_tunes_its_own_process_only_when_asked(
    tmp_path: Path, tiny_model_dir: Path, host_tuning: bool
) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(CLI_ROWS), source)
    config = load_config([], [f"model.name_or_path={tiny_model_dir}", "runtime.device=cpu"])
    table = TableSource.open(str(source), config.input)
    schemas = output_schemas(table.schema, config)
    output = str(tmp_path / "out")
    parent = tuning_report()  # None, unless an in-process command-line job of this session tuned it
    job = workers.WorkerJob(
        0,
        table,
        (PartRange(0, 0, len(CLI_ROWS)),),
        output,
        *schemas,
        threads=1,
        config_hash=config.config_hash(),
        host_tuning=host_tuning,
    )
    [result] = workers.run_workers(
        config, [job], lambda rows: None, lambda: prepare_output(output, overwrite=False)
    )
    assert result.stats.rows == len(CLI_ROWS) and result.stats.batches > 0
    if host_tuning:
        assert result.host_tuning is not None
        # Its CPU batches were trimmed; glibc's thresholds pinned unless this environment sets them.
        assert result.host_tuning["heap_trims"] == result.stats.batches
        assert result.host_tuning["onednn_caches"] == [
            name for name in heap.ONEDNN_CACHE_ENVS if name not in os.environ
        ]
    else:
        assert result.host_tuning is None
    assert tuning_report() == parent  # the parent (this process) stays as it was


def test_workers_fail_fast_on_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(CLI_ROWS), source)
    code = _predict(source, tmp_path / "out", Path("/nonexistent/model"), "--workers", "2")
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before the output was prepared


def test_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--input", "x", "--output", "y", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err


def test_a_failing_worker_fails_the_job_in_one_line(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Worker 1's range holds a corrupt row group: exit 2, the file named, no COMPLETED."""
    source = corrupt_pages(good_file(tmp_path / "pages.parquet"))  # 40 rows, row group 2 corrupt
    out = tmp_path / "out"
    code = docqa("predict", source, out, tiny_model_dir, "--workers", "2")
    assert_job_error(code, out, capsys, f"cannot read Parquet file {source}")


@pytest.mark.parametrize("worker_models", ["per_worker", "shared"])
def test_a_model_that_fails_to_load_leaves_the_previous_output(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], worker_models: str
) -> None:
    """The folder is only prepared once every worker (or the device server) has its model: an
    --overwrite that fails to load keeps the last complete output."""
    source = good_file(tmp_path / "in.parquet")
    out = tmp_path / "out"
    assert docqa("predict", source, out, tiny_model_dir) == 0
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")  # the tokenizer still loads: only the workers fail
    capsys.readouterr()
    shared = ("--set", f"runtime.worker_models={worker_models}")
    code = docqa("predict", source, out, broken, "--workers", "2", "--overwrite", *shared)
    err = capsys.readouterr().err
    assert code == 2 and "cannot load QA model" in err and "Traceback" not in err
    assert (out / "COMPLETED").exists() and pq.read_table(out / "answers").num_rows == len(ROWS)


class _Exited:
    """A stand-in for a worker process that has exited."""

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode


@pytest.mark.parametrize("exitcode", [-9, 0])
def test_a_worker_that_exits_without_a_word_is_an_error(
    monkeypatch: pytest.MonkeyPatch, exitcode: int
) -> None:
    """Killed (out of memory) or exited cleanly without its result: noticed after the grace period."""
    monkeypatch.setattr(workers, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(workers, "EXIT_GRACE_SECONDS", 0.2)
    messages: queue.Queue[tuple[str, int, object]] = queue.Queue()
    messages.put(("done", 0, "result of worker 0"))
    with pytest.raises(WorkerError, match=f"worker 1 exited with code {exitcode}"):
        workers._collect({0: _Exited(0), 1: _Exited(exitcode)}, {0, 1}, messages, "done", lambda rows: None)
    messages.put(("done", 0, "a"))
    messages.put(("done", 1, "b"))  # an exited worker's last message still in the pipe is not lost
    got = workers._collect({0: _Exited(0), 1: _Exited(0)}, {0, 1}, messages, "done", lambda rows: None)
    assert got == {0: "a", 1: "b"}


def test_a_device_server_that_exits_before_the_workers_are_done_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server sends no `done`, but it is watched: its exit fails the job instead of a hang."""
    monkeypatch.setattr(workers, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(workers, "EXIT_GRACE_SECONDS", 0.2)
    messages: queue.Queue[tuple[str, int, object]] = queue.Queue()
    processes = {workers.SERVER_PART: _Exited(-9), 0: _Exited(None)}  # type: ignore[arg-type]
    with pytest.raises(WorkerError, match="the device server exited with code -9"):
        workers._collect(processes, {0}, messages, "done", lambda rows: None)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir() for c in (task / "children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("signum", "worker_models"),
    [(signal.SIGTERM, "per_worker"), (signal.SIGKILL, "per_worker"), (signal.SIGKILL, "shared")],
)
def test_workers_stop_when_the_job_is_killed(
    tmp_path: Path, tiny_model_dir: Path, signum: int, worker_models: str
) -> None:
    """A scheduler's SIGTERM stops the workers through the parent; after a SIGKILL they (and the device
    server) notice alone."""
    source = tmp_path / "in.parquet"
    # 200,000 rows: about 20 s of work for each worker, far beyond the 6 s they get to notice the kill.
    pq.write_table(pa.Table.from_pylist(ROWS * 5000), source)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    shared = ["--set", f"runtime.worker_models={worker_models}"]
    job = subprocess.Popen(
        [sys.executable, "-m", "docqa", *argv, "--no-progress", "--workers", "2", *shared],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (out / "answers").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the folder is prepared once both workers have loaded the model
    spawned = _children(job.pid)
    expected = 3 if worker_models == "shared" else 2
    assert (out / "answers").exists() and len(spawned) >= expected, "the workers never started"
    assert job.poll() is None, "the job finished before it could be killed"
    job.send_signal(signum)
    job.wait(timeout=30)
    deadline = time.monotonic() + 6
    while any(_alive(p) for p in spawned) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in spawned), "a worker outlived the job"
    assert not (out / "COMPLETED").exists()


def _alive(pid: int) -> bool:
    """Running (a zombie left for init to reap counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_iter_rows_skips_files_before_the_range_unopened_when_their_rows_are_known(tmp_path: Path) -> None:
    """With the plan's row counts a range deep in the input opens no earlier file (a missing one here)."""
    later = tmp_path / "later.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "question": ["q"] * 3, "context": ["c"] * 3}), later)
    files = [str(tmp_path / "gone.parquet"), str(later)]
    rows = list(iter_rows(files, InputConfig(), start=5, stop=7, file_rows=[4, 3]))
    assert [r["id"] for r in rows] == ["b", "c"]
    with pytest.raises(InputError, match=r"gone\.parquet"):  # without the counts the first file is opened
        list(iter_rows(files, InputConfig(), start=5, stop=7))
