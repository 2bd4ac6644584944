"""Loading a checkpoint safely: its device, its fast tokenizer, its weights, and the revision recorded.

Local directories are checked before anything is loaded (exists, safetensors weights unless
`model.allow_pickle`); the revision in `_run.json` is a content hash for a local directory.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from qa_core.config import ModelConfig, RuntimeConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.heap import cap_onednn_caches
from qa_core.runtime.torch_runner import TORCH_DTYPES, TorchRunner

logger = logging.getLogger(__name__)


def resolve_device(runtime: RuntimeConfig) -> torch.device:
    """The device to run on, failing fast when a GPU is required or asked for but absent.

    Args:
        runtime: The `runtime` section (`device`, `require_gpu`).

    Raises:
        ModelLoadError: `device: cuda` or `require_gpu` without a usable CUDA device.
    """
    has_cuda = torch.cuda.is_available()
    if (runtime.require_gpu or runtime.device == "cuda") and not has_cuda:
        raise ModelLoadError(
            "a GPU is required (runtime.device=cuda or runtime.require_gpu=true) but torch sees no CUDA "
            "device; run on a GPU machine with a CUDA build of torch, or set runtime.device=cpu"
        )
    return torch.device("cuda" if runtime.device in ("auto", "cuda") and has_cuda else "cpu")


def _local_revision(path: Path) -> str:
    """A content hash of a local checkpoint's weights and config, standing in for a hub revision."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + [path / "config.json"]:
        if file.is_file():
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _explain(err: BaseException) -> str:
    """The first line of a loading error, with what to change for the safety switches' refusals."""
    lines = str(err).strip().splitlines()
    first = lines[0].strip() if lines else type(err).__name__
    if "custom code" in str(err) or "trust_remote_code" in str(err):
        return (
            f"{first} (the checkpoint needs its own Python code; set model.trust_remote_code=true only if "
            "you trust its source)"
        )
    if isinstance(err, pickle.UnpicklingError):
        return (
            "its pickle weights hold more than tensors and torch refused to unpickle them (they could run "
            "code); use a safetensors checkpoint"
        )
    return first


def _check_local_checkpoint(config: ModelConfig) -> bool:
    """Fails fast on a missing local directory or unsafe weights; returns whether the model is local."""
    local = Path(config.name_or_path)
    is_local = local.is_dir()
    if not is_local and (local.is_absolute() or config.name_or_path.startswith((".", "~", "models/"))):
        raise ModelLoadError(
            f"model directory {config.name_or_path} does not exist; pass --model with a local checkpoint "
            "directory or a hub id"
        )
    if is_local and not list(local.glob("*.safetensors")) and not config.allow_pickle:
        raise ModelLoadError(
            f"{local} has no .safetensors weights; pickle (.bin) checkpoints can run arbitrary code when "
            "loaded: convert it to safetensors, or set model.allow_pickle=true if you trust it"
        )
    return is_local


def describe_model(config: ModelConfig) -> str:
    """The revision recorded in `_run.json`: a content hash for a local directory, else the hub revision."""
    if _check_local_checkpoint(config):
        return _local_revision(Path(config.name_or_path))
    return config.revision or "main"


def load_tokenizer(config: ModelConfig) -> Any:
    """The checkpoint's fast tokenizer (all a featurizing worker needs).

    Raises:
        ModelLoadError: Missing checkpoint or no fast tokenizer.
    """
    from transformers import AutoTokenizer

    _check_local_checkpoint(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            config.name_or_path, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot load the tokenizer of {config.name_or_path!r}: {_explain(err)}"
        ) from err
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{config.name_or_path} has no fast tokenizer (tokenizer.json); docqa needs one")
    return tokenizer


def _quantize_int8(model: Any) -> Any:
    """Dynamic int8 linear layers of the encoder (weights quantized once, activations per batch).

    The span head (`qa_outputs`, 2 x hidden) stays fp32: it is a negligible share of the compute, and its
    logits are compared across windows and rows, where quantization error shows up directly as changed
    answers.
    """
    encoder_linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith("qa_outputs")
    }
    return torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        model, encoder_linears, dtype=torch.qint8
    )


def load_qa_model(config: ModelConfig, runtime: RuntimeConfig) -> TorchRunner:
    """Loads a QA checkpoint and its fast tokenizer as configured.

    Args:
        config: Which checkpoint, dtype and safety switches (the `model` section).
        runtime: Which device (the `runtime` section).

    On a CPU it also caps ideep's and oneDNN's per-shape caches for this process (`runtime.heap`), unless
    the environment sets them.

    Raises:
        ModelLoadError: Missing checkpoint, pickle weights without `allow_pickle`, no fast tokenizer, or
            a required GPU that is absent.
    """
    from transformers import AutoModelForQuestionAnswering

    device = resolve_device(runtime)
    dtype = TORCH_DTYPES[config.dtype]
    if device.type == "cpu":
        # Before the first forward: the default per-shape caches grow the resident set with the rows.
        cap_onednn_caches()
    tokenizer = load_tokenizer(config)
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(
            config.name_or_path,
            dtype=dtype,
            use_safetensors=None if config.allow_pickle else True,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
        )
    except (OSError, ValueError, pickle.UnpicklingError, SafetensorError) as err:  # corrupt weights too
        raise ModelLoadError(f"cannot load QA model {config.name_or_path!r}: {_explain(err)}") from err
    model.to(device)
    model.eval()  # dropout off: answers must not vary between runs
    if config.quantize == "int8":
        if device.type != "cpu":
            raise ModelLoadError(
                "model.quantize=int8 is a CPU fast path; set runtime.device=cpu or model.quantize=none"
            )
        model = _quantize_int8(model)
    revision = describe_model(config)
    logger.info("loaded %s (%s) on %s as %s", config.name_or_path, revision, device, config.dtype)
    return TorchRunner(model, tokenizer, device, dtype, config.name_or_path, revision)
