"""`docqa run` on Beam's portable path with SDK workers in separate worker-pool processes, against predict.

A cluster (Flink, Spark, a Kubernetes job server) runs the Python SDK workers in "worker pool" processes
(`python -m apache_beam.runners.worker.worker_pool_main --service_port=PORT`) and reaches them through an
EXTERNAL environment. This test starts two such pools on loopback ports and runs the Beam job
(`python -m pipelines.run`, what `docqa run` calls) as a launcher subprocess with

    --runner=PortableRunner --job_endpoint=embed
    --environment_type=EXTERNAL --environment_config=localhost:PORT

What Beam 2.77 does there (read from `portable_runner.py`, `job_server.py`, `local_job_service.py`,
`fn_api_runner/worker_handlers.py` and `worker_pool_main.py`):

* `--job_endpoint=embed` starts Beam's `LocalJobServicer` in the launcher process; the job is run there by
  a `FnApiRunner` (`BeamJob._invoke_runner` -> `run_via_runner_api`), so the runner, its gRPC control /
  data / state / logging servers and the job's counters live in the launcher; `_run.json` names the
  runner the launcher built, `PortableRunner`.
* The EXTERNAL environment makes that runner call the pool's `StartWorker` for each worker it wants;
  the pool then starts `python -c "...SdkHarness(<control endpoint>, worker_id=...).run()"` as its own
  child process, with the `python` found first on the pool's PATH (hence the venv's bin directory first
  on PATH below; with no `python` there the job fails at once, with a `python` that lacks Beam the worker
  dies at import and the launcher hangs, with no timeout of Beam's: hence the timeouts here). The worker
  connects back to the launcher's control endpoint, runs every DoFn of the job (Read, Validate,
  Featurize, Bucket, Infer, Merge, Write) and exits when the job's control channel closes. The pool is
  never told to stop it (`ExternalWorkerHandler.stop_worker` is a no-op) and never waits on it: the
  finished worker stays a zombie child of the pool until the next one replaces it.
* One job runs on exactly one SDK worker: `run_via_runner_api` never reads `--direct_num_workers`, so the
  runner keeps its default of one worker per environment ("worker_0"), and the pipeline options give a
  pipeline one environment, so one endpoint (`--environment_config`; docqa's transforms all run in it).
  Two pools are therefore used by two jobs, each pointed at its own pool, run one after the other so
  that each pool's work can be attributed.

Two pools answering ONE job (issue 31) is not possible with Beam 2.78's own pieces, checked in its
source: `local_job_service_main` runs the same `LocalJobServicer`, so the same single worker;
`--sdk_worker_parallelism` is read by no Python runner (only Java job servers: Flink, Spark);
`FnApiRunner.run_pipeline` does read `--direct_num_workers` (a
`FnApiRunner(default_environment=<EXTERNAL>)` built by docqa's `local_runner` would ask for two workers),
but `WorkerHandlerManager.get_worker_handlers` keys its workers by environment id and every worker of an
environment gets that environment's one endpoint, so both would be started by the same pool; and the
Python SDK gives every transform the pipeline's one default environment, so a second endpoint would need
a second environment assigned to some transforms by rewriting the pipeline proto (a hack, and it would
split transforms, not rows, between pools). Spreading one job's workers over two pools needs a runner
that starts several workers per environment against several hosts (Flink or Spark with their Java job
servers, or a load balancer in front of the pools), none of which runs here. Within one pool's worker,
the rows of a one-row-group file are still spread over units (`tests/test_beam_units.py`), and two SDK
worker processes of the FnApiRunner answer them.

While a job runs, its pool must have a live SDK worker child
  process (seen in /proc) and log starting one, and the other pool must have neither.

Each job's output must equal `docqa predict` (`qa_core.jobs.predict.predict`, in-process) on the same
input and config: the same ids answered, the same answer text, start and end per id, scores within 1e-4,
the same rejections (id, reason), rows conserved, the same config hash, model revision and counts, with
`_run.json` and `COMPLETED` written. The input is the bundled sample (`samples/questions.parquet`, one
empty question), three bad rows made here (missing id, missing context, blank context) and about 300
questions of the SQuAD v1.1 dev set spread over its articles; without the shared SQuAD data the test is
skipped.

The model is the tiny random BERT of `tests/conftest.py`: the bundled model needs about 33 s for these
rows in predict alone on 2 CPU cores, so three runs of it would not fit the test's budget (about 40 s
here). The answers are meaningless but deterministic, which is what an engine comparison needs; the
bundled model's answers are covered by the other tests.

Not covered: concurrent jobs on the pools, a remote job server (Flink / Spark), Docker or PROCESS
environments, and workers that lack the launcher's files (here the pools run on the same machine, so the
launcher's model check passes; pipelines.run still treats EXTERNAL as "workers run elsewhere" and uses the
config's batch caps, which the test sets explicitly for both engines). Beam's gRPC servers bind every
interface (`[::]`); the test only ever addresses them as localhost. Linux only (/proc).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qa_core.config import load_config
from qa_core.jobs.predict import predict
from tests.conftest import SHARED_SQUAD
from tests.worker_pools import REPO, WorkerPool, children_of, start_pools, subprocess_env

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="the worker-pool checks read /proc (Linux)"
)

SAMPLE = REPO / "samples" / "questions.parquet"
SQUAD_DEV = SHARED_SQUAD / "dev-v1.1.json.zip"
COLUMNS = ["id", "title", "question", "context"]
SQUAD_STRIDE = 35  # every 35th dev question: 302 rows from all 48 articles
BAD_ROWS: list[dict[str, Any]] = [
    {"id": None, "title": "bad", "question": "Who?", "context": "Nobody at all."},
    {"id": "bad-no-context", "title": "bad", "question": "Who?", "context": None},
    {"id": "bad-blank-context", "title": "bad", "question": "Who?", "context": " \n\t "},
]
EXPECTED_REJECTIONS = Counter(
    {
        ("sample-17", "EMPTY_QUESTION"): 1,
        (None, "MISSING_ID"): 1,
        ("bad-no-context", "MISSING_CONTEXT"): 1,
        ("bad-blank-context", "EMPTY_CONTEXT"): 1,
    }
)
POOLS = 2
JOB_TIMEOUT_S = 180.0
WORKER_EXIT_TIMEOUT_S = 30.0
SCORE_TOLERANCE = 1e-4


def settings(model_dir: Path) -> list[str]:
    """The config of both engines, as `--set` items (explicit batch caps: no machine tuning applies)."""
    return [
        f"model.name_or_path={model_dir}",
        "runtime.device=cpu",
        "input.passthrough_columns=[title]",
        "batch.max_batch_windows=16",
        "batch.max_batch_tokens=4096",
    ]


@dataclass
class ChildWatch:
    """Records the child processes of each pool while a job runs (a thread polling /proc)."""

    pools: list[WorkerPool]
    seen: list[dict[int, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ChildWatch:
        self.seen = [{} for _ in self.pools]
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._record()  # and once more at the very end

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            self._record()

    def _record(self) -> None:
        for seen, pool in zip(self.seen, self.pools, strict=True):
            seen.update(children_of(pool.process.pid))


@pytest.fixture(scope="module")
def worker_pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[WorkerPool]]:
    pools = start_pools(POOLS, tmp_path_factory.mktemp("pools"))
    try:
        yield pools
    finally:
        for pool in pools:
            pool.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample questions, three bad rows and every 35th SQuAD v1.1 dev question, as one Parquet file."""
    if not SQUAD_DEV.is_file():
        pytest.skip(f"shared SQuAD data not found at {SQUAD_DEV}")
    from qa_core.evaluation.squad import load_squad, squad_to_table

    squad = squad_to_table(load_squad(str(SQUAD_DEV))).select(COLUMNS)
    squad = squad.take(list(range(0, squad.num_rows, SQUAD_STRIDE)))
    sample = pq.read_table(SAMPLE).select(COLUMNS)
    schema = pa.schema([(name, pa.string()) for name in COLUMNS])
    bad = pa.Table.from_pylist(BAD_ROWS, schema=schema)
    table = pa.concat_tables([t.cast(schema) for t in (sample, bad, squad)])
    path = tmp_path_factory.mktemp("portable_input") / "questions.parquet"
    pq.write_table(table, path, row_group_size=100)
    return path


