"""`docqa run`'s own flags, without importing Apache Beam (the `docqa` CLI declares them at start-up).

Every other flag is a Beam pipeline option and passes through to Beam's `PipelineOptions` untouched.
"""

from __future__ import annotations

import argparse

from qa_core.config_layers import add_config_arguments
from qa_core.io.spec import add_input_arguments

DESCRIPTION = (
    "Answer a Parquet table (or every question of QS asked of its documents in DOCS) with Apache Beam. "
    "Any Beam pipeline option (--runner, --direct_num_workers, --job_endpoint, --project, --region, ...) "
    "passes through to Beam."
)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds docqa's flags of the Beam job (the input, `--output`, config, `--overwrite`, ...) to `parser`.

    The input is `--input`, or `--documents` with `--questions` (`qa_core.io.spec.add_input_arguments`);
    which of them is checked when the job starts (`input_of_arguments`), in one line. `--debug` is only
    set when given (`argparse.SUPPRESS`), so the `docqa --debug run` form keeps the top-level value.
    """
    add_input_arguments(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    add_config_arguments(parser)
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (in-process runners)"
    )
    add_job_flags(parser, "(docqa run) ")


SPARK_DESCRIPTION = (
    "Answer a Parquet table, or documents and questions (--documents, --questions: the questions broadcast "
    "to the executors), with a native PySpark job (one task per unit of at most output.task_rows rows, "
    "over the same engine): on local[N] here, or on a cluster through --master or spark-submit. Writes the "
    "same output as docqa predict."
)


def add_spark_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the flags of `docqa spark` (and of `spark-submit pipelines/spark_job.py`) to `parser`.

    The input is `--input`, or `--documents` with `--questions` (`qa_core.io.spec.add_input_arguments`,
    as `docqa predict`'s): none is required here, so that a job without one fails with `input_spec`'s
    one line.
    """
    add_input_arguments(parser)
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--master",
        metavar="URL",
        help="Spark master (local[2], spark://host:7077, yarn, ...); default: spark-submit's, else local[*]",
    )
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Spark setting, e.g. --conf spark.executor.memory=4g; repeatable",
    )
    parser.add_argument(
        "--packed-env",
        metavar="ARCHIVE",
        help="docqa's environment packed by `make spark-env` (a path or URL the cluster can read): shipped "
        "to the executors through spark.archives, whose Python workers then run its interpreter; for "
        "cluster masters (local masters run this Python)",
    )
    add_config_arguments(parser)
    add_job_flags(parser, "(docqa spark) ")


def add_job_flags(parser: argparse.ArgumentParser, cli_only: str) -> None:
    """`--no-report`, `--debug`, `--overwrite` and `--resume` of the distributed jobs.

    `--debug` is only set when given (`argparse.SUPPRESS`), so the `docqa --debug COMMAND` form keeps the
    top-level value. `cli_only` marks the flags that only the `docqa` CLI reads (not `python -m`).
    """
    parser.add_argument("--no-report", action="store_true", help=f"{cli_only}do not write DIR/report.html")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"{cli_only}show tracebacks of job-level errors",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the units an unfinished run of the same job (config, model, inputs) wrote in DIR and "
        "answer only the rest; starts afresh when DIR holds no run",
    )
