"""`docqa spark` against a real Spark standalone cluster: a master and two workers as separate JVMs.

One cluster serves the module (`pipelines.spark_standalone`); every job is `python -m docqa spark` in a
subprocess, so that its driver can be killed. The input is 2,000 SQuAD dev rows in ONE Parquet file with
ONE row group (which Spark's own reader cannot split), answered by the tiny random model with
`output.task_rows=250`: eight units over two one-core executors. Every output must equal `docqa
predict`'s on the same input and config, with every row written exactly once, whether an executor is
killed, a task is stalled and copied by speculation, or the driver is killed and the job resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from qa_core.config import load_config
from qa_core.evaluation.squad import load_squad, squad_to_table
from qa_core.jobs.predict import predict
from tests.conftest import SHARED_SQUAD
from tests.test_resume import read_output

pytest.importorskip("pyspark", reason="docqa spark needs the [spark] extra")
if shutil.which("java") is None:
    pytest.skip("no Java runtime (apt-get install -y openjdk-17-jre-headless)", allow_module_level=True)
SQUAD_DEV = SHARED_SQUAD / "dev-v1.1.json.zip"
if not SQUAD_DEV.exists():
    pytest.skip("needs ../shared/data/squad", allow_module_level=True)

from pipelines.spark_standalone import StandaloneCluster, standalone_cluster  # noqa: E402
from tests.test_spark_two_tables import JOINS, PREDICT_PARTS, UNIT_ROWS, spark_argv  # noqa: E402
from tests.test_two_tables import run_info, two_table_argv, write_tables  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "questions.parquet"
ROWS = 2000
TASK_ROWS = 250


def _env(python: str = sys.executable) -> dict[str, str]:
    """The jobs' environment: this checkout first on the path, `python` as the executors' Python."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYSPARK_PYTHON": python,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    with standalone_cluster(
        tmp_path_factory.mktemp("cluster"), workers=2, cores=1, memory="2g", env=_env(), distinct_hosts=True
    ) as c:
        yield c


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = squad_to_table(load_squad(str(SQUAD_DEV))).select(["id", "question", "context"]).slice(0, ROWS)
    path = tmp_path_factory.mktemp("squad") / "dev2000.parquet"
    pq.write_table(table, path, row_group_size=ROWS)
    assert pq.read_metadata(path).num_row_groups == 1
    return path


