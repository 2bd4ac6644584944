"""`docqa bench`'s arguments, without importing the benchmark itself (torch, Beam, the engine).

`docqa.cli` declares them at start-up; `docqa.bench` parses them when run as `python -m
docqa.bench`, which is also how it runs each mode in a child process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qa_core.config import DEFAULT_MODEL
from qa_core.config_layers import add_config_arguments

MODES = ("seed", "bound", "predict", "run", "spark", "spark-cluster", "beam-stock", "host")
# What `--modes` runs unless told: spark-cluster starts JVMs for a cluster of its own, so it is asked for.
DEFAULT_MODES = tuple(m for m in MODES if m != "spark-cluster")
DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev-v1.1.json.zip")
DESCRIPTION = """\
Throughput of docqa against the anchors, on the same model and the same rows.

Modes (each runs in a fresh subprocess, so peak RSS and warm-up are per mode; on CUDA each runs its rows
once untimed first):
    seed        one question at a time: tokenize, forward, best span (the seed design's way)
    bound       forward only, pre-tokenized windows sorted by length, padded like docqa's batches: the
                fastest of the jobs' batch shape and 8, 16, 32 windows per forward
    predict     `docqa predict` in-process, Parquet to Parquet, end to end (model already loaded);
                with --workers N, `docqa predict --workers N` from every worker loaded to the last answer
    run         `docqa run` on DirectRunner, Parquet to Parquet, end to end (includes worker model load)
    spark       `docqa spark` on local[T], 2T units or more, from the session up (JVM start apart)
    spark-cluster  `docqa spark` on a Spark standalone cluster started here: T workers of one core, one
                single-row-group file in work-sized units, from the session up (the JVMs' start apart);
                not in the default --modes
Predict, run, spark and spark-cluster also time the whole command in a subprocess (imports, model load,
report, exit).
    beam-stock  RunInference with Beam's PyTorch keyed-tensor handler, windows padded to max_seq_len
    host        `docqa predict` in-process with an instant forward (random logits, no model): the host
                work per row a device waits for, each stage timed alone, and the tokenizer's floor;
                with --workers N, also N such processes at once, each over 1/N of the rows, from every
                process ready to the last done (rows/s, us/row per process, scaling over one)
"""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of `docqa bench` to `parser`."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="QA checkpoint (default: the bundled model)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="SQuAD JSON whose first N questions are used")
    parser.add_argument("--n", type=int, default=2000, help="questions (default 2000)")
    parser.add_argument(
        "--context-paragraphs",
        type=int,
        default=1,
        metavar="K",
        help="a long-context set: each context is its paragraph and the next K-1 of its article "
        "(default 1: SQuAD's own paragraphs)",
    )
    parser.add_argument(
        "--one-per-context",
        action="store_true",
        help="a distinct-context set: only the first question of each context (every row's context "
        "differs from the others', so nothing is reused between rows)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="every mode answers the N questions this many times over, with fresh ids (default 1; more "
        "rows for a fast device, where start-up and first-shape costs would dominate N questions)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the modes, one after the other, this many times over and report each mode's median "
        "round, its ratios taken against the same round's bound (default 1; 3 on a shared machine whose "
        "speed drifts over minutes)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="the predict mode runs `docqa predict --workers N` (with --set runtime.worker_models=shared "
        "for one device server); its figure is the answering after every process has loaded; the host "
        "mode also runs its instant-forward job in N processes at once, each over 1/N of the rows "
        "(default 1)",
    )
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="runtime.device (default cpu)"
    )
    parser.add_argument(
        "--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="model.dtype (default fp32)"
    )
    parser.add_argument(
        "--modes",
        default=",".join(DEFAULT_MODES),
        help=f"comma-separated subset of {', '.join(MODES)} (default: all but spark-cluster)",
    )
    add_config_arguments(parser, model=False)
    parser.add_argument(
        "--json", default="out/bench.json", help="write the results here (default out/bench.json)"
    )
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one mode, in a child process


def check_bench_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects argument combinations argparse cannot express (`parser.error`: usage and exit code 2)."""
    if min(args.n, args.repeat, args.rounds, args.workers, args.context_paragraphs) < 1:
        parser.error(
            "--n, --repeat, --rounds, --workers and --context-paragraphs must be >= 1, got "
            f"{args.n}, {args.repeat}, {args.rounds}, {args.workers}, {args.context_paragraphs}"
        )
    unknown = sorted(set(args.modes.split(",")) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if args.workers > 1 and not {"predict", "host"} & set(args.modes.split(",")):
        parser.error("--workers applies to the predict and host modes only: add one to --modes")
