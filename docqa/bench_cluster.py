"""`docqa bench --modes spark-cluster`: `docqa spark` against a Spark standalone cluster on this machine.

    T workers of one core each (T: this process's torch threads; each its own JVM, with its executor JVM
    and that executor's Python workers) -> `docqa spark --master spark://...` on one single-row-group
    Parquet file, as a small table is usually written -> answering (from the session up, each executor's
    model load included), the JVMs' start apart

Where `--modes spark` shows what `local[T]` costs, this is the cluster path of a real deployment: the
executors are separate processes that start their own Python workers, the tasks are the job's
work-sized units (`output.task_rows`), and every byte of answers goes through the executors' writers.
The executors run this Python (`PYSPARK_PYTHON`), as a cluster with docqa installed on its nodes would.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from qa_core.config import QAConfig


def bench_spark_cluster(config: QAConfig, rows: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """Starts the cluster, runs `docqa spark` on it in-process and as a whole command, stops the cluster.

    Returns:
        The mode's figures: answering seconds, the driver's Spark start and the cluster's start apart,
        the whole command's seconds (a subprocess against the same cluster), units and executors used.
    """
    from docqa.bench_modes import _config_file, _whole_command
    from pipelines.spark_job import run_spark
    from pipelines.spark_standalone import standalone_cluster

    cores = torch.get_num_threads()
    source = workdir / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)  # one row group: the units must still spread
    config_file = _config_file(config, workdir)
    # The executors' Python workers: this interpreter, with this docqa (the bench's child process is a
    # command of its own, so its environment is its to set).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    started = time.perf_counter()
    with standalone_cluster(workdir / "cluster", workers=cores, cores=1) as cluster:
        cluster_seconds = time.perf_counter() - started
        command = ["--input", str(source), "--master", cluster.master_url, "--no-report"]
        info = run_spark([*command, "--output", str(workdir / "spark"), "--config", str(config_file)])
        whole = _whole_command(["spark", *command, "--output", str(workdir / "cli")], config, workdir)
    counts, timings, spark = info["counts"], info["timings"], info.get("spark", {})
    return {
        "seconds": timings["answer_seconds"],
        "startup_seconds": timings["spark_start_seconds"],
        "cluster_start_seconds": cluster_seconds,
        "whole_seconds": whole,
        "partitions": counts["partitions"],
        "executors": len(spark.get("executors", {})),
        "real_tokens": counts["real_tokens"],
        "padded_tokens": counts["padded_tokens"],
    }
