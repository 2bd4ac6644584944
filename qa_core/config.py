"""Typed, frozen configuration for every stage, loaded from layered YAML files and `key=value` overrides.

A config is a tree of frozen dataclasses, one per stage. YAML files hold only per-environment values: each
file is a mapping of section name to a mapping of field to value, later files override earlier ones, and
unknown sections or fields are rejected with the accepted names in the message. The resolved config and
its hash are written beside every output (`_run.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import fsspec
import yaml

from qa_core.errors import ConfigError

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "docqa-minilm-l6-squad")
"""The bundled default model (issue 4): trained by `docqa train`, shipped in `models/`."""

Dtype = Literal["fp32", "bf16", "fp16"]
Quantize = Literal["none", "int8"]
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
        max_question_len: Questions are cut to this many tokens so the context keeps room.
        max_context_chars: Longer contexts are rejected (`CONTEXT_TOO_LONG`); None means no limit.
    """

    max_seq_len: int = 384
    doc_stride: int = 128
    max_question_len: int = 64
    max_context_chars: int | None = None

    def __post_init__(self) -> None:
        _require(self.max_seq_len >= 8, f"featurize.max_seq_len must be >= 8, got {self.max_seq_len}")
        _require(self.max_question_len >= 1, "featurize.max_question_len must be >= 1")
        _require(self.doc_stride >= 0, f"featurize.doc_stride must be >= 0, got {self.doc_stride}")
        # The window must hold the question, the special tokens (at most 4 for common encoders) and more
        # context than the overlap, or the tokenizer cannot advance from one window to the next.
        room = self.max_seq_len - self.max_question_len - 4
        _require(
            self.doc_stride < room,
            f"featurize.doc_stride ({self.doc_stride}) must be smaller than the context room of a window "
            f"(max_seq_len - max_question_len - 4 = {room}); lower doc_stride or max_question_len",
        )
        _require(
            self.max_context_chars is None or self.max_context_chars >= 1,
            "featurize.max_context_chars must be >= 1 or null",
        )


