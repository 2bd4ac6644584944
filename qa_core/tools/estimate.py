"""`docqa estimate`: what a job over an input will cost, from a tokenized sample, before launching it.

1. Rows and row groups are counted from the Parquet footers (no data read); a two-table input's rows are
   its pairs, counted from the questions and the documents' doc_id column (`qa_core.io.pairs`).
2. A stratified sample (`sample` rows, one drawn at random from each of `sample` equal runs of
   consecutive rows, so spread over every file and row group; of two tables, the documents that hold the
   sampled pairs) is read with column projection, validated
   and featurized with the model's tokenizer, exactly as the job does.
3. The sampled windows are planned into batches with `qa_core.stages.batch.plan_batches` in sort buffers of
   `batch.sort_buffer_windows` windows. When the sample has fewer windows than one buffer (and the job
   will have more), the sample is repeated to fill it, so the padding reflects full buffers.
4. Per-row means are scaled to all rows; padded tokens = real tokens / padding efficiency.
5. Hours = padded tokens / the padded tokens per second of a `docqa bench` run (mode `predict`, else
   `run`; end-to-end figures), or real tokens / real tokens per second when the bench lacks padded
   counts. GPU hours come from a bench run on a GPU (`gpu_bench`); without one they are a placeholder,
   `GPU_ASSUMED_SPEEDUP` times the CPU rate, labelled as an assumption.

Unmodelled: attention cost grows faster than linearly with window length, so a bench on different
window lengths (or another model, dtype or machine) transfers only approximately.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qa_core.config import QAConfig
from qa_core.engine.host import RowPreparer
from qa_core.errors import ConfigError, InputError
from qa_core.io.joins import Joins
from qa_core.io.sample import read_layout
from qa_core.io.spec import InputSpec, open_source
from qa_core.records import Feature, Rejection, RowWindows
from qa_core.runtime.loaders import describe_model, load_tokenizer, resolve_device
from qa_core.runtime.shapes import choose_batch_shape, with_batch_shape
from qa_core.stages.batch import padded_length, plan_batches
from qa_core.stages.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

GPU_ASSUMED_SPEEDUP = 20.0
"""Placeholder GPU / CPU throughput ratio used only without `--gpu-bench`: an order-of-magnitude guess for
one data-center GPU in fp16 against the benchmarked CPU. Not measured; replace it with a GPU bench."""
BENCH_MODES = ("predict", "run")


@dataclass(frozen=True)
class SampleFigures:
    """What the tokenized sample holds.

    Attributes:
        rows: Sampled rows.
        rejected_by_reason: Sampled rows the job would reject, by reason.
        windows_per_row: Windows of every sampled row (0 for a rejected row).
        real_tokens_per_row: Real tokens of every sampled row (0 for a rejected row).
        padding_efficiency: Real / padded tokens of the sample's windows as the job would batch them.
    """

    rows: int
    rejected_by_reason: dict[str, int]
    windows_per_row: tuple[int, ...]
    real_tokens_per_row: tuple[int, ...]
    padding_efficiency: float | None


ESTIMATE_JOINS = Joins(held="questions held in memory", keyed="keyed join (docqa run, docqa spark)")
"""The joins a two-table estimate plans with: as many questions as a cluster job takes."""


def measure_sample(
    rows: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, config: QAConfig, total_rows: int
) -> SampleFigures:
    """Validates and featurizes the sampled rows (the engine's host half) and plans their windows."""
    preparer = RowPreparer(tokenizer, config)
    prepared = [item for chunk in preparer.prepare_chunks(rows) for item in chunk]
    windowed = [item for item in prepared if isinstance(item, RowWindows)]
    rejected = Counter(item.reason.value for item in prepared if isinstance(item, Rejection))
    return SampleFigures(
        rows=len(rows),
        rejected_by_reason=dict(sorted(rejected.items())),
        windows_per_row=tuple(len(item.windows) if isinstance(item, RowWindows) else 0 for item in prepared),
        real_tokens_per_row=tuple(
            sum(f.length for f in item.windows) if isinstance(item, RowWindows) else 0 for item in prepared
        ),
        padding_efficiency=_padding_efficiency(
            [f for item in windowed for f in item.windows], config, total_rows / max(len(rows), 1)
        ),
    )


def _padding_efficiency(features: list[Feature], config: QAConfig, scale: float) -> float | None:
    """Real / padded tokens of the windows batched in sort buffers (the sample repeated to fill one)."""
    if not features:
        return None
    size = config.batch.sort_buffer_windows
    expected = max(len(features), int(len(features) * scale))
    if len(features) < size and expected > len(features):
        repeats = math.ceil(min(size, expected) / len(features))
        buffers = [(features * repeats)[: min(size, expected)]]
    else:
        buffers = [features[i : i + size] for i in range(0, len(features), size)]
    real = padded = 0
    for buffer in buffers:
        for group in plan_batches(buffer, config.batch):
            real += sum(f.length for f in group)
            width = padded_length(max(f.length for f in group), config.batch.pad_to_multiple_of)
            padded += width * len(group)
    return real / padded if padded else None


@dataclass(frozen=True)
class Throughput:
    """A processing rate and where it comes from.

    Attributes:
        tokens_per_s: Tokens per second (None when unknown).
        basis: "padded" or "real": which tokens `tokens_per_s` counts.
        source: The bench file and mode, or the assumption made.
        measured: False for a placeholder.
    """

    tokens_per_s: float | None
    basis: str
    source: str
    measured: bool


def read_bench(path: str) -> Throughput:
    """End-to-end throughput from a `docqa bench` JSON (mode `predict`, else `run`).

    Raises:
        InputError: When the file cannot be read or has neither mode.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        results = {r["mode"]: r for r in document["results"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot read bench results {path}: {err}; run docqa bench --json {path}") from err
    mode = next((m for m in BENCH_MODES if m in results), None)
    if mode is None:
        raise InputError(f"{path} has no {' or '.join(BENCH_MODES)} mode; run docqa bench --modes predict")
    result = results[mode]
    argv = " ".join(str(a) for a in document.get("meta", {}).get("argv", []))
    source = f"{path} mode {mode}" + (f" ({argv})" if argv else "")
    if result.get("padded_tokens") and result.get("seconds"):
        return Throughput(result["padded_tokens"] / result["seconds"], "padded", source, True)
    return Throughput(float(result["real_tokens_per_s"]), "real", source, True)


def assumed_gpu(cpu: Throughput) -> Throughput:
    """The placeholder GPU rate: `GPU_ASSUMED_SPEEDUP` times the CPU rate, marked as not measured."""
    if not cpu.tokens_per_s:
        return Throughput(None, cpu.basis, "no GPU bench (pass --gpu-bench) and no CPU rate to scale", False)
    source = f"ASSUMED {GPU_ASSUMED_SPEEDUP:g}x the CPU rate, not measured (pass --gpu-bench)"
    return Throughput(cpu.tokens_per_s * GPU_ASSUMED_SPEEDUP, cpu.basis, source, False)


@dataclass(frozen=True)
class CostEstimate:
    """The extrapolated size and duration of a job.

    Attributes:
        files: Input files.
        row_groups: Row groups over all files.
        rows: Rows (from the footers).
        sampled_rows: Rows tokenized.
        sample_rejected_by_reason: Sampled rows the job would reject, by reason.
        answered_rows: Estimated rows that get an answer.
        windows: Estimated windows.
        real_tokens: Estimated real tokens.
        real_tokens_rel_error: Standard error of the real-token estimate, relative (sampling only).
        padded_tokens: Estimated padded tokens the model computes.
        padding_waste: Estimated padding tokens (padded - real).
        padding_efficiency: Real / padded.
        cpu: CPU throughput used.
        cpu_hours: Estimated hours on the bench's CPU (None without a bench).
        gpu: GPU throughput used.
        gpu_hours: Estimated hours on a GPU (None without a rate).
        two_table: A two-table input's plan (`_run.json` `two_table`: documents, questions, pairs, bad
            inputs), None for one table.
    """

    files: int
    row_groups: int
    rows: int
    sampled_rows: int
    sample_rejected_by_reason: dict[str, int]
    answered_rows: int
    windows: int
    real_tokens: int
    real_tokens_rel_error: float | None
    padded_tokens: int
    padding_waste: int
    padding_efficiency: float | None
    cpu: Throughput
    cpu_hours: float | None
    gpu: Throughput
    gpu_hours: float | None
    two_table: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return asdict(self)

    def format_table(self) -> str:
        """A small plain-text table."""
        rejected = sum(self.sample_rejected_by_reason.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.sample_rejected_by_reason.items())
        error = (
            f" (+-{100 * self.real_tokens_rel_error:.1f}% sampling s.e.)"
            if self.real_tokens_rel_error
            else ""
        )
        lines = [
            f"input           {self.files} files, {self.row_groups} row groups, {self.rows:,} rows",
            *_two_table_lines(self.two_table),
            f"sample          {self.sampled_rows:,} rows tokenized; {rejected} would be rejected"
            + (f" ({reasons})" if reasons else ""),
            f"answered rows   {self.answered_rows:,}",
            f"windows         {self.windows:,}",
            f"real tokens     {self.real_tokens:,}{error}",
            f"padded tokens   {self.padded_tokens:,}",
            f"padding waste   {self.padding_waste:,} tokens"
            + (f" (efficiency {self.padding_efficiency:.1%})" if self.padding_efficiency else ""),
        ]
        for name, rate, hours in (("CPU", self.cpu, self.cpu_hours), ("GPU", self.gpu, self.gpu_hours)):
            if hours is None:
                lines.append(f"hours {name}       n/a ({rate.source})")
            else:
                lines.append(
                    f"hours {name}       {_hours_text(hours)} at {rate.tokens_per_s:,.0f} {rate.basis} "
                    f"tokens/s [{'measured' if rate.measured else 'ASSUMPTION'}: {rate.source}]"
                )
        return "\n".join(lines)


def _two_table_lines(plan: dict[str, Any] | None) -> list[str]:
    """What a two-table input's rows are: the pairs of its documents and questions, and its bad inputs."""
    if plan is None:
        return []
    bad = sum(plan["bad_inputs"].values())
    return [
        f"two tables      {plan['documents']:,} documents, {plan['questions']:,} questions "
        f"({plan['questions_asked_of_every_document']:,} asked of every document): {plan['pairs']:,} pairs"
        + (f", {bad:,} bad inputs {plan['bad_inputs']}" if bad else "")
    ]


