"""The sections of a job's config: one frozen, checked dataclass per stage.

`FeaturizeConfig`, `BatchConfig`, `DecodeConfig`, `ModelConfig` and `RuntimeConfig` here, `InputConfig`
and `OutputConfig` (with the output's fixed columns) in `qa_core.config_io`, are the sections of
`qa_core.config.QAConfig`; each checks its own values when built and says in one line what to change.
configs/base.yaml lists every key with its default and meaning. This module holds data only: loading
and layering are in `qa_core.config`, the generic machinery in `qa_core.config_layers`, and `docqa
train`'s section in `qa_core.config_train`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from qa_core.config_layers import BUNDLED
from qa_core.errors import ConfigError

DEFAULT_MODEL = str(Path(__file__).resolve().parent / "models" / "docqa-minilm-l6-squad")
"""The bundled default model: trained by `docqa train`, package data of `qa_core` (in the wheel too)."""

Dtype = Literal["fp32", "bf16", "fp16"]
Quantize = Literal["none", "int8"]
Implementation = Literal["auto", "native", "transformers"]
Device = Literal["auto", "cpu", "cuda"]
WorkerModels = Literal["per_worker", "shared"]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class FeaturizeConfig:
    """How a (question, context) record is cut into token windows.

    Attributes:
        max_seq_len: Tokens per window, question and special tokens included (384: SQuAD-length
            contexts fit in one window while attention cost stays moderate).
        doc_stride: Overlap between consecutive windows, in tokens (128: an answer of up to
            `max_answer_len` tokens near a boundary is whole in at least one window).
        min_context_tokens: Context tokens every window keeps room for. A question is read whole when
            it leaves this room, else it is cut to leave it (counted as `questions_cut`); must exceed
            `doc_stride`, so consecutive windows always advance.
        max_question_len: An explicit cap on question tokens (longer questions are cut and counted);
            None (the default): as long as `min_context_tokens` allows.
        max_context_chars: Longer contexts are rejected (`CONTEXT_TOO_LONG`); None means no limit.
    """

    max_seq_len: int = 384
    doc_stride: int = 128
    min_context_tokens: int = 160
    max_question_len: int | None = None
    max_context_chars: int | None = None

    def __post_init__(self) -> None:
        _require(self.max_seq_len >= 8, f"featurize.max_seq_len must be >= 8, got {self.max_seq_len}")
        _require(self.doc_stride >= 0, f"featurize.doc_stride must be >= 0, got {self.doc_stride}")
        _require(
            self.max_question_len is None or self.max_question_len >= 1,
            "featurize.max_question_len must be >= 1 or null (the whole question)",
        )
        # Windows advance by `min_context_tokens - doc_stride` tokens at least: the tokenizer cannot move
        # on when the context room does not exceed the overlap.
        _require(
            self.doc_stride < self.min_context_tokens,
            f"featurize.doc_stride ({self.doc_stride}) must be smaller than featurize.min_context_tokens "
            f"({self.min_context_tokens}), or windows could not advance; lower doc_stride or raise "
            "min_context_tokens",
        )
        # The window must also hold the special tokens (at most 4 for common encoders) and a question token.
        _require(
            self.min_context_tokens <= self.max_seq_len - 5,
            f"featurize.min_context_tokens ({self.min_context_tokens}) leaves no room for the question in "
            f"a {self.max_seq_len}-token window (at most max_seq_len - 5 = {self.max_seq_len - 5})",
        )
        _require(
            self.max_context_chars is None or self.max_context_chars >= 1,
            "featurize.max_context_chars must be >= 1 or null",
        )


# Small batches span fewer window lengths, so they waste less padding on a CPU; GPU configs raise both.
# 8 windows is the safest cap over the three 2-core CPUs measured (docqa tune, benchmarks/RESULTS.md):
# within 2% of the fastest on an AVX-512 Xeon and an AVX512-BF16 AMD EPYC (16 fastest there) and 7% off
# on an AVX2-only AMD EPYC (4 fastest), where 16 ran 13% and 32 31% slower than the fastest.
DEFAULT_BATCH_WINDOWS = 8
"""Windows per forward pass on a CPU when neither the config, `docqa tune` nor a probe says otherwise."""
DEFAULT_BATCH_TOKENS = 3072
"""Padded tokens per forward pass on a CPU (8 windows of 384) when neither config, tune nor probe says."""
GPU_DEFAULT_BATCH_WINDOWS = 32
"""Windows per forward pass on a GPU without a setting or a tuning (GPU configs set far more)."""
GPU_DEFAULT_BATCH_TOKENS = 8192
"""Padded tokens per forward pass on a GPU without a setting or a tuning."""


@dataclass(frozen=True)
class BatchConfig:
    """How windows are grouped into padded batches.

    Attributes:
        max_batch_windows: At most this many windows per forward pass; None (the default): the shape
            `docqa tune` chose for this machine, model and dtype, else `DEFAULT_BATCH_WINDOWS` on a
            CPU and `GPU_DEFAULT_BATCH_WINDOWS` on a GPU (`qa_core.runtime.shapes`).
        max_batch_tokens: At most this many padded tokens (windows x padded length) per forward pass;
            None: as for `max_batch_windows` (`DEFAULT_BATCH_TOKENS` untuned).
        pad_to_multiple_of: Padded length is the batch's longest window rounded up to this (tensor cores
            and oneDNN kernels prefer multiples of 8).
        sort_buffer_windows: Windows buffered and sorted by length before batching; bigger buffers give
            less padding, at the cost of memory and latency.
        probe_min_rows: A job of at least this many rows that leaves the caps unset, on a machine with
            no tuned shape for its model, device and dtype, first probes the forward at a few shapes
            (`docqa tune`'s measurement, shortened: 10-30 s on a 2-core CPU) and keeps the fastest for
            every later job here (`_run.json` `batch_shape.source: probed`); 0: never probe.
    """

    max_batch_windows: int | None = None
    max_batch_tokens: int | None = None
    pad_to_multiple_of: int = 8
    sort_buffer_windows: int = 2048
    probe_min_rows: int = 20_000

    def __post_init__(self) -> None:
        _require(self.probe_min_rows >= 0, "batch.probe_min_rows must be >= 0 (0: never probe)")
        _require(
            self.max_batch_windows is None or self.max_batch_windows >= 1,
            "batch.max_batch_windows must be >= 1 or null (chosen for the machine)",
        )
        _require(self.pad_to_multiple_of >= 1, "batch.pad_to_multiple_of must be >= 1")
        _require(self.sort_buffer_windows >= 1, "batch.sort_buffer_windows must be >= 1")
        _require(
            self.max_batch_tokens is None or self.max_batch_tokens >= 1,
            "batch.max_batch_tokens must be >= 1 or null (chosen for the machine)",
        )

    @property
    def windows_cap(self) -> int:
        """`max_batch_windows`, or the untuned default when it is not set."""
        return DEFAULT_BATCH_WINDOWS if self.max_batch_windows is None else self.max_batch_windows

    @property
    def tokens_cap(self) -> int:
        """`max_batch_tokens`, or the untuned default when it is not set."""
        return DEFAULT_BATCH_TOKENS if self.max_batch_tokens is None else self.max_batch_tokens


TEMPERATURE_RANGE = (1e-3, 1e3)
"""The `decode.temperature` values accepted (calibrated models land between 0.5 and 3)."""


@dataclass(frozen=True)
class DecodeConfig:
    """How spans are chosen from logits.

    Attributes:
        max_answer_len: Longest answer in tokens (`j < i + max_answer_len`).
        top_k: Answers returned per row (a `top_k` list column is written when > 1).
        n_best: Candidates kept per window; the score's softmax runs over these (see README).
        handle_no_answer: Compare the best span with the null (CLS) score; on for SQuAD 2.0-style models.
        null_threshold: Answer "" when `null_score - best_span_score > null_threshold`.
        temperature: Softmax temperature of `score`; set from the model's `calibration.json` when
            `calibration` is `auto` (see `docqa calibrate`).
        calibration: `auto` applies the model's calibration file if it has one; `off` keeps
            `temperature` as configured.
    """

    max_answer_len: int = 30
    top_k: int = 1
    n_best: int = 20
    handle_no_answer: bool = False
    null_threshold: float = 0.0
    temperature: float = 1.0
    calibration: Literal["auto", "off"] = "auto"

    def __post_init__(self) -> None:
        _require(self.max_answer_len >= 1, "decode.max_answer_len must be >= 1")
        # Scores are softmax(logits / T): below the range the division overflows (1e-320 gives inf - inf
        # = NaN) and the score is a hard max anyway; above it every candidate scores the same.
        _require(
            TEMPERATURE_RANGE[0] <= self.temperature <= TEMPERATURE_RANGE[1],
            f"decode.temperature must be between {TEMPERATURE_RANGE[0]} and {TEMPERATURE_RANGE[1]}, got "
            f"{self.temperature}",
        )
        _require(
            math.isfinite(self.null_threshold),
            f"decode.null_threshold must be a finite number, got {self.null_threshold}",
        )
        _require(self.top_k >= 1, "decode.top_k must be >= 1")
        _require(
            self.n_best >= self.top_k,
            f"decode.n_best ({self.n_best}) must be >= decode.top_k ({self.top_k})",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint to load and how.

    Attributes:
        name_or_path: A local directory or a Hugging Face hub id (hub ids need a network). `bundled`
            (the default) is the model installed with the package (`DEFAULT_MODEL`), resolved to its
            absolute path on each machine: a config sent to workers (Beam, Spark, worker processes)
            names their own installed copy, and the config hash is the same everywhere. Write
            `./bundled` for a local directory of that name.
        revision: Hub revision (branch, tag or commit); ignored for local directories.
        dtype: Weights and activations dtype; logits are cast to fp32 before decoding.
        quantize: `int8`: dynamic int8 quantization of the linear layers, a CPU fast path that needs
            fp32 weights and a CPU device (`runtime.device`).
        allow_pickle: Allow `.bin` (pickle) checkpoints, which can run arbitrary code when loaded.
        trust_remote_code: Allow model code from the checkpoint's repository.
        implementation: Which loader runs the model (`qa_core.runtime.loaders`). `auto`: a local
            checkpoint certified for docqa's own encoder (its `docqa_native.json`: the bundled model, what
            `docqa train` saves) runs on that encoder and `tokenizers`, without importing transformers
            (seconds less per command); any other checkpoint through transformers. `native` refuses an
            uncertified checkpoint; `transformers` always uses transformers.
    """

    name_or_path: str = DEFAULT_MODEL
    revision: str | None = None
    dtype: Dtype = "fp32"
    quantize: Quantize = "none"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    implementation: Implementation = "auto"

    def __post_init__(self) -> None:
        _require(bool(self.name_or_path), "model.name_or_path must not be empty")
        if self.name_or_path == BUNDLED:
            object.__setattr__(self, "name_or_path", DEFAULT_MODEL)  # frozen: set once, while building
        _require(self.dtype in get_args(Dtype), f"model.dtype must be one of {get_args(Dtype)}")
        _require(self.quantize in get_args(Quantize), f"model.quantize must be one of {get_args(Quantize)}")
        _require(
            self.implementation in get_args(Implementation),
            f"model.implementation must be one of {get_args(Implementation)}",
        )
        _require(
            self.quantize == "none" or self.dtype == "fp32",
            "model.quantize=int8 runs with fp32 weights: set model.dtype=fp32 or model.quantize=none",
        )

    @property
    def is_bundled(self) -> bool:
        """Whether this is the bundled model (of this machine's installation)."""
        return self.name_or_path == DEFAULT_MODEL

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickles the bundled model as `bundled`, so the unpickling machine resolves its own copy.

        The launcher's site-packages path means nothing on a Dataflow, Flink or Spark worker whose
        docqa is installed elsewhere (an image, another venv).
        """
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        if self.is_bundled:
            values[0] = BUNDLED
        return (type(self), tuple(values))


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the job runs: device, worker processes, host-side prefetching.

    Attributes:
        device: `auto` takes CUDA when available, else the CPU.
        require_gpu: Fail at start instead of running on the CPU when no GPU is usable.
        workers: `docqa predict` processes answering contiguous row ranges (`--workers N` wins over it).
        worker_models: With several workers: `per_worker`, each worker loads its own model copy;
            `shared`, one device server process holds the model and runs every worker's forwards (one
            CUDA context instead of one per worker).
        prefetch_buffers: Sort buffers read, tokenized and planned ahead by a background thread while the
            model runs; each costs the memory of one buffer. 0 prepares each buffer only when the model is
            idle; null (auto) means 1 when the forward runs off this process's CPU (a GPU, a device
            server) and 0 otherwise, where the thread would only compete with the model for the cores.
        host_tuning: Whether the command-line jobs (`docqa predict`, `run`, `spark`, their worker processes
            and executors) tune the processes they answer in (`qa_core.runtime.host_tuning`: glibc's
            malloc thresholds and heap trimming after CPU batches, oneDNN's per-shape cache caps, Arrow on
            the system allocator; a setting in the environment wins). false leaves every process as it
            started. The Python API changes its caller's process only when asked (`tune_host=True`).
        context_cache_mb: Memory for tokenized contexts kept across featurize calls by each engine (a
            process, a worker, a Beam or Spark task), so a context asked several questions anywhere in
            its stretch of the input is tokenized once (`qa_core.stages.context_cache`); least recently
            used out first. 0 still tokenizes each context once per featurize call (of
            `RowPreparer.chunk_rows` rows). Never changes an answer.
    """

    device: Device = "auto"
    require_gpu: bool = False
    workers: int = 1
    worker_models: WorkerModels = "per_worker"
    prefetch_buffers: int | None = None
    host_tuning: bool = True
    context_cache_mb: int = 256

    def __post_init__(self) -> None:
        _require(self.device in get_args(Device), f"runtime.device must be one of {get_args(Device)}")
        _require(
            self.context_cache_mb >= 0,
            f"runtime.context_cache_mb must be >= 0 (0: no cache across calls), got {self.context_cache_mb}",
        )
        _require(self.workers >= 1, f"runtime.workers must be >= 1, got {self.workers}")
        _require(
            self.worker_models in get_args(WorkerModels),
            f"runtime.worker_models must be one of {get_args(WorkerModels)}",
        )
        _require(
            self.prefetch_buffers is None or self.prefetch_buffers >= 0,
            "runtime.prefetch_buffers must be >= 0 or null (auto)",
        )