@dataclass(frozen=True)
class BatchConfig:
    """How windows are grouped into padded batches.

    Attributes:
        max_batch_windows: At most this many windows per forward pass.
        max_batch_tokens: At most this many padded tokens (windows x padded length) per forward pass.
        pad_to_multiple_of: Padded length is the batch's longest window rounded up to this (tensor cores
            and oneDNN kernels prefer multiples of 8).
        sort_buffer_windows: Windows buffered and sorted by length before batching; bigger buffers give
            less padding, at the cost of memory and latency.
        prefetch_buffers: Sort buffers read, tokenized and planned ahead by a background thread while the
            model runs; each costs the memory of one buffer. 0 prepares each buffer only when the model is
            idle; null (auto) means 1 on a GPU and 0 on a CPU, where the thread only competes with the
            model for the same cores (measured 2-3% slower on 2 cores).
    """

    # 32 windows / 8192 padded tokens: on SQuAD-like data smaller batches span fewer lengths (padding
    # efficiency 0.962 vs 0.946 at 64 / 16384, measured on 2,000 dev questions); GPU configs raise both.
    max_batch_windows: int = 32
    max_batch_tokens: int = 8192
    pad_to_multiple_of: int = 8
    sort_buffer_windows: int = 2048
    prefetch_buffers: int | None = None

    def __post_init__(self) -> None:
        _require(self.max_batch_windows >= 1, "batch.max_batch_windows must be >= 1")
        _require(self.pad_to_multiple_of >= 1, "batch.pad_to_multiple_of must be >= 1")
        _require(self.sort_buffer_windows >= 1, "batch.sort_buffer_windows must be >= 1")
        _require(self.max_batch_tokens >= 1, "batch.max_batch_tokens must be >= 1")
        _require(
            self.prefetch_buffers is None or self.prefetch_buffers >= 0,
            "batch.prefetch_buffers must be >= 0 or null (auto)",
        )


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
        _require(self.temperature > 0, f"decode.temperature must be > 0, got {self.temperature}")
        _require(self.top_k >= 1, "decode.top_k must be >= 1")
        _require(
            self.n_best >= self.top_k,
            f"decode.n_best ({self.n_best}) must be >= decode.top_k ({self.top_k})",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint to load and how.

    Attributes:
        name_or_path: A local directory or a Hugging Face hub id (hub ids need a network).
        revision: Hub revision (branch, tag or commit); ignored for local directories.
        dtype: Weights and activations dtype; logits are cast to fp32 before decoding.
        quantize: `int8`: dynamic int8 quantization of the linear layers (CPU only), the CPU fast path.
        device: `auto` takes CUDA when available.
        require_gpu: Fail at start instead of running on CPU when no GPU is usable.
        allow_pickle: Allow `.bin` (pickle) checkpoints, which can run arbitrary code when loaded.
        trust_remote_code: Allow model code from the checkpoint's repository.
        worker_models: With `docqa predict --workers N`: `per_worker`, each worker loads its own model
            copy (measured on an H200: 18.6k rows/s with 16 workers); `shared`, one device server process
            holds the model and runs every worker's forwards (one CUDA context instead of N time-sliced
            ones; not yet measured on a GPU).
    """

    name_or_path: str = DEFAULT_MODEL
    revision: str | None = None
    dtype: Dtype = "fp32"
    quantize: Quantize = "none"
    device: Device = "auto"
    require_gpu: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    worker_models: WorkerModels = "per_worker"

    def __post_init__(self) -> None:
        _require(bool(self.name_or_path), "model.name_or_path must not be empty")
        _require(
            self.worker_models in get_args(WorkerModels),
            f"model.worker_models must be one of {get_args(WorkerModels)}",
        )
        _require(self.dtype in get_args(Dtype), f"model.dtype must be one of {get_args(Dtype)}")
        _require(self.device in get_args(Device), f"model.device must be one of {get_args(Device)}")
        _require(self.quantize in get_args(Quantize), f"model.quantize must be one of {get_args(Quantize)}")
        _require(
            self.quantize == "none" or (self.dtype == "fp32" and self.device != "cuda"),
            "model.quantize=int8 runs on CPU with fp32 weights: set model.dtype=fp32 and model.device=cpu",
        )


@dataclass(frozen=True)
class InputConfig:
    """Which input columns hold what.

    Attributes:
        id_column: The row id, copied to the outputs as it is (ids may repeat).
        question_column: The question text.
        context_column: The context text.
        passthrough_columns: Extra input columns copied to answers and rejections.
    """

    id_column: str = "id"
    question_column: str = "question"
    context_column: str = "context"
    passthrough_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [self.id_column, self.question_column, self.context_column]
        _require(len(set(names)) == 3, f"input: id/question/context columns must differ, got {names}")
        clash = set(self.passthrough_columns) & RESERVED_OUTPUT_COLUMNS
        _require(not clash, f"input.passthrough_columns collide with output columns: {sorted(clash)}")

    @property
    def columns(self) -> list[str]:
        """All input columns to read (projection), in a stable order."""
        base = [self.id_column, self.question_column, self.context_column]
        return base + [c for c in self.passthrough_columns if c not in base]


RESERVED_OUTPUT_COLUMNS = frozenset(
    {
        "answer",
        "start",
        "end",
        "score",
        "logit_score",
        "no_answer",
        "null_score_diff",
        "top_k",
        "reason",
        "detail",
    }
)


@dataclass(frozen=True)
class QAConfig:
    """The whole resolved configuration of a job."""

    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data."""
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """A short stable hash of the resolved config (sha256 of its canonical JSON)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_T = TypeVar("_T")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks (and lightly converts) a YAML value against a dataclass field annotation."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        _require(value in args, f"{where}: {value!r} is not one of {list(args)}")
        return value
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        _require(isinstance(value, list | tuple), f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        _require(isinstance(value, bool), f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        _require(
            isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an int, got {value!r}"
        )
        return value
    if annotation is float:
        _require(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{where}: expected a number, got {value!r}",
        )
        return float(value)
    if annotation is str:
        _require(isinstance(value, str), f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def _build_section(cls: type[_T], values: Mapping[str, Any], section: str) -> _T:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    _require(
        not unknown, f"unknown key(s) {sorted(unknown)} in section '{section}'; accepted: {sorted(known)}"
    )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> QAConfig:
    """Builds a `QAConfig` from nested plain data, rejecting unknown sections and keys.

    Args:
        data: `{section: {field: value}}`; missing sections and fields take their defaults.

    Raises:
        ConfigError: On an unknown key, a wrongly typed value or a failed check.
    """
    sections = {f.name: f.type for f in fields(QAConfig)}
    hints = get_type_hints(QAConfig)
    unknown = set(data) - set(sections)
    _require(not unknown, f"unknown config section(s) {sorted(unknown)}; accepted: {sorted(sections)}")
    built: dict[str, Any] = {}
    for name in sections:
        values = data.get(name) or {}
        _require(isinstance(values, Mapping), f"config section '{name}' must be a mapping")
        built[name] = _build_section(hints[name], values, name)
    return QAConfig(**built)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def parse_override(item: str) -> dict[str, Any]:
    """Turns `section.key=value` into `{section: {key: value}}` (the value is parsed as YAML)."""
    key, sep, raw = item.partition("=")
    _require(bool(sep) and "." in key, f"--set expects section.key=value, got {item!r}")
    section, _, name = key.strip().partition(".")
    return {section: {name: yaml.safe_load(raw)}}


def load_config(paths: Iterable[str] = (), overrides: Iterable[str] = ()) -> QAConfig:
    """Loads YAML config files in order, then applies `section.key=value` overrides.

    Args:
        paths: YAML files (local or fsspec URLs); later files override earlier ones.
        overrides: Items such as `decode.top_k=3`.

    Raises:
        ConfigError: When a file cannot be read or parsed, or a value is invalid.
    """
    data: dict[str, Any] = {}
    for path in paths:
        try:
            with fsspec.open(path, "r", encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from err
        _require(isinstance(loaded, Mapping), f"config file {path} must hold a mapping of sections")
        data = _deep_merge(data, loaded)
    for item in overrides:
        data = _deep_merge(data, parse_override(item))
    return config_from_dict(data)


def add_config_arguments(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """Adds `--config` and `--set` (and `--model`), shared by every command that runs a model."""
    if model:
        parser.add_argument("--model", help=f"QA checkpoint directory or hub id (default: {DEFAULT_MODEL})")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file; repeat to layer (later wins)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        dest="overrides",
        help="override one config value, e.g. --set decode.top_k=3; repeatable",
    )


def config_from_arguments(args: argparse.Namespace, *extra: str) -> QAConfig:
    """The config from parsed `--config`/`--set`/`--model` arguments, then `extra` overrides."""
    overrides = list(args.overrides)
    if getattr(args, "model", None):
        overrides.append(f"model.name_or_path={json.dumps(args.model)}")
    return load_config(args.config, [*overrides, *extra])
