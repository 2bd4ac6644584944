"""The transformers loader: any checkpoint `AutoModelForQuestionAnswering` can load, with its fast tokenizer.

It loads what no other loader claims (hub ids, RoBERTa, DistilBERT, pickle weights with
`model.allow_pickle`, a BERT checkpoint without a valid `docqa_native.json`). Its own checks: the
tokenizer is a fast one and the model's (`qa_core.runtime.fit.check_tokenizer_fits_model`), and what
`from_pretrained` completed with random or mismatched weights is refused
(`qa_core.runtime.loaders.shared.check_loaded_weights`).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from qa_core.config import ModelConfig, RuntimeConfig
from qa_core.errors import ModelLoadError
from qa_core.runtime.fit import (
    ModelLimits,
    check_tokenizer_fits_model,
    model_limits,
)
from qa_core.runtime.loaders.shared import (
    check_loaded_weights,
    check_local_checkpoint,
    explain,
    load_torch_runner,
)
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class TransformersLoader:
    """Loads through transformers (`AutoTokenizer`, `AutoConfig`, `AutoModelForQuestionAnswering`)."""

    def refusal(self, model: ModelConfig) -> str | None:
        """None: transformers tries every checkpoint (its own errors say what it cannot load)."""
        return None

    def load_tokenizer(self, model: ModelConfig) -> Tokenizer:
        """The checkpoint's fast tokenizer, checked against the model's config.json.

        Raises:
            ModelLoadError: Missing checkpoint, no fast tokenizer, or not the model's.
        """
        check_local_checkpoint(model)
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        try:
            tokenizer = AutoTokenizer.from_pretrained(
                model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"cannot load the tokenizer of {model.name_or_path!r}: {explain(err)}"
            ) from err
        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise ModelLoadError(
                f"{model.name_or_path} has no fast tokenizer (tokenizer.json); docqa needs one"
            )
        fast: Tokenizer = tokenizer  # transformers' fast tokenizer satisfies the protocol (mypy checks it)
        check_tokenizer_fits_model(fast, _model_config(model), model.name_or_path)
        return fast

    def read_limits(self, model: ModelConfig) -> ModelLimits:
        """The limits from a meta-device skeleton of config.json's model (no weights read)."""
        tokenizer = self.load_tokenizer(model)
        from transformers import AutoModelForQuestionAnswering

        try:
            with torch.device("meta"):  # shapes only: no memory, no initialization cost
                skeleton = AutoModelForQuestionAnswering.from_config(  # type: ignore[no-untyped-call]
                    _model_config(model), trust_remote_code=model.trust_remote_code
                )
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(
                f"cannot build a QA model from the config of {model.name_or_path!r}: {explain(err)}"
            ) from err
        return model_limits(skeleton, tokenizer, model.name_or_path)

    def load(self, model: ModelConfig, runtime: RuntimeConfig) -> ModelRunner:
        """The checkpoint on its device as a `TorchRunner`, refusing random or mismatched weights."""
        return load_torch_runner(model, runtime, self.load_tokenizer, _load_module, "transformers")


def _model_config(model: ModelConfig) -> Any:
    """The checkpoint's config.json as transformers reads it."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model.name_or_path, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the config of {model.name_or_path!r}: {explain(err)}") from err


def _load_module(model: ModelConfig, dtype: torch.dtype) -> Any:
    """`AutoModelForQuestionAnswering.from_pretrained`, refusing random weights."""
    from transformers import AutoModelForQuestionAnswering

    try:
        with _quiet_load(local=Path(model.name_or_path).is_dir()):
            module, info = AutoModelForQuestionAnswering.from_pretrained(
                model.name_or_path,
                dtype=dtype,
                use_safetensors=None if model.allow_pickle else True,
                revision=model.revision,
                trust_remote_code=model.trust_remote_code,
                # Mismatched weights are reported in `info` (and refused below) rather than raised as a
                # RuntimeError whose message points at the report.
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError, SafetensorError) as err:
        # Corrupt weights too; RuntimeError: transformers' "Error(s) in loading state_dict" and the like.
        explained = explain(err)
        if "report" in explained:  # it points at the LOAD REPORT held back above
            explained += " (transformers' load report is logged with --log-level DEBUG)"
        raise ModelLoadError(f"cannot load QA model {model.name_or_path!r}: {explained}") from err
    check_loaded_weights(module, info, model.name_or_path)
    return module


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
