"""All docqa Beam counters live in one namespace, so a runner's UI and `_run.json` read them together.

The rows each worker process answered are counted apart (`WORKER_NAMESPACE`, one counter per
`host:pid`), so that they never mix with the engine's counters: `_run.json` shows them as
`beam.rows_per_worker`, which says how the units were spread.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from apache_beam.metrics.metric import Metrics, MetricsFilter

from qa_core.engine.stats import EngineStats

NAMESPACE = "docqa"
WORKER_NAMESPACE = "docqa.rows_per_worker"
# Counter names with a key after the prefix: `rejected_<reason>`, `windows_per_row_<n>`.
REJECTED_PREFIX = "rejected_"
WINDOWS_PER_ROW_PREFIX = "windows_per_row_"


def inc(name: str, value: int = 1) -> None:
    """Adds `value` to the counter `docqa/<name>`."""
    Metrics.counter(NAMESPACE, name).inc(value)


def record_peak(name: str, value: int) -> None:
    """Reports a value whose largest over the job is wanted (`docqa/<name>`, a Beam distribution)."""
    Metrics.distribution(NAMESPACE, name).update(value)


def inc_worker_rows(value: int = 1) -> None:
    """Adds `value` rows to this worker process's counter (`WORKER_NAMESPACE`, named `host:pid`)."""
    Metrics.counter(WORKER_NAMESPACE, f"{socket.gethostname()}:{os.getpid()}").inc(value)


def query_counters(result: Any, namespace: str = NAMESPACE) -> dict[str, int]:
    """Committed (or, where a runner lacks them, attempted) counters of a finished pipeline's `namespace`.

    A distribution (`record_peak`) gives its largest value.
    """
    counters: dict[str, int] = {}
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except (NotImplementedError, AttributeError, KeyError):
        return counters
    for counter in found.get("counters", []):
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value or 0)
    for distribution in found.get("distributions", []):
        value = distribution.committed if distribution.committed is not None else distribution.attempted
        if value is not None and value.count:
            counters[distribution.key.metric.name] = int(value.max)
    return counters


def stats_from_counters(counters: dict[str, int]) -> EngineStats | None:
    """The engine counters the pipeline's Beam counters hold (`pipelines.metrics`), or None without any.

    A runner that reports no metrics gives None: `_run.json` then has the footers' counts only.
    """
    if not counters:
        return None
    stats = EngineStats(
        rows=counters.get("rows_read", 0),
        answered=counters.get("answered", 0),
        windows=counters.get("windows", 0),
        questions_cut=counters.get("questions_cut", 0),
        batches=counters.get("batches", 0),
        real_tokens=counters.get("real_tokens", 0),
        padded_tokens=counters.get("padded_tokens", 0),
        batch_splits=counters.get("batch_splits", 0),
        oom_splits=counters.get("oom_splits", 0),
        model_seconds=counters.get("model_milliseconds", 0) / 1000,
        context_lookups=counters.get("context_lookups", 0),
        contexts_tokenized=counters.get("contexts_tokenized", 0),
        context_cache_evictions=counters.get("context_cache_evictions", 0),
        context_cache_peak_bytes=counters.get("context_cache_peak_bytes", 0),
        documents_read=counters.get("documents_read", 0),
    )
    for name, value in counters.items():
        if name.startswith(REJECTED_PREFIX):
            stats.rejected[name.removeprefix(REJECTED_PREFIX)] += value
        elif name.startswith(WINDOWS_PER_ROW_PREFIX):
            stats.windows_per_row[int(name.removeprefix(WINDOWS_PER_ROW_PREFIX))] += value
    return stats
