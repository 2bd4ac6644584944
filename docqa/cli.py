"""`docqa`: predict (in-process), eval, convert-squad; job-level errors exit non-zero with one line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from docqa import train_command
from docqa.user_commands import register as register_user_commands
from qa_core import __version__
from qa_core.config import add_config_arguments, config_from_arguments
from qa_core.errors import ConfigError
from qa_core.runtime.processes import skip_final_collection

logger = logging.getLogger("docqa")

# Errors that mean "the job is misconfigured", reported as one line instead of a traceback.
JOB_ERRORS: tuple[type[Exception], ...] = (ConfigError, FileNotFoundError, PermissionError)


def _job_errors() -> tuple[type[Exception], ...]:
    from qa_core.errors import DeviceFailedError, InputError, ModelLoadError, OutputError, WorkerError

    return (*JOB_ERRORS, ModelLoadError, DeviceFailedError, InputError, OutputError, WorkerError, ValueError)


def _cmd_predict(args: argparse.Namespace) -> int:
    from qa_core.jobs.predict import predict
    from qa_core.runtime.heap import use_system_arrow_pool

    config = config_from_arguments(args)
    use_system_arrow_pool()  # keeps the resident set flat over long inputs (qa_core.runtime.heap)
    info = predict(
        config,
        args.input,
        args.output,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        workers=args.workers,
    )
    if not args.no_report:
        from qa_core.tools.report import try_write_report

        try_write_report(args.output)
    counts, timings = info["counts"], info["timings"]
    print(
        f"rows {counts['rows_read']}: answered {counts['answered']}, rejected {counts['rejected']}"
        f"{' ' + str(counts['rejected_by_reason']) if counts['rejected_by_reason'] else ''} in "
        f"{timings['wall_seconds']} s (start-up "
        f"{timings['startup_seconds']} s, then {timings['answer_rows_per_second']} rows/s) -> {args.output}"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from qa_core.evaluation.evaluate import evaluate, load_predictions
    from qa_core.evaluation.squad import load_squad

    result = evaluate(load_squad(args.data), load_predictions(args.predictions))
    print(result.format_table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result.to_dict(), handle, indent=2)
    return 0


def _cmd_convert_squad(args: argparse.Namespace) -> int:
    from qa_core.evaluation.squad import convert_squad

    rows = convert_squad(args.data, args.output)
    print(f"wrote {rows} rows to {args.output}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The full `docqa` argument parser."""
    parser = argparse.ArgumentParser(
        prog="docqa",
        description="Batch extractive question answering over Parquet tables of questions and contexts.",
    )
    parser.add_argument("--version", action="version", version=f"docqa {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for job-level errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "predict",
        help="answer a Parquet table in-process (no Beam)",
        description="Answer every row of IN and write DIR/answers, DIR/rejections, "
        "DIR/_run.json and DIR/COMPLETED.",
    )
    p.add_argument(
        "--input", required=True, metavar="IN", help="Parquet file, directory or glob (fsspec URLs ok)"
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (fsspec URLs ok)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write DIR/report.html")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="processes answering contiguous row ranges, each with its own model copy, sharing the "
        "device and the cores (default 1; on a GPU one process's host work leaves it mostly idle)",
    )
    add_config_arguments(p)
    p.set_defaults(func=_cmd_predict)

    e = commands.add_parser(
        "eval",
        help="SQuAD v1.1 / v2.0 exact match and F1 of predictions",
        description="Score predictions with the official SQuAD normalisation.",
    )
    e.add_argument("--data", required=True, metavar="SQUAD", help="SQuAD JSON (.json, .json.gz or .zip)")
    e.add_argument(
        "--predictions",
        required=True,
        metavar="DIR|FILE",
        help="a docqa output folder or a JSON file of id -> answer text",
    )
    e.add_argument("--json", metavar="FILE", help="also write the scores as JSON here")
    e.set_defaults(func=_cmd_eval)

    c = commands.add_parser(
        "convert-squad",
        help="SQuAD JSON -> the docqa input Parquet table",
        description="Write id, title, context, question, answers as Parquet.",
    )
    c.add_argument("--data", required=True, metavar="SQUAD", help="SQuAD JSON (.json, .json.gz or .zip)")
    c.add_argument("--output", required=True, metavar="FILE.parquet", help="output Parquet file")
    c.set_defaults(func=_cmd_convert_squad)

    register_user_commands(commands)

    train_command.register(commands)
    commands.add_parser(
        "run",
        help="answer Parquet tables with the Apache Beam job (any runner); `docqa run --help` for flags",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="throughput vs. the seed's way, the forward-only bound and stock Beam; `docqa bench --help`",
        add_help=False,
    )
    return parser


