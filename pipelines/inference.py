"""RunInference over `qa_core` with our own ModelHandler.

Beam's Hugging Face handler does not import under transformers 5 (it imports TensorFlow classes), and
its PyTorch keyed-tensor handlers stack fixed-size tensors (variable-length windows would be padded to
`max_seq_len`).

Elements are pre-bucketed lists of windows (`BucketWindows`), so the handler skips Beam's batching. Each
batch is padded, run, and decoded on the worker; only a few span candidates per window leave it, never
the logits. A failing batch is split in halves down to single windows (`run_batch_contained`), so only
windows that fail alone are reported, as `WindowFailure`s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apache_beam.ml.inference.base import ModelHandler

from pipelines import metrics
from qa_core.batch import collate
from qa_core.config import QAConfig
from qa_core.engine import EngineStats, run_batch_contained
from qa_core.model import QAModel, load_qa_model
from qa_core.records import Feature, WindowCandidates


@dataclass(frozen=True)
class WindowFailure:
    """A window whose forward pass failed even alone; its row becomes a `MODEL_ERROR` rejection."""

    row_key: str
    error: str


class QAModelHandler(ModelHandler[Feature, WindowCandidates | WindowFailure, QAModel]):
    """Loads one `QAModel` per worker process (RunInference shares it between DoFn instances).

    Args:
        config: The job config (model section for loading, batch/decode for running).
        model_copies: With a value, the model is shared across the processes of a worker (one GPU
            serving several SDK processes), with this many copies.
    """

    def __init__(self, config: QAConfig, model_copies: int | None = None) -> None:
        super().__init__(model_copies=model_copies)
        self._config = config

    def load_model(self) -> QAModel:
        return load_qa_model(self._config.model)

    def run_inference(
        self,
        batch: Sequence[Feature],
        model: QAModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[WindowCandidates | WindowFailure]:
        padded = collate(list(batch), model.pad_token_id, self._config.batch.pad_to_multiple_of)
        stats = EngineStats()
        candidates, failures = run_batch_contained(model, padded, self._config, stats)
        metrics.inc("batches", stats.batches)
        metrics.inc("real_tokens", stats.real_tokens)
        metrics.inc("padded_tokens", stats.padded_tokens)
        metrics.inc("batch_splits", stats.batch_splits)
        metrics.inc("oom_splits", stats.oom_splits)
        out: list[WindowCandidates | WindowFailure] = list(candidates)
        out.extend(WindowFailure(feature.row_key, error) for feature, error in failures)
        return out

    def get_num_bytes(self, batch: Sequence[Feature]) -> int:
        return sum(int(f.input_ids.nbytes) for f in batch)

    def get_metrics_namespace(self) -> str:
        return metrics.NAMESPACE
