"""`docqa`: one argparse dispatcher over every command; job-level errors exit with one line and code 2.

`docqa run` declares docqa's flags of the Beam job (`pipelines.options`) and passes every other flag to
Beam's pipeline options; any other command rejects unknown flags. Beam, torch and the benchmark itself
are imported inside the commands that use them, not at start-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from docqa import train_command
from docqa.bench_options import DESCRIPTION as BENCH_DESCRIPTION
from docqa.bench_options import add_bench_arguments, check_bench_arguments
from docqa.user_commands import register as register_user_commands
from pipelines.options import DESCRIPTION as RUN_DESCRIPTION
from pipelines.options import SPARK_DESCRIPTION, add_run_arguments, add_spark_arguments
from qa_core.config import config_from_arguments
from qa_core.config_layers import add_config_arguments
from qa_core.errors import OutputError
from qa_core.io.spec import add_input_arguments
from qa_core.jobs.guard import run_guarded
from qa_core.runtime.processes import skip_final_collection
from qa_core.versions import DOCQA_VERSION, version_report

logger = logging.getLogger("docqa")

# The logging level of a command when --log-level is not given: the bench's table stays readable.
DEFAULT_LOG_LEVELS = {"bench": "WARNING"}


def _cmd_job(args: argparse.Namespace) -> int:
    """`docqa predict`, `run` and `spark`: the engine's job, then its summary and the report."""
    info = args.job(args)
    # The summary first: the output is complete, and the report (matplotlib, about a second) only adds to it.
    print(summarize_run(info, args.output), flush=True)
    if not args.no_report:
        from qa_core.tools.report import try_write_report

        try_write_report(args.output)
    return 0


def _predict_job(args: argparse.Namespace) -> dict[str, Any]:
    """`docqa predict`: the in-process job (`qa_core.jobs.predict`); tunes this host unless configured off."""
    from qa_core.jobs.predict import predict

    # --workers N wins over runtime.workers of the config files and --set.
    workers = [] if args.workers is None else [f"runtime.workers={args.workers}"]
    config = config_from_arguments(args, *workers)
    return predict(
        config,
        args.input,
        args.output,
        documents=args.documents,
        questions=args.questions,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        workers=config.runtime.workers,
        tune_host=config.runtime.host_tuning,
    )


def _run_job(args: argparse.Namespace) -> dict[str, Any]:
    """`docqa run`: the Beam job, given the raw arguments (Beam's options are not ours to parse)."""
    from pipelines.run import run

    if not args.debug:
        _brief_beam_errors()
    return run(args.command_argv)


def _spark_job(args: argparse.Namespace) -> dict[str, Any]:
    """`docqa spark`: the PySpark job (`pipelines.spark_job`), given the raw arguments."""
    from pipelines.spark_job import run_spark

    return run_spark(args.command_argv)


def _cmd_eval(args: argparse.Namespace) -> int:
    from qa_core.evaluation.evaluate import evaluate, load_predictions
    from qa_core.evaluation.squad import load_squad

    result = evaluate(load_squad(args.data), load_predictions(args.predictions))
    print(result.format_table())
    if args.json:
        try:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(result.to_dict(), handle, indent=2)
        except OSError as err:
            raise OutputError(f"cannot write --json {args.json}: {err.strerror or err}") from err
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


