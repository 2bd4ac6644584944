"""`docqa report`, `calibrate`, `estimate` and `tune`: argparse sub-commands over `qa_core` modules.

Wire them into `docqa.cli.build_parser` with `register(commands)`. Each command's `func(args) -> int`
raises job-level errors (`qa_core.errors.JobError`: `InputError`, `ConfigError`, `ModelLoadError`, ...)
that `qa_core.jobs.guard.run_guarded` turns into one line and exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SubParsers = argparse._SubParsersAction  # type of `parser.add_subparsers()`
DEFAULT_BENCH = "out/bench.json"
"""`docqa bench`'s default output, used by `docqa estimate` when `--bench` is not given."""


def _write_json(path: str, document: dict[str, Any]) -> None:
    from qa_core.io.write import write_json_file

    write_json_file(path, document)


def _cmd_report(args: argparse.Namespace) -> int:
    from qa_core.errors import OutputError
    from qa_core.tools.report import write_report

    try:
        path = write_report(args.dir, data=args.data)
    except OSError as err:
        raise OutputError(f"cannot write the report into {args.dir}: {err.strerror or err}") from err
    print(f"wrote {path}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from qa_core.config import config_from_arguments
    from qa_core.evaluation.calibrate import calibrate, check_model_dir, save_calibration

    config = config_from_arguments(args)
    model_dir = config.model.name_or_path
    if not args.dry_run:
        check_model_dir(model_dir)  # fail before the model runs, not after
    result = calibrate(config, args.data, args.n)
    print(result.format_table())
    if args.json:
        _write_json(args.json, result.to_document())
    if args.dry_run:
        print("dry run: nothing written")
    else:
        print(f"wrote {save_calibration(model_dir, result)}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from qa_core.config import config_from_arguments
    from qa_core.io.spec import input_of_arguments
    from qa_core.tools.estimate import estimate

    bench = args.bench
    if bench is None and Path(DEFAULT_BENCH).is_file():
        bench = DEFAULT_BENCH
    result = estimate(
        config_from_arguments(args),
        input_of_arguments(args),
        sample=args.sample,
        bench=bench,
        gpu_bench=args.gpu_bench,
    )
    print(result.format_table())
    if args.json:
        _write_json(args.json, result.to_dict())
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from qa_core.config import config_from_arguments
    from qa_core.runtime import host_tuning
    from qa_core.runtime.loaders import load_runner
    from qa_core.runtime.shape_probe import tune
    from qa_core.runtime.shapes import choose_batch_shape

    config = config_from_arguments(args)
    if config.runtime.host_tuning:  # measured as the jobs that use the shape run: in a tuned process
        host_tuning.tune_host()
    runner = load_runner(config.model, config.runtime)
    result = tune(runner, config, seconds=args.seconds, store=not args.dry_run)
    print(
        f"batch shapes of {config.model.name_or_path} ({config.model.dtype}) on {runner.device}, "
        f"{result.rounds} rounds over windows of {list(result.lengths)} tokens:"
    )
    print(result.format_table())
    print(
        f"chosen: batch.max_batch_windows={result.max_batch_windows} "
        f"batch.max_batch_tokens={result.max_batch_tokens}"
    )
    if result.stored_in:
        shape = choose_batch_shape(config, runner.revision, runner.device)
        print(
            f"stored in {result.stored_in}; jobs here that leave the batch caps unset now use it"
            f"{'' if shape.source == 'tuned' else f' (this config sets them: {shape.source})'}"
        )
    else:
        print("dry run: nothing stored")
    if args.json:
        _write_json(args.json, result.to_dict())
    return 0


def register_tune(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Adds `docqa tune [--seconds S] [--dry-run] [--json FILE]`."""
    from qa_core.config_layers import add_config_arguments

    p = commands.add_parser(
        "tune",
        help="find this machine's fastest batch shape for the model; later jobs here use it",
        description="Time the model's forward pass at several windows-per-batch caps (interleaved rounds, "
        "medians) and store the fastest for this model, device, dtype and thread count; jobs whose config "
        "leaves batch.max_batch_windows / max_batch_tokens unset then use it (_run.json batch_shape).",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="time to spend measuring (default 20)")
    p.add_argument("--dry-run", action="store_true", help="measure and print, store nothing")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON here")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_tune)


def register_report(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Adds `docqa report DIR [--data SQUAD]`."""
    p = commands.add_parser(
        "report",
        help="HTML run report with figures (DIR/report.html)",
        description="Write DIR/report.html and DIR/report/*.png from a finished run's answers, rejections "
        "and _run.json; with --data, EM/F1 by question type and a reliability diagram.",
    )
    p.add_argument("dir", metavar="DIR", help="a docqa output folder (fsspec URLs ok)")
    p.add_argument("--data", metavar="SQUAD", help="SQuAD file with gold answers for the same question ids")
    p.set_defaults(func=_cmd_report)


def register_calibrate(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Adds `docqa calibrate --data SQUAD [--model M] [--n N] [--dry-run] [--json FILE]`."""
    from qa_core.config_layers import add_config_arguments

    p = commands.add_parser(
        "calibrate",
        help="fit the score temperature on labelled data; stored as MODEL/calibration.json",
        description="Fit a softmax temperature so that `score` estimates P(answer is exact-match right), "
        "on half of a hashed sample of SQuAD questions; report ECE and log-loss before/after on the other "
        "half; write calibration.json into the (local) model directory, applied by default.",
    )
    p.add_argument("--data", required=True, metavar="SQUAD", help="SQuAD JSON (.json, .json.gz or .zip)")
    p.add_argument("--n", type=int, default=2000, help="questions sampled, split in halves (default 2000)")
    p.add_argument("--dry-run", action="store_true", help="print the fit without writing calibration.json")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_calibrate)


def register_estimate(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Adds `docqa estimate --input GLOB [--config C] [--sample N] [--bench F] [--gpu-bench F]`."""
    from qa_core.config_layers import add_config_arguments
    from qa_core.io.spec import add_input_arguments

    p = commands.add_parser(
        "estimate",
        help="rows, windows, tokens, padding and hours of a job, from a tokenized sample",
        description="Count rows from Parquet footers, tokenize a sample spread over the input, and "
        "extrapolate windows, tokens, padding waste and hours (from docqa bench figures).",
    )
    add_input_arguments(p)
    p.add_argument(
        "--sample", type=int, default=1000, help="rows (of two tables: pairs) to tokenize (default 1000)"
    )
    p.add_argument(
        "--bench",
        metavar="FILE",
        help=f"docqa bench JSON measured on the CPU (default {DEFAULT_BENCH} when it exists)",
    )
    p.add_argument(
        "--gpu-bench",
        metavar="FILE",
        help="docqa bench --device cuda JSON; without it GPU hours are a labelled placeholder",
    )
    p.add_argument("--json", metavar="FILE", help="also write the estimate as JSON here")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_estimate)


def register(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Adds the report, calibrate, estimate and tune sub-commands to `docqa`'s sub-parsers."""
    register_report(commands)
    register_calibrate(commands)
    register_estimate(commands)
    register_tune(commands)
