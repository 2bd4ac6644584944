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

NAMESPACE = "docqa"
WORKER_NAMESPACE = "docqa.rows_per_worker"
# Counter names with a key after the prefix: `rejected_<reason>`, `windows_per_row_<n>`.
REJECTED_PREFIX = "rejected_"
WINDOWS_PER_ROW_PREFIX = "windows_per_row_"


def inc(name: str, value: int = 1) -> None:
    """Adds `value` to the counter `docqa/<name>`."""
    Metrics.counter(NAMESPACE, name).inc(value)


def inc_worker_rows(value: int = 1) -> None:
    """Adds `value` rows to this worker process's counter (`WORKER_NAMESPACE`, named `host:pid`)."""
    Metrics.counter(WORKER_NAMESPACE, f"{socket.gethostname()}:{os.getpid()}").inc(value)


def query_counters(result: Any, namespace: str = NAMESPACE) -> dict[str, int]:
    """Committed (or, where a runner lacks them, attempted) counters of a finished pipeline's `namespace`."""
    counters: dict[str, int] = {}
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except (NotImplementedError, AttributeError, KeyError):
        return counters
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value or 0)
    return counters
