"""All docqa Beam counters live in one namespace, so a runner's UI and `_run.json` read them together."""

from __future__ import annotations

from typing import Any

from apache_beam.metrics.metric import Metrics, MetricsFilter

NAMESPACE = "docqa"
# Counter names with a key after the prefix: `rejected_<reason>`, `windows_per_row_<n>`.
REJECTED_PREFIX = "rejected_"
WINDOWS_PER_ROW_PREFIX = "windows_per_row_"


def inc(name: str, value: int = 1) -> None:
    """Adds `value` to the counter `docqa/<name>`."""
    Metrics.counter(NAMESPACE, name).inc(value)


def query_counters(result: Any) -> dict[str, int]:
    """Committed (or, where a runner lacks them, attempted) docqa counters of a finished pipeline."""
    counters: dict[str, int] = {}
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except (NotImplementedError, AttributeError, KeyError):
        return counters
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + int(value or 0)
    return counters
