"""The model contract of the engine: what runs a padded batch, wherever it computes.

The engine (`qa_core.engine`) sees a model only through `ModelRunner`: the tokenizer it featurizes with,
the pad id it collates with, and `forward`, which turns a `Batch` into start and end logits. Runners:

- `qa_core.runtime.torch_runner.TorchRunner`: a torch module in this process (CPU or CUDA), what both
  loaders of `qa_core.runtime.loaders` (docqa's certified encoder, transformers) return.
- `qa_core.runtime.device_server.DeviceClient`: a worker's stand-in that sends the batch to the device
  server process of `docqa predict --workers N` with `runtime.worker_models: shared`.

A new runtime (ONNX Runtime, a remote inference server) is one loader module whose runner has these
members, registered with one line in `qa_core.runtime.loaders`; nothing in the engine changes (its
`limits` may leave `max_positions` None when it cannot tell).
"""

from __future__ import annotations

from typing import Protocol

import torch

from qa_core.runtime.fit import ModelLimits
from qa_core.stages.batch import Batch
from qa_core.stages.tokenizer import Tokenizer

__all__ = ["ModelRunner", "Tokenizer"]


class ModelRunner(Protocol):
    """Runs padded batches of windows through a QA model.

    Attributes:
        tokenizer: The model's fast tokenizer (`qa_core.stages.tokenizer.Tokenizer`).
        model_id: The configured checkpoint name or path (for `_run.json`).
        revision: Its revision: a hub commit, or a content hash of a local directory.
        device: Where the forward computes.
    """

    tokenizer: Tokenizer
    model_id: str
    revision: str
    device: torch.device

    @property
    def pad_token_id(self) -> int:
        """The id written into padding positions."""
        ...

    @property
    def limits(self) -> ModelLimits:
        """What the model accepts: its longest window, whether its windows hold a CLS token.

        A job's config is checked against it before any row is read
        (`qa_core.runtime.fit.check_config_fits_model`).
        """
        ...

    @property
    def computes_on_host(self) -> bool:
        """Whether the forward's activations are this process's host memory (a CPU forward here).

        The engine prepares the next sort buffer in a background thread only when the forward does
        *not* compete with it for this host's cores; a tuned job's runner (`host_tuning.trimming`) trims
        the heap after such a batch.
        """
        ...

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits of `batch`, (B, P) float32 each (on any device).

        Raises:
            DeviceFailedError: The device can run no more batches (the job fails).
            Exception: Any other error fails only this batch; the engine splits it and retries.
        """
        ...
