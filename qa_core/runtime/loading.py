"""Loading a checkpoint safely: its device, its fast tokenizer, its weights, and the revision recorded.

Local directories are checked before anything is loaded (exists, safetensors weights unless
`model.allow_pickle`); the revision in `_run.json` is a content hash for a local directory. What loads is
checked against the model before any row is read: the tokenizer must be the model's own
(`qa_core.runtime.fit`), every weight of the model must come from the checkpoint with the shape its
config gives (no randomly initialized encoder or QA head), and a bf16/fp16 model on a CPU needs native
support for it (`qa_core.runtime.cpu`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from qa_core.config import ModelConfig, RuntimeConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.cpu import check_cpu_dtype
from qa_core.runtime.fit import (
    ModelLimits,
    check_padding_fits_model,
    check_tokenizer_fits_model,
    model_limits,
)
from qa_core.runtime.heap import cap_onednn_caches, fix_malloc_thresholds
from qa_core.runtime.native_checkpoint import (
    build_native_model,
    load_native_tokenizer,
    load_native_weights,
    read_native_config,
    uses_native,
)
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
    """The checkpoint's fast tokenizer (all a featurizing worker needs), checked against the model.

    Raises:
        ModelLoadError: Missing checkpoint, no fast tokenizer, or a tokenizer that is not the model's
            (no tokenizer files, far fewer tokens than the model's embeddings, ids or segment ids beyond
            them: `qa_core.runtime.fit.check_tokenizer_fits_model`).
    """
    _check_local_checkpoint(config)
    return _load_tokenizer(config, uses_native(config))


def _load_tokenizer(config: ModelConfig, native: bool) -> Any:
    """`load_tokenizer` once the loading path is decided (`uses_native`, read once per load)."""
    if native:
        tokenizer: Any = load_native_tokenizer(Path(config.name_or_path))
        check_tokenizer_fits_model(tokenizer, _model_config(config, native), config.name_or_path)
        return tokenizer
    from transformers import AutoTokenizer

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
    check_tokenizer_fits_model(tokenizer, _model_config(config, native), config.name_or_path)
    return tokenizer


def _model_config(config: ModelConfig, native: bool) -> Any:
    """The checkpoint's config.json: transformers' config, or its attributes for a native checkpoint."""
    if native:
        return read_native_config(Path(config.name_or_path))
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            config.name_or_path, revision=config.revision, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the config of {config.name_or_path!r}: {_explain(err)}") from err


def read_model_limits(config: ModelConfig) -> ModelLimits:
    """The limits of the configured model without loading its weights (a meta-device skeleton).

    For checking a job's config (`qa_core.runtime.fit.check_config_fits_model`) where no model is loaded
    in this process: the parent of `docqa predict --workers N`, the launcher of `docqa run`. Loads and
    checks the tokenizer too (`load_tokenizer`).

    Raises:
        ModelLoadError: What `load_tokenizer` raises, or a config.json that builds no QA model.
    """
    _check_local_checkpoint(config)
    native = uses_native(config)
    tokenizer = _load_tokenizer(config, native)
    if native:
        return model_limits(
            build_native_model(Path(config.name_or_path), meta=True), tokenizer, config.name_or_path
        )
    from transformers import AutoModelForQuestionAnswering

    model_config = _model_config(config, native)
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialization cost
            skeleton = AutoModelForQuestionAnswering.from_config(  # type: ignore[no-untyped-call]
                model_config, trust_remote_code=config.trust_remote_code
            )
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(
            f"cannot build a QA model from the config of {config.name_or_path!r}: {_explain(err)}"
        ) from err
    return model_limits(skeleton, tokenizer, config.name_or_path)


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


class _LoadReport(logging.Filter):
    """Holds back transformers' multi-line LOAD REPORT table: docqa says what matters in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" in message:
            self.reports.append(message)
            return False
        return True


@contextlib.contextmanager
def _quiet_load(local: bool) -> Iterator[_LoadReport]:
    """Holds back what `from_pretrained` prints besides errors, so a refusal is one line on stderr.

    Its LOAD REPORT table (logged again at DEBUG level here), and for a local directory its "Loading
    weights" bar (a hub id keeps it: it shows the download).
    """
    from transformers.utils import logging as hf_logging

    source = logging.getLogger("transformers.modeling_utils")
    held = _LoadReport()
    source.addFilter(held)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    if local and bar_was_on:
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield held
    finally:
        if local and bar_was_on:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        source.removeFilter(held)
        for report in held.reports:
            logger.debug("%s", report)