class _VersionAction(argparse.Action):
    """`--version`: docqa's version and the installed torch, transformers, tokenizers, Beam, pyarrow, pyspark.

    The versions are read when asked, not each time the parser is built.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_report(DOCQA_VERSION, sys.version.split()[0]))  # stdout, as argparse's own action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The full `docqa` argument parser."""
    parser = argparse.ArgumentParser(
        prog="docqa",
        description="Batch extractive question answering over Parquet tables of questions and contexts.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="docqa's version and those of the libraries that answer"
    )
    parser.add_argument(
        "--log-level", help="logging level (default INFO; WARNING for bench, whose table is the output)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for job-level errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _register_predict(commands)
    _register_squad_commands(commands)
    register_user_commands(commands)

    train_command.register(commands)
    r = commands.add_parser(
        "run",
        help="answer Parquet tables with the Apache Beam job (any runner); Beam options pass through",
        description=RUN_DESCRIPTION,
    )
    add_run_arguments(r)
    r.set_defaults(func=_cmd_job, job=_run_job, passes_unknown_flags=True)
    s = commands.add_parser(
        "spark",
        help="answer Parquet tables with the native PySpark job (local[N] or a cluster)",
        description=SPARK_DESCRIPTION,
    )
    add_spark_arguments(s)
    s.set_defaults(func=_cmd_job, job=_spark_job)
    b = commands.add_parser(
        "bench",
        help="throughput vs. the seed's way, the forward-only bound and stock Beam",
        description=BENCH_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bench_arguments(b)
    b.set_defaults(func=_cmd_bench, check=lambda args: check_bench_arguments(b, args))
    return parser


def _register_predict(commands: Any) -> None:
    """`docqa predict`: the in-process job."""
    p = commands.add_parser(
        "predict",
        help="answer a Parquet table (or the pairs of two) in-process (no Beam)",
        description="Answer every row of IN (or every question of QS asked of its documents in DOCS) and "
        "write DIR/answers, DIR/rejections, DIR/_run.json and DIR/COMPLETED.",
    )
    add_input_arguments(p)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (fsspec URLs ok)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the parts an unfinished run of the same job (config, model, inputs) wrote and answer "
        "only the rest; starts afresh when DIR holds no run",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write DIR/report.html")
    p.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="processes answering contiguous row ranges, sharing the device and the cores; sets "
        "runtime.workers (default 1; on a GPU one process's host work leaves it mostly idle)",
    )
    add_config_arguments(p)
    p.set_defaults(func=_cmd_job, job=_predict_job)


def _register_squad_commands(commands: Any) -> None:
    """`docqa eval` and `docqa convert-squad`: SQuAD scoring and conversion."""
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


def _cmd_bench(args: argparse.Namespace) -> int:
    """`docqa bench ...`: each mode runs in a child process with the same arguments."""
    from docqa.bench import run_bench

    return run_bench(args, args.command_argv)


def _count_notes(counts: dict[str, Any]) -> str:
    """The summary's notes on rows that need one: questions cut to fit a window, rows kept by --resume."""
    notes = []
    if counts.get("questions_cut"):
        notes.append(f"{counts['questions_cut']} questions cut to fit a window")
    if counts.get("reused_rows"):
        notes.append(f"{counts['reused_rows']} rows kept from the earlier attempt")
    return "".join(f", {note}" for note in notes)


def summarize_run(info: dict[str, Any], output: str) -> str:
    """One paragraph of a finished job's counts and timings, the same for every engine."""
    counts, timings = info["counts"], info["timings"]
    reasons = counts.get("rejected_by_reason")
    efficiency = counts.get("padding_efficiency")
    efficiency = None if efficiency is None else round(efficiency, 3)
    time_taken = f"{timings['wall_seconds']} s"
    if timings.get("startup_seconds") is not None:
        time_taken += (
            f" (start-up {timings['startup_seconds']} s, then {timings['answer_rows_per_second']} rows/s)"
        )
    else:
        time_taken += f" ({timings['rows_per_second']} rows/s)"
    return (
        f"rows {counts['rows_read']}: answered {counts['answered']}, rejected {counts['rejected']}"
        f"{' ' + str(reasons) if reasons else ''}{_count_notes(counts)}; windows {counts.get('windows')}, "
        f"batches {counts.get('batches')}, padding efficiency {efficiency}; {time_taken} -> {output} "
        "(details: _run.json)"
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


def _command_argv(argv: Sequence[str], command: str) -> list[str]:
    """The arguments after the command's name: `argv` less the top-level options before it."""
    takes_value = ("--log-level",)
    index = 0
    while index < len(argv) and argv[index] != command:
        name, has_value = argv[index].split("=", 1)[0], "=" in argv[index]
        # argparse accepts unambiguous prefixes of a long option (`--log` for `--log-level`).
        if not has_value and len(name) > 2 and any(option.startswith(name) for option in takes_value):
            index += 1
        index += 1
    return list(argv[index + 1 :])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `docqa` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown_flags", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    args.command_argv = _command_argv(argv, args.command)
    _configure_logging((args.log_level or DEFAULT_LOG_LEVELS.get(args.command, "INFO")).upper())
    return run_guarded(args.command, lambda: args.func(args), args.debug)


def console_main() -> int:
    """The `docqa` console script and `python -m docqa`: `main`, then a quicker exit.

    Every output is written and closed by now, so Python's last garbage collection over torch's and
    transformers' objects is skipped (`skip_final_collection`; its saving is in benchmarks/RESULTS.md).
    `main` itself leaves the interpreter alone: tests and other callers run it in-process.
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
