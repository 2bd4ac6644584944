"""`docqa bench --modes host`: what one process spends per row on everything but the model's forward.

The engine runs a whole `docqa predict` job with an instant forward (`InstantRunner`: random logits of
the batch's shape, no model), so its time is the host half a device would have to wait for:
read, validate, tokenize, windows, plan and collate, decode, assemble, write. Beside it, each stage is
timed alone over the same rows (one pass each, in the engine's order), and the tokenizer alone gives the
floor: every (question, context) pair encoded, and each distinct context encoded once with the questions.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer as BackendTokenizer

from qa_core.config import QAConfig
from qa_core.engine.contained import run_batch_contained
from qa_core.engine.host import RowPreparer, plan_buffer
from qa_core.io.read import iter_rows
from qa_core.records import Record
from qa_core.runtime.fit import ModelLimits
from qa_core.runtime.runner import ModelRunner
from qa_core.stages.batch import Batch, collate
from qa_core.stages.tokenizer import Tokenizer

MICROSECONDS = 1e6


@dataclasses.dataclass
class InstantRunner:
    """A `ModelRunner` over a real one's tokenizer whose forward makes logits without running a model.

    It does not compute on this host (`computes_on_host` False: no heap trim is due after its batches);
    the bench runs it with no prefetch thread, so the host work is timed in one thread as it adds up.
    """

    tokenizer: Tokenizer
    model_id: str
    revision: str
    device: torch.device
    pad_token_id: int
    limits: ModelLimits
    computes_on_host: bool = False
    _generator: torch.Generator = dataclasses.field(
        default_factory=lambda: torch.Generator().manual_seed(0), repr=False
    )

    @classmethod
    def over(cls, runner: ModelRunner) -> InstantRunner:
        """The instant stand-in of `runner`: its tokenizer, names and limits, the CPU as device."""
        return cls(
            runner.tokenizer,
            runner.model_id,
            runner.revision,
            torch.device("cpu"),
            runner.pad_token_id,
            runner.limits,
        )

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P) float32 start and end logits drawn from a seeded normal distribution.

        Not zeros: equal logits tie every candidate, and the decoder settles ties with a full sort that
        real logits almost never need, which would time a case a model does not produce.
        """
        shape = batch.input_ids.shape
        return torch.randn(shape, generator=self._generator), torch.randn(shape, generator=self._generator)


def bench_host(
    model: ModelRunner, config: QAConfig, rows: list[dict[str, Any]], workdir: Path
) -> dict[str, Any]:
    """The engine's host cost per row with an instant forward, its split by stage, the tokenizer floor."""
    from qa_core.jobs.predict import predict

    source = workdir / "input.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    runtime = dataclasses.replace(config.runtime, prefetch_buffers=0)  # one thread: the costs add up
    config = dataclasses.replace(config, runtime=runtime)
    instant = InstantRunner.over(model)
    started = time.perf_counter()
    info = predict(config, str(source), str(workdir / "host"), overwrite=True, progress=False, model=instant)
    seconds = time.perf_counter() - started
    counts = info["counts"]
    answered = info["timings"]["answer_seconds"]
    stages = _stage_seconds(instant, config, source)
    per_row = {name: value / len(rows) * MICROSECONDS for name, value in stages.items()}
    per_row["assemble, write and the rest"] = answered / len(rows) * MICROSECONDS - sum(per_row.values())
    pairs, distinct = _tokenizer_floor(model.tokenizer, rows)
    return {
        "seconds": seconds,
        "real_tokens": counts["real_tokens"],
        "padded_tokens": counts["padded_tokens"],
        "host_us_per_row": answered / len(rows) * MICROSECONDS,
        "host_stages_us_per_row": per_row,
        "tokenizer_pairs_us_per_row": pairs / len(rows) * MICROSECONDS,
        "tokenizer_distinct_us_per_row": distinct / len(rows) * MICROSECONDS,
        "distinct_contexts": len({row["context"] for row in rows}),
    }


def _stage_seconds(runner: InstantRunner, config: QAConfig, source: Path) -> dict[str, float]:
    """Each stage alone over the same rows, one pass each, fed the previous stage's output."""
    seconds: dict[str, float] = {}
    read = _timed(seconds, "read", lambda: list(iter_rows([str(source)], config.input)))
    preparer = RowPreparer(runner.tokenizer, config)
    validated = _timed(seconds, "validate", lambda: [preparer.validate(row, i) for i, row in enumerate(read)])
    records = [item for item in validated if isinstance(item, Record)]
    featurized = _timed(seconds, "tokenize and windows", lambda: preparer.featurize(records))
    buffer = _timed(seconds, "plan batches", lambda: plan_buffer(list(featurized), config))
    pad, multiple = runner.pad_token_id, config.batch.pad_to_multiple_of
    batches = _timed(seconds, "collate", lambda: [collate(group, pad, multiple) for group in buffer.groups])
    # The engine's own batch step (forward, decode, failures contained): with the instant forward's random
    # logits, its time is the decoder's.
    _timed(seconds, "decode", lambda: [run_batch_contained(runner, b, config) for b in batches])
    return seconds


def _timed(seconds: dict[str, float], name: str, step: Callable[[], Any]) -> Any:
    """Runs `step`, adds its seconds under `name`, returns its result."""
    started = time.perf_counter()
    result = step()
    seconds[name] = time.perf_counter() - started
    return result


def _tokenizer_floor(tokenizer: Tokenizer, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds of the tokenizer alone: every (question, context) pair, and each distinct context once.

    The second figure adds the questions encoded alone: what a job must tokenize at the least.
    """
    # A copy without the truncation and padding a loader may have set: the encoding work alone.
    backend = BackendTokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    questions = [str(row["question"] or "") for row in rows]
    contexts = [str(row["context"] or "") for row in rows]
    started = time.perf_counter()
    backend.encode_batch(list(zip(questions, contexts, strict=True)))
    pairs = time.perf_counter() - started
    started = time.perf_counter()
    backend.encode_batch(list(dict.fromkeys(contexts)), add_special_tokens=False)
    backend.encode_batch(questions, add_special_tokens=False)
    return pairs, time.perf_counter() - started
