"""Batch shapes for this machine: measured once here, every later job here uses the choice.

The fastest cap on windows per forward pass depends on the CPU, the model and the dtype, so no one
default fits every machine (the figures per CPU: benchmarks/RESULTS.md). The measurement
(`qa_core.runtime.shape_probe`, run by `docqa tune` or by a large job itself) stores the fastest in a
cache file, keyed by what decides it: the model's revision, the device (the CPU's capability and
flags, or the GPU's name), the dtype and quantization, the torch threads and version, and the window
length. A job of `batch.probe_min_rows` rows or more that finds no entry probes first
(`qa_core.runtime.shape_probe.probe_for_job`) and stores its choice under the same key.

`choose_batch_shape` gives a job its caps: the config's when it sets them (a user's setting always
wins), else the tuned or probed entry for this key, else the device's defaults (`DEFAULT_BATCH_WINDOWS` /
`DEFAULT_BATCH_TOKENS` on a CPU, the larger `GPU_DEFAULT_*` on a GPU). The choice and its reason are
logged and written to `_run.json` (`batch_shape`).

The cache lives in `$DOCQA_CACHE_DIR`, else `$XDG_CACHE_HOME/docqa`, else `~/.cache/docqa`
(`batch_shapes.json`); a cache that cannot be read is ignored with a warning. This module and the
measurement are the runtime layer: they import nothing of jobs, io, tools or train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from qa_core.config import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_BATCH_WINDOWS,
    GPU_DEFAULT_BATCH_TOKENS,
    GPU_DEFAULT_BATCH_WINDOWS,
    QAConfig,
)
from qa_core.errors import OutputError
from qa_core.runtime.cpu import probe_cpu

logger = logging.getLogger(__name__)

CACHE_FILE = "batch_shapes.json"
CACHE_DIR_ENV = "DOCQA_CACHE_DIR"


@dataclass(frozen=True)
class BatchShape:
    """The batch caps a job runs with, and why.

    Attributes:
        max_batch_windows: Windows per forward pass.
        max_batch_tokens: Padded tokens per forward pass.
        source: `config` (set by the user), `tuned` (`docqa tune` on this machine), `probed` (a large
            job's probe on this machine: `qa_core.runtime.shape_probe.probe_for_job`) or `default`.
        reason: One sentence for the log and `_run.json`.
    """

    max_batch_windows: int
    max_batch_tokens: int
    source: Literal["config", "tuned", "probed", "default"]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`_run.json` `batch_shape`)."""
        return dataclasses.asdict(self)


def cache_dir() -> Path:
    """Where tuned shapes are kept (see the module docstring)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "docqa"


def shape_key(config: QAConfig, revision: str, device: torch.device) -> dict[str, Any]:
    """What decides the fastest shape: the model, the device, the dtype, the threads and the window length."""
    hardware: dict[str, Any]
    if device.type == "cuda":
        # (A runner may name a CUDA device it never uses, as tests do: the name is then unknown.)
        hardware = {"gpu": torch.cuda.get_device_name(device) if torch.cuda.is_available() else "unknown"}
    else:
        cpu = probe_cpu()
        hardware = {"cpu": cpu.capability, "arch": cpu.architecture, "flags": list(cpu.flags)}
    return {
        "model_revision": revision,
        "device": device.type,
        **hardware,
        "dtype": config.model.dtype,
        "quantize": config.model.quantize,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "max_seq_len": config.featurize.max_seq_len,
        "pad_to_multiple_of": config.batch.pad_to_multiple_of,
    }


def _key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("ignoring the tuned batch shapes in %s: %s", path, err)
        return {}
    return document if isinstance(document, dict) else {}


def read_tuned(key: dict[str, Any]) -> dict[str, Any] | None:
    """The tuned entry for `key`, or None when this machine has none."""
    entry = _read_cache(cache_dir() / CACHE_FILE).get(_key_id(key))
    return entry if isinstance(entry, dict) and entry.get("key") == key else None


def store_tuned(key: dict[str, Any], entry: dict[str, Any]) -> Path:
    """Stores a tuned entry for `key` (replacing an older one) and returns the cache file.

    Raises:
        OutputError: When the cache file cannot be written.
    """
    path = cache_dir() / CACHE_FILE
    document = _read_cache(path)
    document[_key_id(key)] = {**entry, "key": key}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", "utf-8")
        temporary.replace(path)  # atomic: a job reading the cache never sees half a file
    except OSError as err:
        raise OutputError(f"cannot write the tuned batch shapes to {path}: {err.strerror or err}") from err
    return path


def choose_batch_shape(config: QAConfig, revision: str, device: torch.device) -> BatchShape:
    """The caps for a job on `device` with the model of `revision`: the config's, tuned, or the defaults."""
    windows, tokens = config.batch.max_batch_windows, config.batch.max_batch_tokens
    if windows is not None and tokens is not None:
        return BatchShape(windows, tokens, "config", "batch.max_batch_windows and max_batch_tokens are set")
    tuned = read_tuned(shape_key(config, revision, device))
    if tuned is not None:
        probed = tuned.get("origin") == "probe"
        by = "a job's probe" if probed else "docqa tune"
        return BatchShape(
            windows if windows is not None else int(tuned["max_batch_windows"]),
            tokens if tokens is not None else int(tuned["max_batch_tokens"]),
            "probed" if probed else "tuned",
            f"{by} chose it on this machine ({tuned.get('tuned_at', 'unknown time')}; "
            f"{cache_dir() / CACHE_FILE})",
        )
    reason = "no tuned shape for this machine, model and dtype; run docqa tune once to find its fastest"
    if config.batch.probe_min_rows:
        reason += f" (jobs of {config.batch.probe_min_rows}+ rows probe it themselves: batch.probe_min_rows)"
    return configured_shape(config, device.type == "cuda", reason)


def default_caps(gpu: bool) -> tuple[int, int]:
    """The untuned (windows, tokens) caps of a CPU or a GPU."""
    if gpu:
        return GPU_DEFAULT_BATCH_WINDOWS, GPU_DEFAULT_BATCH_TOKENS
    return DEFAULT_BATCH_WINDOWS, DEFAULT_BATCH_TOKENS


def with_batch_shape(config: QAConfig, shape: BatchShape) -> QAConfig:
    """`config` with the shape's caps set (what the batch planner then reads)."""
    batch = dataclasses.replace(
        config.batch, max_batch_windows=shape.max_batch_windows, max_batch_tokens=shape.max_batch_tokens
    )
    return dataclasses.replace(config, batch=batch)


def configured_shape(config: QAConfig, gpu: bool, reason: str) -> BatchShape:
    """The config's caps, each unset one the untuned default of a CPU or a GPU (no machine cache read).

    Args:
        config: The job's config.
        gpu: Whether the defaults are a GPU's.
        reason: Why no tuned shape applies, for the log and `_run.json` when a default is taken.
    """
    windows, tokens = config.batch.max_batch_windows, config.batch.max_batch_tokens
    if windows is not None and tokens is not None:
        return BatchShape(windows, tokens, "config", "batch.max_batch_windows and max_batch_tokens are set")
    default_windows, default_tokens = default_caps(gpu)
    return BatchShape(
        windows if windows is not None else default_windows,
        tokens if tokens is not None else default_tokens,
        "default",
        reason,
    )
