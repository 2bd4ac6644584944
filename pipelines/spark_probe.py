"""`docqa spark`'s executor probe: can the executors' Python run docqa and find the model, before any row?

    driver: sc.parallelize(range(n), n).mapPartitions(probe) -> per task: (executor, host, Python,
    docqa version, error) -> any error: one JobError line saying what to set; else the executors' Pythons

A cluster's executors run the Python that `PYSPARK_PYTHON` (or `spark.pyspark.python`) names on their
machines, which need not be the driver's. Without the probe a wrong one fails the first unit's task with
an import error deep in Spark's log, after the output folder was prepared. The probe's function is
pickled by value (a nested function that references only builtins and imports inside), so that an
executor without docqa can still unpickle and run it and say what it lacks. It imports the executor half
of the job (`pipelines.spark_partition`, which imports `qa_core`) and reads the model's limits
(`read_model_limits`: its config and tokenizer files, not its weights), so a model path that exists only
on the driver is caught too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipelines.failures import summarize_failure
from qa_core.config import ModelConfig
from qa_core.errors import JobError

PYTHON_HINT = (
    "set PYSPARK_PYTHON (docqa spark --master ...) or spark.pyspark.python (spark-submit) to a Python with "
    "docqa installed on every executor machine, or ship a packed environment (README, 'Spark on a cluster')"
)
MODEL_HINT = (
    "set model.name_or_path to a model folder that every executor machine has at that path (README, "
    "'Spark on a cluster')"
)

ProbeRow = tuple[str, str, str, str, str, str]
"""(executor, host, sys.executable, docqa version, failed stage `import`/`model`/``, error)."""


def _probe_function(model: dict[str, Any]) -> Callable[[Iterable[int]], Iterator[ProbeRow]]:
    """The task function of the probe, with the model's config as plain data (no docqa class to unpickle).

    Nested, so cloudpickle sends its code by value; everything it uses is imported inside.
    """

    def probe(_: Iterable[int]) -> Iterator[ProbeRow]:
        import os
        import socket
        import sys

        host = socket.gethostname()
        executor = f"{host}/{os.getppid()}"  # as pipelines.spark_partition.executor_id, without importing it
        try:
            import pipelines.spark_partition  # noqa: F401  (the executor half of the job, and its imports)
            from qa_core.versions import DOCQA_VERSION
        except Exception as err:  # ImportError, or a broken install: the executor says which
            yield executor, host, sys.executable, "", "import", f"{type(err).__name__}: {err}"
            return
        try:
            from qa_core.config import ModelConfig
            from qa_core.runtime.loaders import read_model_limits

            read_model_limits(ModelConfig(**model))
        except Exception as err:  # ModelLoadError, OSError: the executor's own words
            yield executor, host, sys.executable, DOCQA_VERSION, "model", f"{type(err).__name__}: {err}"
            return
        yield executor, host, sys.executable, DOCQA_VERSION, "", ""

    return probe


def probe_executors(context: Any, model: ModelConfig, tasks: int) -> list[ProbeRow]:
    """Runs the probe as `tasks` one-core tasks; returns what each reported.

    Args:
        context: The SparkContext.
        model: The job's model config (as the executors will load it).
        tasks: Tasks to run: the task slots the cluster offers, so that each executor is likely asked.

    Raises:
        JobError: The probe job failed (an executor Python that cannot run PySpark's worker, or of
            another Python version than the driver's), an executor's Python cannot import docqa, or
            the model cannot be read there: one line naming the executor, its Python and what to set.
    """
    function = _probe_function(dataclasses.asdict(model))
    try:
        rows: list[ProbeRow] = context.parallelize(range(tasks), tasks).mapPartitions(function).collect()
    except Exception as err:  # Py4JJavaError, PythonException: no common type
        raise JobError(
            f"the executors' Python cannot run docqa's probe ({summarize_failure(err)}): {PYTHON_HINT}"
        ) from err
    for executor, host, python, _, stage, error in rows:
        if stage == "import":
            raise JobError(
                f"the executors' Python ({python} on {host}, executor {executor}) cannot import docqa "
                f"({error}): {PYTHON_HINT}"
            )
        if stage == "model":
            raise JobError(
                f"the executors cannot read the model {model.name_or_path!r} ({python} on {host}: "
                f"{error}): {MODEL_HINT}"
            )
    return rows


def executor_pythons(rows: list[ProbeRow]) -> dict[str, str]:
    """`{executor: "python (docqa VERSION)"}` of the probe's rows (`_run.json`'s `spark.executor_python`)."""
    return {executor: f"{python} (docqa {version})" for executor, _, python, version, _, _ in sorted(rows)}