def run_guarded(
    command: str,
    job: Callable[[], Any],
    debug: bool = False,
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """Runs a command; job-level errors (and `errors`) become one line on stderr and exit code 2."""
    try:
        result = job()
    except (*_job_errors(), *errors) as err:
        if debug:
            raise
        print(f"docqa {command}: error: {err}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _run_beam(argv: Sequence[str]) -> int:
    """`docqa run ...`: Beam flags are not ours to parse, so the Beam job gets the raw arguments."""
    from pipelines.run import PipelineError, run

    debug = "--debug" in argv
    report = "--no-report" not in argv
    args = [a for a in argv if a not in ("--debug", "--no-report")]
    if not debug:
        _brief_beam_errors()
    infos: list[dict[str, Any]] = []
    code = run_guarded("run", lambda: infos.append(run(args)), debug, errors=(PipelineError,))
    output = _flag_value(args, "--output")
    if code == 0 and output:
        if report:
            from qa_core.tools.report import try_write_report

            try_write_report(output)
        print(summarize_run(infos[0], output))
    return code


def summarize_run(info: dict[str, Any], output: str) -> str:
    """One paragraph of a finished run's counts (the Beam counters, for `docqa run`)."""
    counts, timings = info["counts"], info["timings"]
    efficiency = counts.get("padding_efficiency")
    efficiency = None if efficiency is None else round(efficiency, 3)
    return (
        f"rows {counts['rows_read']}: answered {counts['answered']}, rejected {counts['rejected']} "
        f"{counts.get('rejected_by_reason') or ''}; windows {counts.get('windows')}, batches "
        f"{counts.get('batches')}, padding efficiency {efficiency}; "
        f"{timings['wall_seconds']} s ({timings['rows_per_second']} rows/s) -> {output} (details: _run.json)"
    )


class _BriefBeamErrors(logging.Filter):
    """Shows Beam's error records (a failing element's traceback, a worker's log) as their first line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("apache_beam") and record.levelno >= logging.ERROR:
            lines = record.getMessage().strip().splitlines()
            record.msg, record.args = (lines[0] if lines else ""), ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def _brief_beam_errors() -> None:
    """Without --debug, a failed Beam job prints one line per error, not the runner's tracebacks."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "docqa_cli_handler", False):
            handler.addFilter(_BriefBeamErrors())


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `docqa` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        _configure_logging("INFO")
        return _run_beam(argv[1:])
    if argv and argv[0] == "bench":
        from benchmarks.bench import main as bench_main

        _configure_logging("WARNING")
        return run_guarded("bench", lambda: bench_main(argv[1:]))
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level.upper())
    return run_guarded(args.command, lambda: args.func(args), args.debug)


def console_main() -> int:
    """The `docqa` console script and `python -m docqa`: `main`, then a quicker exit.

    Every output is written and closed by now, so Python's last garbage collection over torch's and
    transformers' objects is skipped (`skip_final_collection`: `docqa predict` of the 16-row sample
    4.2-4.4 s -> 3.4-3.5 s). `main` itself leaves the interpreter alone: tests and other callers run it
    in-process.
    """
    code = main()
    skip_final_collection()
    return code


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging(level: str) -> None:
    """`logging.basicConfig`, marking the handler it adds (none when logging is already set up)."""
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in root.handlers:
        if handler not in before:
            handler.docqa_cli_handler = True  # type: ignore[attr-defined]
