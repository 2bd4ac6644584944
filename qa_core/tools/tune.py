"""`docqa tune`: time the forward pass at a few batch shapes on this machine and keep the fastest.

A user command over the runtime's measurement (`qa_core.runtime.shape_probe`): it compares the whole
`CANDIDATE_WINDOWS` on windows of half and whole `featurize.max_seq_len`, for as long as asked, and
stores the choice per model, device, dtype, threads and window length (`qa_core.runtime.shapes`); a
job on this machine whose config leaves `batch.max_batch_windows` / `max_batch_tokens` unset uses it.
A large job that finds no entry probes by itself (`qa_core.runtime.shape_probe.probe_for_job`, the
same measurement, shortened); jobs import that from the runtime, never from this module.

The names of the measurement are re-exported here for the callers of earlier releases.
"""

from __future__ import annotations

from qa_core.config import QAConfig
from qa_core.runtime.runner import ModelRunner
from qa_core.runtime.shape_probe import TuneResult, measure_and_store

DEFAULT_SECONDS = 20.0
"""How long `docqa tune` measures unless `--seconds` says otherwise."""


def tune(
    runner: ModelRunner,
    config: QAConfig,
    *,
    seconds: float = DEFAULT_SECONDS,
    store: bool = True,
    probe: bool = False,
) -> TuneResult:
    """Measures the candidates on `runner` and stores the choice for this machine (unless `store` is off).

    Args:
        runner: The model.
        config: The job's config.
        seconds: Time to spend measuring.
        store: Keep the choice in the cache file.
        probe: A job's shortened probe (`PROBE_CANDIDATES`, whole windows) rather than `docqa tune`'s;
            the entry says so (`_run.json` `batch_shape.source: probed`).

    Raises:
        OutputError: When the cache file cannot be written.
    """
    return measure_and_store(runner, config, seconds=seconds, store=store, probe=probe)
