"""The bench's `beam-stock` mode: stock Beam RunInference with its PyTorch keyed-tensor handler.

Windows are padded to `max_seq_len` and batched by Beam (no length sorting); the span is the argmax start
and the best end after it. This is what docqa is compared against, so it deliberately uses none of
docqa's batching or decoding.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qa_core.config import QAConfig
from qa_core.records import Feature
from qa_core.runtime.torch_runner import TorchRunner


def run_beam_stock(
    model: TorchRunner, config: QAConfig, windows: list[Feature], workdir: Path
) -> dict[str, Any]:
    """Beam's PytorchModelHandlerKeyedTensor: windows padded to max_seq_len, Beam's own batching."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerKeyedTensor
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.runners import local_runner

    width = config.featurize.max_seq_len
    examples = []
    for f in windows:
        ids = np.zeros(width, np.int64)
        ids[: f.length] = f.input_ids
        mask = (np.arange(width) < f.length).astype(np.int64)
        types = np.zeros(width, np.int64)
        types[: f.length] = f.token_type_ids
        examples.append(
            {
                "input_ids": torch.from_numpy(ids),
                "attention_mask": torch.from_numpy(mask),
                "token_type_ids": torch.from_numpy(types),
            }
        )
    state = workdir / "state_dict.pt"
    torch.save(model.model.state_dict(), state)
    handler = PytorchModelHandlerKeyedTensor(
        state_dict_path=str(state),
        model_class=type(model.model),
        model_params={"config": model.model.config},
        max_batch_size=32,
    )

    def best_span(result: Any) -> tuple[int, int]:
        start = result.inference["start_logits"].numpy()
        end = result.inference["end_logits"].numpy()
        i = int(start.argmax())
        j = i + int(end[i : i + config.decode.max_answer_len].argmax())
        return i, j

    started = time.perf_counter()
    # The FnApiRunner `docqa run` also uses locally (Beam's DirectRunner would first try to download Prism).
    with beam.Pipeline(runner=local_runner(PipelineOptions())) as p:
        _ = p | beam.Create(examples) | RunInference(handler) | beam.Map(best_span)
    return {
        "seconds": time.perf_counter() - started,
        "real_tokens": sum(f.length for f in windows),
        "padded_tokens": len(windows) * width,
    }