@pytest.fixture(scope="module")
def predicted(
    source: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The input and `docqa predict`'s output folder for it."""
    out = tmp_path_factory.mktemp("portable_predict") / "out"
    config = load_config([], settings(tiny_model_dir))
    predict(config, str(source), str(out), progress=False, workers=1)
    return source, out


def answers_by_id(out: Path) -> dict[str, dict[str, Any]]:
    rows = pq.read_table(out / "answers").to_pylist()
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "answer ids repeat"
    return by_id


def rejections(out: Path) -> Counter[tuple[Any, str]]:
    return Counter((row["id"], row["reason"]) for row in pq.read_table(out / "rejections").to_pylist())


def run_portable_job(pool: WorkerPool, source: Path, out: Path, model_dir: Path) -> str:
    """Runs the Beam job against `pool` as a launcher subprocess; returns its stderr."""
    argv = [sys.executable, "-m", "pipelines.run", "--input", str(source), "--output", str(out)]
    argv += ["--no-progress", *(arg for item in settings(model_dir) for arg in ("--set", item))]
    argv += [
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{pool.port}",
    ]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=out.parent,
            env=subprocess_env(),
            timeout=JOB_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        pytest.fail(
            f"docqa run on the pool at port {pool.port} ran past {JOB_TIMEOUT_S} s\n"
            f"launcher: {stderr[-3000:]}\npool: {pool.log_text()[-3000:]}"
        )
    assert done.returncode == 0, f"launcher: {done.stderr[-3000:]}\npool: {pool.log_text()[-3000:]}"
    return done.stderr


def wait_for_no_workers(pool: WorkerPool) -> dict[int, str]:
    """Waits until the pool has no child left; returns the children still alive at the deadline."""
    deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
    while (left := children_of(pool.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.parametrize("serving", range(POOLS), ids=[f"pool{i}" for i in range(POOLS)])
def test_portable_run_on_an_external_worker_pool_matches_predict(
    serving: int,
    worker_pools: list[WorkerPool],
    predicted: tuple[Path, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    source, predict_out = predicted
    pool = worker_pools[serving]
    for p in worker_pools:  # an earlier job's worker has gone, and every pool is still up
        assert p.process.poll() is None, f"pool {p.port} exited: {p.log_text()[-2000:]}"
        assert not wait_for_no_workers(p)
    before = [p.started_workers() for p in worker_pools]
    out = tmp_path / "run"

    with ChildWatch(worker_pools) as watch:
        run_portable_job(pool, source, out, tiny_model_dir)

    # The SDK worker ran in a child process of the serving pool, and of no other pool.
    workers = {pid: cmd for pid, cmd in watch.seen[serving].items() if "SdkHarness" in cmd}
    assert len(workers) == 1, f"SDK workers of the serving pool: {watch.seen[serving]}"
    assert 'worker_id="worker_0"' in next(iter(workers.values()))
    assert all(not seen for i, seen in enumerate(watch.seen) if i != serving), watch.seen
    started = [p.started_workers() - b for p, b in zip(worker_pools, before, strict=True)]
    assert started == [int(i == serving) for i in range(POOLS)], pool.log_text()[-2000:]
    # ... and it exits with its job: nothing is left behind in the pool.
    assert not wait_for_no_workers(pool), "an SDK worker outlived its job"

    assert (out / "COMPLETED").exists()
    info = json.loads((out / "_run.json").read_text())
    expected_info = json.loads((predict_out / "_run.json").read_text())
    assert info["engine"] == "beam:PortableRunner"
    assert info["config_hash"] == expected_info["config_hash"]
    assert info["model"]["revision"] == expected_info["model"]["revision"]

    got, expected = answers_by_id(out), answers_by_id(predict_out)
    assert len(got) > 300 and set(got) == set(expected)
    for key, row in got.items():
        want = expected[key]
        assert (row["answer"], row["start"], row["end"], row["title"]) == (
            want["answer"],
            want["start"],
            want["end"],
            want["title"],
        ), key
        assert math.isclose(row["score"], want["score"], rel_tol=0.0, abs_tol=SCORE_TOLERANCE), key
        assert row["answer"], key  # a real span, not an empty answer
    assert rejections(out) == rejections(predict_out) == EXPECTED_REJECTIONS

    rows_read = pq.ParquetFile(source).metadata.num_rows
    counts, expected_counts = info["counts"], expected_info["counts"]
    assert counts["rows_read"] == rows_read == len(got) + sum(EXPECTED_REJECTIONS.values())
    assert counts["answered"] + counts["rejected"] == rows_read
    for key in ("rows_read", "answered", "rejected", "rejected_by_reason", "windows", "questions_cut"):
        assert counts[key] == expected_counts[key], key
    assert counts["windows"] > rows_read  # some rows had several windows, merged on the worker
