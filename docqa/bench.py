"""`docqa bench`: throughput of docqa against the anchors, on the same model and the same rows.

The modes and the arguments are described in `docqa.bench_options` (importable without torch, for the
`docqa` CLI), and each mode's runner is in `docqa.bench_modes`. Each mode runs in a fresh
`python -m docqa.bench ... --mode X` subprocess, so peak RSS and warm-up are per mode; on CUDA each runs
its rows once untimed first (`docqa.bench_modes._full_warm_up`).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import torch

from docqa.bench_cluster import bench_spark_cluster
from docqa.bench_host import bench_host
from docqa.bench_modes import RUNNERS, BenchError, bench_predict_workers, bench_spark
from docqa.bench_options import DESCRIPTION, MODES, add_bench_arguments, check_bench_arguments
from docqa.bench_table import combine_rounds, format_table, summarize
from qa_core.config import QAConfig, load_config
from qa_core.errors import InputError
from qa_core.evaluation.squad import load_squad, squad_to_table
from qa_core.io.write import write_json_file
from qa_core.runtime import host_tuning
from qa_core.runtime.cpu import probe_cpu
from qa_core.runtime.loaders import describe_model, load_runner, resolve_device
from qa_core.runtime.shapes import BatchShape, choose_batch_shape, with_batch_shape

logger = logging.getLogger("docqa.bench")
__all__ = ["MODES", "build_parser", "main", "run_bench"]


def _rows(
    data: str, n: int, repeat: int = 1, paragraphs: int = 1, one_per_context: bool = False
) -> list[dict[str, Any]]:
    """The first `n` questions of `data`, `repeat` times over (copy c's ids get a `c-` prefix).

    With `paragraphs` > 1 each context is its own paragraph followed by the next ones of its article
    (`long_contexts`): a long-context set whose rows span several windows. With `one_per_context`, only
    the first question of each context is taken: rows whose contexts all differ.
    """
    table = squad_to_table(load_squad(data))
    if paragraphs > 1:
        table = long_contexts(table, paragraphs)
    if one_per_context:
        contexts = table.column("context").to_pylist()
        first = sorted({context: k for k, context in reversed(list(enumerate(contexts)))}.values())
        table = table.take(first)
    rows = list(table.slice(0, n).select(["id", "question", "context"]).to_pylist())
    if repeat == 1:
        return rows
    return [dict(row, id=f"{copy}-{row['id']}") for copy in range(repeat) for row in rows]


def long_contexts(table: pa.Table, paragraphs: int) -> pa.Table:
    """`table` with each context followed by the next `paragraphs - 1` of its article (wrapping round).

    The question's own paragraph comes first, so its answer offsets still hold; an article with fewer
    paragraphs gives each of them all of its paragraphs.
    """
    titles, contexts = table.column("title").to_pylist(), table.column("context").to_pylist()
    articles: dict[str, list[str]] = {}
    for title, context in zip(titles, contexts, strict=True):
        article = articles.setdefault(title, [])
        if not article or article[-1] != context:  # a paragraph's questions are consecutive
            article.append(context)
    joined = []
    for title, context in zip(titles, contexts, strict=True):
        article = articles[title]
        first = article.index(context)
        count = min(paragraphs, len(article))
        joined.append("\n\n".join(article[(first + k) % len(article)] for k in range(count)))
    return table.set_column(table.schema.get_field_index("context"), "context", pa.array(joined))


def _base_config(args: argparse.Namespace) -> QAConfig:
    # --model/--dtype/--device are bench flags; --set may still override anything.
    base = [
        f"model.name_or_path={json.dumps(args.model)}",
        f"model.dtype={args.dtype}",
        f"runtime.device={args.device}",
    ]
    return load_config(args.config, [*base, *args.overrides])


def _config(args: argparse.Namespace) -> QAConfig:
    """The config of every mode, its batch caps set to the shape a job here would run with."""
    config = _base_config(args)
    return with_batch_shape(config, _batch_shape(config))


def _batch_shape(config: QAConfig) -> BatchShape:
    """What `docqa predict` here would choose (the config's caps, `docqa tune`'s, or the defaults)."""
    return choose_batch_shape(config, describe_model(config.model), resolve_device(config.runtime))


def run_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Runs one mode in this process and returns its figures."""
    config = _config(args)
    if config.runtime.host_tuning:  # as the command-line jobs the modes stand for, before any model loads
        host_tuning.tune_host()
    torch.manual_seed(0)
    rows = _rows(args.data, args.n, args.repeat, args.context_paragraphs, args.one_per_context)
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode == "predict" and args.workers > 1:
            # The workers load their own models: one here would only hold the device's memory.
            figures = bench_predict_workers(config, rows, Path(tmp), args.workers)
        elif args.mode == "spark":  # Spark's Python workers load theirs
            figures = bench_spark(config, rows, Path(tmp))
        elif args.mode == "spark-cluster":
            figures = bench_spark_cluster(config, rows, Path(tmp))
        elif args.mode == "host":  # with workers, its figures of N processes beside one's
            model = load_runner(config.model, config.runtime)
            figures = bench_host(model, config, rows, Path(tmp), workers=args.workers)
        else:
            figures = RUNNERS[args.mode](load_runner(config.model, config.runtime), config, rows, Path(tmp))
    figures.update(
        mode=args.mode,
        questions=len(rows),
        # With workers, the largest of this process and its workers (each process's own peak, not a sum).
        peak_rss_mb=max(
            resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        / 1024,
    )
    return figures


def build_parser() -> argparse.ArgumentParser:
    """The parser of `python -m docqa.bench` (the same arguments as `docqa bench`)."""
    parser = argparse.ArgumentParser(
        prog="docqa bench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_bench_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m docqa.bench`: parses `argv`, then `run_bench`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_bench_arguments(parser, args)
    return run_bench(args, list(argv if argv is not None else sys.argv[1:]))


def run_bench(args: argparse.Namespace, argv: list[str]) -> int:
    """Runs each mode in a child process (`argv` plus `--mode X`) and prints the table.

    With `args.mode` set (in a child), runs that mode here and prints its figures as JSON.

    Raises:
        InputError: The `--data` file does not exist.
        ModelLoadError, ConfigError: The model's device or the config, checked before any child starts.
        BenchError: A mode failed in its child process.
    """
    if args.mode:
        print(json.dumps(run_mode(args)))
        return 0
    # Fail in one line, before any child starts, on a config error, an absent GPU or missing data.
    resolve_device(_config(args).runtime)
    fs, data_path = fsspec.core.url_to_fs(args.data)
    if not fs.exists(data_path):
        raise InputError(f"--data {args.data}: no such SQuAD file")
    rounds = [summarize(_run_modes(args, argv, r)) for r in range(args.rounds)]
    results = combine_rounds(rounds)
    cpu = probe_cpu()
    shape = _batch_shape(_base_config(args))
    print(
        f"CPU: {cpu.architecture}, torch kernels {cpu.capability}, native bf16 {cpu.has_native_bf16}, native "
        f"fp16 {cpu.has_native_fp16} ({' '.join(cpu.flags) or 'no flags known'})"
    )
    print(
        f"batch shape (every mode): {shape.max_batch_windows} windows / {shape.max_batch_tokens} tokens "
        f"({shape.source}: {shape.reason})"
    )
    print(format_table(results))
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu.to_dict(),
        "batch_shape": shape.to_dict(),
        "argv": argv,
        "rounds": args.rounds,
    }
    write_json_file(args.json, {"meta": meta, "results": results})
    return 0


def _run_modes(args: argparse.Namespace, argv: list[str], round_index: int) -> list[dict[str, Any]]:
    """One round: each mode of `--modes` in its own child process, in order; their raw figures."""
    results = []
    for mode in args.modes.split(","):
        logger.info(
            "bench %s on %d questions (round %d of %d)",
            mode,
            args.n * args.repeat,
            round_index + 1,
            args.rounds,
        )
        child = subprocess.run(
            [sys.executable, "-m", "docqa.bench", *argv, "--mode", mode],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise BenchError(f"bench mode {mode} failed:\n{child.stderr[-3000:]}")
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
