"""The engine loop: rows in, exactly one answer or rejection per row out, in input order.

    rows -> RowPreparer (validate, featurize) -> SortBufferer (plan batches by length)
         -> collate -> run_batch_contained (forward, decode) -> RowAssembler (aggregate) -> results

Rows stream through sort buffers, so memory is bounded by the buffers in flight whatever the input size.
When the forward does not compute on this host's CPU (a GPU, or a device server), the host half of the
next buffers runs in a prefetch thread while the model works on the current one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

from qa_core.config import QAConfig
from qa_core.engine.assembly import RowAssembler, WindowFailure, with_all_candidates
from qa_core.engine.contained import run_batch_contained
from qa_core.engine.host import RowPreparer, SortBuffer, sort_buffers
from qa_core.engine.prefetch import prefetch
from qa_core.engine.stats import EngineStats
from qa_core.records import Answer, Rejection, RowWindows
from qa_core.runtime.fit import check_config_fits_model
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.shapes import configured_shape, with_batch_shape
from qa_core.stages.batch import collate

logger = logging.getLogger(__name__)


class QAEngine:
    """Answers rows with one model runner, in plain Python (`docqa predict`, its workers, calibrate).

    Args:
        runner: Runs the padded batches (`qa_core.runtime.runner.ModelRunner`).
        config: The resolved job config. Its batch caps are what the jobs decided before answering
            (`qa_core.jobs.lifecycle.preflight`: tuned or probed on this machine); unset ones take the
            device's defaults (`batch_shape` says which). The engine reads no per-machine cache.
        candidates: `top_k` answers per row as configured, or `all`: every candidate in `top_k` at
            temperature 1 (what `docqa calibrate` fits on).

    Raises:
        ConfigError: When the config's windows do not fit the model (`qa_core.runtime.fit`).
    """

    def __init__(
        self, runner: ModelRunner, config: QAConfig, *, candidates: Literal["top_k", "all"] = "top_k"
    ) -> None:
        check_config_fits_model(config, runner.limits)  # every window must fit the model
        self.batch_shape = configured_shape(
            config,
            gpu=runner.device.type == "cuda",
            reason="the config sets no batch caps: the device's defaults (docqa tune finds this machine's)",
        )
        config = with_batch_shape(config, self.batch_shape)
        self.runner = runner
        self.config = config
        self.stats = EngineStats()
        self.preparer = RowPreparer(runner.tokenizer, config, self.stats)
        self._decode = config.decode if candidates == "top_k" else with_all_candidates(config.decode)

    def answer_rows(
        self, rows: Iterable[Mapping[str, Any]], first_position: int = 0
    ) -> Iterator[Answer | Rejection]:
        """Answers every row, yielding exactly one `Answer` or `Rejection` per row, in input order.

        Args:
            rows: Input rows (column name -> value).
            first_position: The input position of the first row (a worker's range start): row keys are
                positions in the job's input.
        """
        buffers = sort_buffers(self.preparer.prepare_chunks(rows, first_position), self.config, self.stats)
        depth = self.prefetch_depth
        if depth > 0:
            buffers = prefetch(buffers, depth, name="docqa-featurize")
        for buffer in buffers:
            yield from self.answer_buffer(buffer)

    @property
    def prefetch_depth(self) -> int:
        """Sort buffers prepared ahead: the configured number, or auto.

        Auto is 0 when the forward runs on this process's CPU (a thread would only compete with it for the
        cores), else 1: the host work of the next buffer overlaps the device's work on this one.
        """
        configured = self.config.runtime.prefetch_buffers
        if configured is not None:
            return configured
        return 0 if self.runner.computes_on_host else 1

    def answer_buffer(self, buffer: SortBuffer) -> Iterator[Answer | Rejection]:
        """Runs a sort buffer's batches, then yields its rows' results in input order."""
        assembler = RowAssembler(self._decode)
        pad_id, multiple = self.runner.pad_token_id, self.config.batch.pad_to_multiple_of
        while buffer.groups:
            batch = collate(buffer.groups.popleft(), pad_id, multiple)
            ok, bad = run_batch_contained(self.runner, batch, self.config, self.stats)
            del batch  # its padded arrays, before the next batch's are built
            failures = [WindowFailure(f.row_key, error, f.window_index) for f, error in bad]
            assembler.add_windows(ok, failures)  # no record added yet: completes nothing
        for item in buffer.items:
            if isinstance(item, RowWindows):
                result = assembler.add_record(item.record, len(item.windows))
                if result is None:  # every window was planned into a batch of this buffer
                    raise RuntimeError(f"row {item.record.row_key} is missing windows after its buffer")
                yield self.stats.count_result(result)
            else:
                yield self.stats.count_result(item)