def _hours_text(hours: float) -> str:
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:.3g}"


def _hours(rate: Throughput, real: float, padded: float) -> float | None:
    if not rate.tokens_per_s:
        return None
    return (padded if rate.basis == "padded" else real) / rate.tokens_per_s / 3600.0


def estimate(
    config: QAConfig,
    input_pattern: InputSpec,
    *,
    sample: int = 1000,
    bench: str | None = None,
    gpu_bench: str | None = None,
) -> CostEstimate:
    """Estimates rows, windows, tokens, padding and hours of a job over `input_pattern`.

    Args:
        config: The job config (input columns, featurize and batch settings, model for the tokenizer).
        input_pattern: A Parquet file, directory or glob (local or fsspec URL), or two tables
            (`qa_core.io.spec.TwoTables`), whose rows are their pairs.
        sample: Rows to tokenize.
        bench: A `docqa bench` JSON measured on a CPU; without it CPU hours are n/a.
        gpu_bench: A `docqa bench --device cuda` JSON; without it GPU hours are a labelled placeholder.

    Raises:
        ConfigError: When `sample` is below 1.
        InputError: Unreadable input or bench file, or a missing column.
        ModelLoadError: When the tokenizer cannot be loaded.
    """
    if sample < 1:
        raise ConfigError(f"--sample must be at least 1, got {sample}")
    # Planned as a cluster job would: questions beyond input.max_questions take a keyed join there.
    source = open_source(input_pattern, config.input, ESTIMATE_JOINS)
    rows = source.sample(sample)
    # Batches as the job on this machine would plan them (the config's caps, docqa tune's, or the defaults).
    shape = choose_batch_shape(config, describe_model(config.model), resolve_device(config.runtime))
    config = with_batch_shape(dataclasses.replace(config, input=source.columns), shape)
    n = source.row_count
    figures = measure_sample(rows, load_tokenizer(config.model), config, n)
    scale = n / figures.rows if figures.rows else 0.0
    tokens = np.asarray(figures.real_tokens_per_row, dtype=np.float64)
    real = float(tokens.sum()) * scale
    rel_error = None
    if tokens.size > 1 and tokens.sum() > 0 and figures.rows < n:
        finite = math.sqrt(1 - figures.rows / n)  # finite-population correction
        rel_error = float(tokens.std(ddof=1) / math.sqrt(tokens.size) / tokens.mean() * finite)
    efficiency = figures.padding_efficiency
    padded = real / efficiency if efficiency else real
    cpu = read_bench(bench) if bench else Throughput(None, "padded", "no CPU bench (pass --bench)", False)
    gpu = read_bench(gpu_bench) if gpu_bench else assumed_gpu(cpu)
    rejected = sum(figures.rejected_by_reason.values())
    return CostEstimate(
        files=len(source.files),
        row_groups=len(read_layout(list(source.files)).row_groups),
        rows=n,
        sampled_rows=figures.rows,
        sample_rejected_by_reason=figures.rejected_by_reason,
        answered_rows=round((figures.rows - rejected) * scale),
        windows=round(sum(figures.windows_per_row) * scale),
        real_tokens=round(real),
        real_tokens_rel_error=rel_error,
        padded_tokens=round(padded),
        padding_waste=round(padded - real),
        padding_efficiency=efficiency,
        cpu=cpu,
        cpu_hours=_hours(cpu, real, padded),
        gpu=gpu,
        gpu_hours=_hours(gpu, real, padded),
        two_table=source.details().get("two_table"),
    )
