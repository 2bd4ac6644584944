"""What every loader shares: the device, local-checkpoint safety, the revision, int8, weight checks.

Local directories are checked before anything is loaded (exists, safetensors weights unless
`model.allow_pickle`); the revision in `_run.json` is a content hash for a local directory. Every weight
of the model must come from the checkpoint with the shape its config gives (no randomly initialized
encoder or QA head), whichever loader read it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qa_core.config import ModelConfig, RuntimeConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.cpu import check_cpu_dtype
from qa_core.runtime.fit import check_padding_fits_model
from qa_core.runtime.torch_runner import TORCH_DTYPES, TorchRunner
from qa_core.stages.tokenizer import Tokenizer

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


def local_revision(path: Path) -> str:
    """A content hash of a local checkpoint's weights and config, standing in for a hub revision.

    Hashed once per process while the files keep their sizes and modification times (a job's checks
    and its model load both ask).
    """
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + [path / "config.json"]
    stamps = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())
    return _content_hash(stamps)


@functools.lru_cache(maxsize=16)
def _content_hash(stamps: tuple[tuple[str, int, int], ...]) -> str:
    """`sha256:` of the files' names and contents, in order (`stamps`: path, size, mtime of each)."""
    digest = hashlib.sha256()
    for name, _, _ in stamps:
        digest.update(Path(name).name.encode())
        with open(name, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def looks_local(name_or_path: str) -> bool:
    """Whether a name that is no directory here is still meant as a local path (not a hub id)."""
    return Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~", "models/"))


def check_local_checkpoint(config: ModelConfig) -> bool:
    """Fails fast on a missing local directory or unsafe weights; returns whether the model is local.

    Raises:
        ModelLoadError: A path that does not exist, or pickle weights without `model.allow_pickle`.
    """
    local = Path(config.name_or_path)
    is_local = local.is_dir()
    if not is_local and looks_local(config.name_or_path):
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
    if check_local_checkpoint(config):
        return local_revision(Path(config.name_or_path))
    return config.revision or "main"


def explain(err: BaseException) -> str:
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


def place_model(model: Any, config: ModelConfig, device: torch.device) -> Any:
    """The loaded module on its device, in eval mode, int8-quantized when `model.quantize` asks.

    Raises:
        ModelLoadError: `model.quantize=int8` off the CPU.
    """
    model.to(device)
    model.eval()  # dropout off: answers must not vary between runs
    if config.quantize != "int8":
        return model
    if device.type != "cpu":
        raise ModelLoadError(
            "model.quantize=int8 is a CPU fast path; set runtime.device=cpu or model.quantize=none"
        )
    return quantize_int8(model)


def load_torch_runner(
    model: ModelConfig,
    runtime: RuntimeConfig,
    tokenizer: Callable[[ModelConfig], Tokenizer],
    module: Callable[[ModelConfig, torch.dtype], Any],
    implementation: str,
) -> TorchRunner:
    """A torch checkpoint as a `TorchRunner`: what every torch loader does around building its module.

    The device (a CPU must run the dtype natively), the tokenizer, the module in the configured dtype,
    the pad id checked against the model, the module placed (eval, int8), the revision, one log line.

    Args:
        model: The `model` section.
        runtime: The `runtime` section (the device).
        tokenizer: The loader's tokenizer, checked against the model.
        module: Builds the loader's module in a dtype, refusing random or mismatched weights.
        implementation: What built it, for the log line.
    """
    device = resolve_device(runtime)
    if device.type == "cpu":
        check_cpu_dtype(model.dtype)
    loaded_tokenizer = tokenizer(model)
    dtype = TORCH_DTYPES[model.dtype]
    built = module(model, dtype)
    check_padding_fits_model(loaded_tokenizer, built, model.name_or_path)
    placed = place_model(built, model, device)
    revision = describe_model(model)
    logger.info(
        "loaded %s (%s) on %s as %s, with %s",
        model.name_or_path,
        revision,
        device,
        model.dtype,
        implementation,
    )
    return TorchRunner(placed, loaded_tokenizer, device, dtype, model.name_or_path, revision)


def quantize_int8(model: Any) -> Any:
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


def _listed(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def check_loaded_weights(model: Any, info: dict[str, Any], name: str) -> None:
    """Refuses a model that loading completed with random weights (its loading info).

    transformers 5 initializes at random what the checkpoint lacks (`missing_keys`: a base model without
    a trained `qa_outputs` head, more layers in config.json than in the weights) and, with
    `ignore_mismatched_sizes`, what it holds in another shape (`mismatched_keys`: config.json's
    hidden_size / num_labels / vocab_size disagreeing with the weights); the native loader reports the
    same keys. There is no use for a random QA head or encoder layer in inference. Checkpoint weights the
    model has no place for (`unexpected_keys`) are refused when they are layers of a stack the model
    builds shorter (config.json with fewer layers than the weights); others (a pooler, a pretraining
    head) are ignored with a warning.

    Raises:
        ModelLoadError: One line naming the checkpoint, the first weights concerned, and what to change.
    """
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda item: str(item[0]))
    if mismatched:
        key, stored, built = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ModelLoadError(
            f"the weights of {name} do not fit its config.json: {key} is {list(stored)} in the checkpoint "
            f"but {list(built)} by config.json{more}; use the config.json saved with these weights "
            "(its hidden_size, num_labels, vocab_size, ... must match them)"
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        if any(key.startswith("qa_outputs") for key in missing):
            what = "it has no trained QA head (a base model, not fine-tuned for question answering?)"
        elif 2 * len(missing) >= len(model.state_dict()):
            what = "its weights are not for the model its config.json builds (another model_type?)"
        else:
            what = "config.json builds weights the checkpoint lacks (more layers than it was saved with?)"
        raise ModelLoadError(
            f"{name} is not a complete QA checkpoint: {what}; {_listed(missing, 2)} would be random; "
            "use a checkpoint fine-tuned for extractive QA, with the config.json saved with it"
        )
    unexpected = sorted(info.get("unexpected_keys") or [])
    modules = dict(model.named_modules())
    in_stacks = [key for key in unexpected if _in_shorter_stack(key, modules)]
    if in_stacks:
        raise ModelLoadError(
            f"the weights of {name} hold layers its config.json does not build ({_listed(in_stacks, 2)}): "
            "config.json has fewer layers than the checkpoint; use the config.json saved with these weights"
        )
    if unexpected:
        logger.warning(
            "%s: ignored %d checkpoint weights the model has no place for (%s)",
            name,
            len(unexpected),
            _listed(unexpected),
        )


def _in_shorter_stack(key: str, modules: dict[str, Any]) -> bool:
    """Whether the nearest module of `key` that the model has is a layer stack (a ModuleList/Dict)."""
    parts = key.split(".")[:-1]
    for end in range(len(parts), 0, -1):
        module = modules.get(".".join(parts[:end]))
        if module is not None:
            return isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict))
    return False
