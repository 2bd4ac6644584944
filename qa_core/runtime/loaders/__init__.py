"""Loading a model: one loader module per runtime, chosen per checkpoint by `model.implementation`.

`load_runner(model, runtime)` returns a `qa_core.runtime.runner.ModelRunner`, whatever computes it.
`LOADERS` is the registry, one line per runtime: each loader owns its checks (tokenizer, weights,
config) and says through `refusal` whether a checkpoint is its own. `model.implementation: auto` takes
the first registered loader that accepts the checkpoint, and `FALLBACK` (transformers, which tries
anything) when none does; naming a loader (`native`, `transformers`) takes that one or fails in one
line. What every loader shares (device, local-checkpoint safety, revision, int8, weight checks) is in
`qa_core.runtime.loaders.shared`.

A new runtime (ONNX Runtime, a remote inference server) is one module with a class satisfying
`RuntimeLoader` whose `load` returns its `ModelRunner`, plus one line in `LOADERS`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from qa_core.config import ModelConfig, RuntimeConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.fit import ModelLimits
from qa_core.runtime.loaders.native import NativeLoader
from qa_core.runtime.loaders.native_manifest import MANIFEST_FILE, plain_bert_refusal
from qa_core.runtime.loaders.shared import describe_model, looks_local, resolve_device
from qa_core.runtime.loaders.transformers import TransformersLoader
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "FALLBACK",
    "LOADERS",
    "RuntimeLoader",
    "chosen_loader",
    "describe_model",
    "load_runner",
    "load_tokenizer",
    "model_implementation",
    "read_model_limits",
    "resolve_device",
]


class RuntimeLoader(Protocol):
    """Loads checkpoints for one runtime, with that runtime's own checks."""

    def refusal(self, model: ModelConfig) -> str | None:
        """Why this loader does not take the checkpoint (None: it does). Cheap: reads no weights."""
        ...

    def load_tokenizer(self, model: ModelConfig) -> Tokenizer:
        """The checkpoint's tokenizer, checked against the model (all a featurizing worker needs).

        Raises:
            ModelLoadError: One line saying what is wrong and what to change.
        """
        ...

    def read_limits(self, model: ModelConfig) -> ModelLimits:
        """The model's limits without loading its weights (`qa_core.runtime.fit.check_config_fits_model`)."""
        ...

    def load(self, model: ModelConfig, runtime: RuntimeConfig) -> ModelRunner:
        """The checkpoint ready to run batches on `runtime`'s device.

        Raises:
            ModelLoadError: Anything that would make it answer wrongly, in one line.
        """
        ...


FALLBACK = "transformers"
LOADERS: dict[str, RuntimeLoader] = {
    "native": NativeLoader(),  # a checkpoint certified for docqa's encoder (docqa_native.json)
    FALLBACK: TransformersLoader(),  # anything else
}


def chosen_loader(model: ModelConfig) -> str:
    """The name of the loader that loads `model`.

    Raises:
        ModelLoadError: `model.implementation` names a loader that refuses this checkpoint.
    """
    if model.implementation != "auto":
        refusal = LOADERS[model.implementation].refusal(model)
        if refusal is not None:
            hint = " (certify it: scripts/certify_native.py)" if model.implementation == "native" else ""
            raise ModelLoadError(
                f"model.implementation={model.implementation} cannot load {model.name_or_path}: {refusal}"
                f"{hint}; or set model.implementation=auto"
            )
        return model.implementation
    return next(
        (name for name, loader in LOADERS.items() if name != FALLBACK and loader.refusal(model) is None),
        FALLBACK,
    )


def model_implementation(model: ModelConfig) -> str | None:
    """What runs the configured checkpoint, for `_run.json`: a loader's name (`native`, `transformers`).

    The configured name when one is named; None when the checkpoint is a path this machine does not have
    (remote workers decide from their own copy).
    """
    if model.implementation != "auto":
        return model.implementation
    if not Path(model.name_or_path).is_dir() and looks_local(model.name_or_path):
        return None
    return chosen_loader(model)


def load_runner(model: ModelConfig, runtime: RuntimeConfig) -> ModelRunner:
    """Loads a QA checkpoint as configured, refusing what would answer wrongly.

    Args:
        model: Which checkpoint, dtype, loader and safety switches (the `model` section).
        runtime: Which device (the `runtime` section).

    Raises:
        ModelLoadError: Missing checkpoint, pickle weights without `allow_pickle`, a tokenizer that is
            not the model's, a required GPU that is absent, bf16/fp16 on a CPU without native support
            (`qa_core.runtime.cpu.check_cpu_dtype`), weights that do not fit config.json or leave part of
            the model random, or a named loader that refuses the checkpoint.
    """
    name = chosen_loader(model)
    directory = Path(model.name_or_path)
    uncertified = directory.is_dir() and not (directory / MANIFEST_FILE).exists()
    # A checkpoint that could run on docqa's encoder once certified (an older docqa train's, say).
    if (
        name == FALLBACK
        and model.implementation == "auto"
        and uncertified
        and not plain_bert_refusal(directory)
    ):
        logger.info(
            "%s is a plain BERT QA checkpoint not certified for docqa's encoder, so it loads through "
            "transformers (slower to start); scripts/certify_native.py %s certifies it",
            model.name_or_path,
            model.name_or_path,
        )
    return LOADERS[name].load(model, runtime)


def load_tokenizer(model: ModelConfig) -> Tokenizer:
    """The checkpoint's tokenizer as its loader loads it, checked against the model (no weights read)."""
    return LOADERS[chosen_loader(model)].load_tokenizer(model)


def read_model_limits(model: ModelConfig) -> ModelLimits:
    """The limits of the configured model without loading its weights (a meta-device skeleton).

    For checking a job's config (`qa_core.runtime.fit.check_config_fits_model`) where no model is loaded
    in this process: the parent of `docqa predict --workers N`, the launcher of `docqa run`. Loads and
    checks the tokenizer too.

    Raises:
        ModelLoadError: What `load_tokenizer` raises, or a config.json that builds no QA model.
    """
    return LOADERS[chosen_loader(model)].read_limits(model)