def _listed(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def _check_loaded_weights(model: Any, info: dict[str, Any], name: str) -> None:
    """Refuses a model that `from_pretrained` completed with random weights (its loading info).

    transformers 5 initializes at random what the checkpoint lacks (`missing_keys`: a base model without
    a trained `qa_outputs` head, more layers in config.json than in the weights) and, with
    `ignore_mismatched_sizes`, what it holds in another shape (`mismatched_keys`: config.json's
    hidden_size / num_labels / vocab_size disagreeing with the weights). There is no use for a random QA
    head or encoder layer in inference. Checkpoint weights the model has no place for (`unexpected_keys`)
    are refused when they are layers of a stack the model builds shorter (config.json with fewer
    layers than the weights); others (a pooler, a pretraining head) are ignored with a warning.

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


def load_qa_model(config: ModelConfig, runtime: RuntimeConfig) -> TorchRunner:
    """Loads a QA checkpoint and its fast tokenizer as configured, refusing what would answer wrongly.

    Args:
        config: Which checkpoint, dtype and safety switches (the `model` section).
        runtime: Which device (the `runtime` section).

    On a CPU it also caps ideep's and oneDNN's per-shape caches for this process (`runtime.heap`), unless
    the environment sets them.

    Raises:
        ModelLoadError: Missing checkpoint, pickle weights without `allow_pickle`, no fast tokenizer or
            not the model's (`load_tokenizer`), a required GPU that is absent, bf16/fp16 on a CPU without
            native support (`qa_core.runtime.cpu.check_cpu_dtype`), weights that do not fit config.json or
            leave part of the model (the QA head, an encoder layer) randomly initialized.
    """
    device = resolve_device(runtime)
    dtype = TORCH_DTYPES[config.dtype]
    if device.type == "cpu":
        check_cpu_dtype(config.dtype)
        # Before the first forward: the default per-shape caches grow the resident set with the rows.
        cap_onednn_caches()
        fix_malloc_thresholds()  # the forward's activations stay mapped between batches
    _check_local_checkpoint(config)
    native = uses_native(config)
    tokenizer = _load_tokenizer(config, native)
    model = _load_native_model(config, dtype) if native else _load_transformers_model(config, dtype)
    check_padding_fits_model(tokenizer, model, config.name_or_path)
    model.to(device)
    model.eval()  # dropout off: answers must not vary between runs
    if config.quantize == "int8":
        if device.type != "cpu":
            raise ModelLoadError(
                "model.quantize=int8 is a CPU fast path; set runtime.device=cpu or model.quantize=none"
            )
        model = _quantize_int8(model)
    revision = describe_model(config)
    logger.info(
        "loaded %s (%s) on %s as %s, with %s",
        config.name_or_path,
        revision,
        device,
        config.dtype,
        "docqa's BERT encoder" if native else "transformers",
    )
    return TorchRunner(model, tokenizer, device, dtype, config.name_or_path, revision)


def _load_native_model(config: ModelConfig, dtype: torch.dtype) -> Any:
    """A plain BERT QA checkpoint on `qa_core.runtime.native_bert`, checked as transformers' would be."""
    directory = Path(config.name_or_path)
    model = build_native_model(directory).to(dtype)
    try:
        info = load_native_weights(model, directory)
    except (OSError, SafetensorError) as err:
        raise ModelLoadError(f"cannot load QA model {config.name_or_path!r}: {_explain(err)}") from err
    _check_loaded_weights(model, info, config.name_or_path)
    return model


def _load_transformers_model(config: ModelConfig, dtype: torch.dtype) -> Any:
    """Any other checkpoint through `AutoModelForQuestionAnswering`, refusing random weights."""
    from transformers import AutoModelForQuestionAnswering

    try:
        with _quiet_load(local=Path(config.name_or_path).is_dir()):
            model, info = AutoModelForQuestionAnswering.from_pretrained(
                config.name_or_path,
                dtype=dtype,
                use_safetensors=None if config.allow_pickle else True,
                revision=config.revision,
                trust_remote_code=config.trust_remote_code,
                # Mismatched weights are reported in `info` (and refused below) rather than raised as a
                # RuntimeError whose message points at the report.
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError) as err:
        # Corrupt weights too; RuntimeError: transformers' "Error(s) in loading state_dict" and the like.
        explained = _explain(err)
        if "report" in explained:  # it points at the LOAD REPORT held back above
            explained += " (transformers' load report is logged with --log-level DEBUG)"
        raise ModelLoadError(f"cannot load QA model {config.name_or_path!r}: {explained}") from err
    _check_loaded_weights(model, info, config.name_or_path)
    return model
