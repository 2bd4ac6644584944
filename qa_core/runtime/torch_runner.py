"""The torch runner: a QA module in this process that runs padded batches.

The module is docqa's certified encoder (`qa_core.runtime.native_bert.NativeBertForQA`) or a transformers
`AutoModelForQuestionAnswering`: a head of two learned vectors (S, E) over the encoder's token states
gives `start_logits` and `end_logits`, shape (B, P). `TorchRunner` implements
`qa_core.runtime.runner.ModelRunner` over it; `qa_core.runtime.loaders.load_runner` builds one.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from qa_core.runtime.fit import ModelLimits, model_limits
from qa_core.stages.batch import Batch
from qa_core.stages.tokenizer import Tokenizer

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# SDPA backends allowed on CUDA: all but cuDNN attention. On Hopper, torch picks cuDNN attention for
# bf16/fp16 with a padding mask, and cuDNN builds an execution plan for every new (B, P) batch shape.
# docqa's batches come in dozens of shapes and its forward is a small share of a job's time, so the
# one-time plan builds cost far more than cuDNN's warm speed-up returns (H200 figures in
# benchmarks/RESULTS.md). `sdpa_kernel` sets torch's process-wide flags and restores them on exit:
# threads that overlap their forwards can leave cuDNN allowed for a batch (only a speed difference,
# never a different result beyond rounding).
CUDA_ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class TorchRunner:
    """A loaded QA model with its tokenizer, device and dtype (the torch `ModelRunner`).

    Attributes:
        model: The QA module, in eval mode.
        tokenizer: Its fast tokenizer.
        device: Where the model runs.
        dtype: Weight dtype.
        model_id: The configured name or path.
        revision: Hub commit, or a content hash for a local directory.
    """

    model: Any
    tokenizer: Tokenizer
    device: torch.device
    dtype: torch.dtype
    model_id: str
    revision: str

    def __post_init__(self) -> None:
        params = inspect.signature(self.model.forward).parameters
        # DistilBERT/RoBERTa-style models take no segment ids.
        self._takes_token_types = "token_type_ids" in params
        self._limits: ModelLimits | None = None

    @property
    def limits(self) -> ModelLimits:
        """What the model accepts (`qa_core.runtime.fit.check_config_fits_model`), read once from it."""
        if self._limits is None:
            self._limits = model_limits(self.model, self.tokenizer, self.model_id)
        return self._limits

    @property
    def computes_on_host(self) -> bool:
        """Whether the forward runs on this host's CPU (its activations are this process's memory)."""
        return self.device.type == "cpu"

    @property
    def pad_token_id(self) -> int:
        """Id used for padding positions."""
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else 0

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits of a batch, (B, P) float32 each, on the model's device."""
        on_gpu = self.device.type == "cuda"

        def to_device(array: Any) -> torch.Tensor:
            tensor = torch.from_numpy(array)
            # Pinned host memory lets the copy overlap with compute on CUDA.
            return tensor.pin_memory().to(self.device, non_blocking=True) if on_gpu else tensor

        inputs = {
            "input_ids": to_device(batch.input_ids),
            "attention_mask": to_device(batch.attention_mask),
        }
        if self._takes_token_types:
            inputs["token_type_ids"] = to_device(batch.token_type_ids)
        backends = sdpa_kernel(CUDA_ATTENTION_BACKENDS) if on_gpu else contextlib.nullcontext()
        with torch.inference_mode(), backends:
            output = self.model(**inputs)
        return output.start_logits.float(), output.end_logits.float()
