"""RunInference over `qa_core` with our own ModelHandler.

Beam's Hugging Face handler does not import under transformers 5 (it imports TensorFlow classes), and
its PyTorch keyed-tensor handlers stack fixed-size tensors (variable-length windows would be padded to
`max_seq_len`).

Elements are pre-bucketed batches of windows (`WindowBatch`es from `BucketWindows`), so the handler
skips Beam's batching. Each batch is padded, run, and decoded on the worker; only a few span candidates
per window leave it, never the logits. A failing batch is split in halves down to single windows
(`run_batch_contained`), so only windows that fail alone are reported, as `WindowFailure`s. The rows a
batch completes follow its candidates (`RowDone`), so windows are merged into answers in the same bundle,
without a shuffle (`pipelines.stages.MergeWindows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from apache_beam.ml.inference.base import ModelHandler

from pipelines import metrics
from qa_core.config import QAConfig
from qa_core.engine.assembly import WindowFailure
from qa_core.engine.contained import run_batch_contained
from qa_core.engine.stats import EngineStats
from qa_core.records import Feature, Record, WindowCandidates
from qa_core.runtime.fit import check_config_fits_model
from qa_core.runtime.host_tuning import trimming, tune_host
from qa_core.runtime.loaders import load_runner
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.batch import collate


@dataclass(frozen=True)
class RowDone:
    """A record whose every window has gone through the model, and how many windows it has.

    Emitted by the handler after the candidates of the batch that holds the record's last window, so the
    merge downstream (`MergeWindows`) meets it after all of the row's candidates.
    """

    record: Record
    n_windows: int


@dataclass(frozen=True)
class WindowBatch:
    """One RunInference element: the windows of a batch, and the rows it completes.

    Iterating (and `len`) go over the windows, as RunInference expects of a pre-batched element.

    Attributes:
        features: The batch's windows (one forward pass).
        done: Rows whose last window is in this batch (their other windows are in earlier batches of
            the same sort buffer).
    """

    features: tuple[Feature, ...]
    done: tuple[RowDone, ...] = ()

    def __iter__(self) -> Iterator[Feature]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)


# What a batch gives back: a window's span candidates, a window that failed alone, a row whose windows
# have all been through the model.
InferenceOutput: TypeAlias = WindowCandidates | WindowFailure | RowDone


class QAModelHandler(ModelHandler[Feature, InferenceOutput, ModelRunner]):
    """Loads one `ModelRunner` per worker process (RunInference shares it between DoFn instances).

    With `runtime.host_tuning` the worker process is tuned before the model loads and its heap trimmed
    after CPU batches (`qa_core.runtime.host_tuning`): `docqa run` owns its workers' processes.

    Args:
        config: The job config (model section for loading, batch/decode for running).
        model_copies: With a value, the model is shared across the processes of a worker (one GPU
            serving several SDK processes), with this many copies.
    """

    def __init__(self, config: QAConfig, model_copies: int | None = None) -> None:
        super().__init__(model_copies=model_copies)
        self._config = config

    def load_model(self) -> ModelRunner:
        if self._config.runtime.host_tuning:
            tune_host()
        runner = load_runner(self._config.model, self._config.runtime)
        check_config_fits_model(self._config, runner.limits)  # a worker whose model differs fails here
        return trimming(runner) if self._config.runtime.host_tuning else runner

    def run_inference(
        self,
        batch: Sequence[Feature],
        model: ModelRunner,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[InferenceOutput]:
        padded = collate(list(batch), model.pad_token_id, self._config.batch.pad_to_multiple_of)
        stats = EngineStats()
        candidates, failures = run_batch_contained(model, padded, self._config, stats)
        metrics.inc("batches", stats.batches)
        metrics.inc("real_tokens", stats.real_tokens)
        metrics.inc("padded_tokens", stats.padded_tokens)
        metrics.inc("batch_splits", stats.batch_splits)
        metrics.inc("oom_splits", stats.oom_splits)
        metrics.inc("model_milliseconds", round(stats.model_seconds * 1000))
        out: list[InferenceOutput] = list(candidates)
        out.extend(WindowFailure(f.row_key, error, f.window_index) for f, error in failures)
        if isinstance(batch, WindowBatch):
            out.extend(batch.done)  # after the candidates: see RowDone
        return out

    def get_num_bytes(self, batch: Sequence[Feature]) -> int:
        return sum(int(f.input_ids.nbytes) for f in batch)

    def get_metrics_namespace(self) -> str:
        return metrics.NAMESPACE