@pytest.fixture(scope="module")
def reference(source: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`docqa predict` on the same input and config: what every cluster run must write."""
    output = tmp_path_factory.mktemp("predict") / "out"
    config = load_config([], [f"model.name_or_path={tiny_model_dir}", f"output.task_rows={TASK_ROWS}"])
    predict(config, str(source), str(output), progress=False, workers=1)
    return output


def _command(cluster: StandaloneCluster, source: Path, output: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "docqa", "spark", "--input", str(source), "--output", str(output),
        "--master", cluster.master_url, "--no-report", "--model", str(model),
        "--set", f"output.task_rows={TASK_ROWS}", *extra,
    ]  # fmt: skip


def _run(command: list[str], python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=_env(python), timeout=300, check=False)


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )


def _wait_for_parts(output: Path, job: subprocess.Popen[bytes], parts: int = 1, timeout: float = 180) -> None:
    """Until `parts` part files are in place (the job is mid-way), or fails if the job ended first."""
    deadline = time.monotonic() + timeout
    while len(list((output / "answers").glob("part-*.parquet"))) < parts:
        assert job.poll() is None, f"the job ended (code {job.returncode}) before {parts} part files"
        assert time.monotonic() < deadline, "no part file in time"
        time.sleep(0.05)


def _finish(job: subprocess.Popen[bytes], log: Path) -> int:
    try:
        return job.wait(timeout=300)
    finally:
        _kill_group(job.pid)
        print(log.read_text(errors="replace")[-3000:])


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _rows(folder: Path, table: str) -> list[dict[str, Any]]:
    rows = pq.read_table(folder / table).to_pylist()
    return sorted(rows, key=lambda r: (str(r["id"]), str(r.get("answer")), r.get("start") or -1))


def _assert_same_as(output: Path, expected: Path) -> dict[str, Any]:
    """Same answers (ids, text, start, end; scores within 1e-4) and rejections, each row once, COMPLETED."""
    ours, theirs = _rows(output, "answers"), _rows(expected, "answers")
    ids = [r["id"] for r in ours]
    assert len(ids) == len(set(ids)), "a row was written twice"
    assert [r["id"] for r in theirs] == ids and ids
    for row, want in zip(ours, theirs, strict=True):
        assert (row["answer"], row["start"], row["end"]) == (want["answer"], want["start"], want["end"])
        assert row["score"] == pytest.approx(want["score"], abs=1e-4)
    rejections = [(r["id"], r["reason"]) for r in _rows(output, "rejections")]
    assert rejections == [(r["id"], r["reason"]) for r in _rows(expected, "rejections")]
    assert len(ids) + len(rejections) == ROWS
    assert (output / "COMPLETED").exists()
    info: dict[str, Any] = json.loads((output / "_run.json").read_text())
    assert info["counts"]["rows_read"] == ROWS
    return info


def _executor_pythons(executor: int) -> list[int]:
    """The Python workers of an executor JVM (children of its `pyspark.daemon`)."""
    daemons = [pid for pid in _children(executor) if b"pyspark.daemon" in _cmdline(pid)]
    return [pid for daemon in daemons for pid in _children(daemon)]


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent
            ):
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def clean_run(
    cluster: StandaloneCluster, source: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    output = tmp_path_factory.mktemp("clean") / "out"
    result = _run(_command(cluster, source, output, tiny_model_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def test_a_one_row_group_file_runs_as_units_on_both_executors_as_predict_answers(
    clean_run: Path, reference: Path, cluster: StandaloneCluster
) -> None:
    info = _assert_same_as(clean_run, reference)
    spark = info["spark"]
    print(json.dumps(spark, indent=1))
    assert spark["plan"] == {"cores": 2, "task_rows": TASK_ROWS, "units": ROWS // TASK_ROWS}
    assert info["counts"]["partitions"] == ROWS // TASK_ROWS
    assert len(spark["executors"]) == 2 and all(e["rows"] > 0 for e in spark["executors"].values())
    assert sum(e["rows"] for e in spark["executors"].values()) == ROWS
    assert all(sys.executable in python for python in spark["executor_python"].values())
    assert info["engine"] == f"spark:{cluster.master_url}"


def test_an_executor_killed_mid_job_is_replaced_and_every_row_is_written_once(
    cluster: StandaloneCluster, source: Path, tiny_model_dir: Path, reference: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    job = _start(_command(cluster, source, output, tiny_model_dir), tmp_path / "job.log")
    try:
        _wait_for_parts(output, job)
        victims = cluster.executor_pids()
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)
    finally:
        code = _finish(job, tmp_path / "job.log")
    assert code == 0
    info = _assert_same_as(output, reference)
    print(json.dumps(info["spark"], indent=1))


def test_a_stalled_task_is_copied_by_speculation_and_written_once(
    cluster: StandaloneCluster, source: Path, tiny_model_dir: Path, reference: Path, tmp_path: Path
) -> None:
    """One executor's Python workers are stopped (SIGSTOP) mid-task: the other runs a speculative copy.

    Spark copies a task only onto another host than the original's: the workers have their own loopback
    addresses (`distinct_hosts`).
    """
    speculation = [
        "--conf", "spark.speculation=true", "--conf", "spark.speculation.interval=200ms",
        "--conf", "spark.speculation.multiplier=1.5", "--conf", "spark.speculation.quantile=0.25",
        "--conf", "spark.speculation.minTaskRuntime=500ms",
    ]  # fmt: skip
    output = tmp_path / "out"
    job = _start(_command(cluster, source, output, tiny_model_dir, *speculation), tmp_path / "job.log")
    stopped: list[int] = []
    try:
        _wait_for_parts(output, job)
        executor = cluster.executor_pids()[0]
        stopped = _executor_pythons(executor)
        assert stopped, "no Python worker under the executor"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 90
        while job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        finished_while_stopped = job.poll() is not None
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):  # Spark killed the losing attempt's worker
                os.kill(pid, signal.SIGCONT)
        code = _finish(job, tmp_path / "job.log")
    assert code == 0
    assert finished_while_stopped, "the job waited for the stopped task: no speculative copy ran"
    time.sleep(2)  # a resumed loser would put its (identical) part in place now, if at all
    info = _assert_same_as(output, reference)
    print(json.dumps(info["spark"], indent=1))
    assert info["spark"]["retried_units"] >= 1


def test_a_rerun_with_overwrite_writes_the_same_rows(
    cluster: StandaloneCluster, clean_run: Path, source: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    before = {table: _rows(clean_run, table) for table in ("answers", "rejections")}
    copy = tmp_path / "first"
    shutil.copytree(clean_run, copy)
    result = _run(_command(cluster, source, clean_run, tiny_model_dir, "--overwrite"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {table: _rows(clean_run, table) for table in ("answers", "rejections")} == before
    _assert_same_as(clean_run, copy)


def test_a_killed_driver_leaves_no_application_and_resume_completes(
    cluster: StandaloneCluster,
    source: Path,
    tiny_model_dir: Path,
    clean_run: Path,
    tmp_path: Path,
) -> None:
    output = tmp_path / "out"
    job = _start(_command(cluster, source, output, tiny_model_dir), tmp_path / "job.log")
    try:
        _wait_for_parts(output, job)
        os.kill(job.pid, signal.SIGKILL)  # the driver's Python; its JVM ends when its stdin closes
        job.wait(timeout=30)
        deadline = time.monotonic() + 60
        while cluster.status().get("activeapps") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not cluster.status().get("activeapps"), "the killed driver's application lingers"
        left = [p for p in _group(job.pid)]
        assert not left, f"processes of the killed driver remain: {left}"
    finally:
        _finish(job, tmp_path / "job.log")
    assert not (output / "COMPLETED").exists()
    kept = len(list((output / "answers").glob("part-*.parquet")))
    result = _run(_command(cluster, source, output, tiny_model_dir, "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]
    info = _assert_same_as(output, clean_run)
    counts = info["counts"]
    print(kept, json.dumps(counts), json.dumps(info["spark"]))
    assert counts["reused_parts"] > 0 and counts["parts"] == counts["partitions"] == ROWS // TASK_ROWS


def _group(pgid: int, timeout: float = 20) -> list[int]:
    """The processes left in group `pgid` once they had `timeout` s to exit."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.getpgid(int(entry.name)) == pgid:
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        left.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def test_spark_submit_runs_the_job_against_the_cluster(
    cluster: StandaloneCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import pipelines.spark_job

    submit = Path(sys.executable).parent / "spark-submit"
    if not submit.exists():
        pytest.skip("pyspark's spark-submit is not beside this interpreter")
    command = [str(submit), "--master", cluster.master_url, "--conf", "spark.log.level=ERROR"]
    command += [pipelines.spark_job.__file__, "--input", str(SAMPLE), "--output", str(tmp_path / "out")]
    command += ["--model", str(tiny_model_dir)]
    result = _run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert info["engine"] == f"spark:{cluster.master_url}"
    assert info["counts"]["rows_read"] == pq.read_metadata(SAMPLE).num_rows
    assert (tmp_path / "out" / "COMPLETED").exists()


def test_an_executor_python_without_docqa_fails_before_any_output_with_one_line(
    cluster: StandaloneCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    python = "/usr/bin/python3"
    if not Path(python).exists():
        pytest.skip("no /usr/bin/python3")
    bare = subprocess.run([python, "-c", "import torch, pyarrow"], capture_output=True, check=False)
    if bare.returncode == 0:
        pytest.skip(f"{python} has docqa's dependencies")
    output = tmp_path / "out"
    result = _run(_command(cluster, SAMPLE, output, tiny_model_dir), python=python)
    errors = [line for line in result.stderr.splitlines() if line.startswith("docqa spark: error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "PYSPARK_PYTHON" in errors[0] and python in errors[0], errors[0]
    print(errors[0])
    assert not (output / "answers").exists()


@pytest.mark.parametrize("join", list(JOINS))
def test_two_tables_run_on_both_executors_with_either_join(
    join: str, cluster: StandaloneCluster, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The pairs' plan reaches separate executor JVMs as a broadcast, or the questions travel to their
    documents' units through the shuffle between them; the output is `docqa predict`'s either way."""
    docs, qs, _, _ = write_tables(tmp_path / "in")
    assert main(two_table_argv(docs, qs, tmp_path / "predict", tiny_model_dir, *PREDICT_PARTS)) == 0
    out = tmp_path / "spark"
    argv = spark_argv(docs, qs, out, tiny_model_dir, *UNIT_ROWS, *JOINS[join], master=cluster.master_url)
    result = _run([sys.executable, "-m", "docqa", *argv])
    assert result.returncode == 0, result.stderr[-3000:]
    for table, want in zip(read_output(out), read_output(tmp_path / "predict"), strict=True):
        assert table.equals(want)
    info = run_info(out)
    assert info["two_table"]["join"] == join and info["counts"]["documents_read"] == 30
    assert info["counts"]["contexts_tokenized"] == 30
    executors = info["spark"]["executors"]
    assert len(executors) == 2 and all(e["rows"] > 0 for e in executors.values())
