"""The counters of a run: what the engine saw and did, reported as the `counts` of `_run.json`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qa_core.records import Answer, Rejection

PEAKS = frozenset({"context_cache_peak_bytes"})
"""Counters that combine by their largest value, not their sum."""


@dataclass
class EngineStats:
    """Counters of a run (also the `counts` of `_run.json`).

    Mutable on purpose: every engine piece adds to the one instance of its run. Every counter is a sum
    across processes and parts but the peaks (`PEAKS`), which are the largest any one engine reached.
    """

    rows: int = 0
    answered: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    windows: int = 0
    windows_per_row: Counter[int] = field(default_factory=Counter)
    questions_cut: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batch_splits: int = 0
    oom_splits: int = 0
    model_seconds: float = 0.0
    context_lookups: int = 0
    contexts_tokenized: int = 0
    context_cache_evictions: int = 0
    context_cache_peak_bytes: int = 0
    # Documents a two-table job read from storage (`qa_core.io.pairs`); 0 for one table, whose rows carry
    # their contexts. The input source counts them as the engine pulls rows: a part's share is in its footer.
    documents_read: int = 0

    def count_result(self, result: Answer | Rejection) -> Answer | Rejection:
        """Counts an output row (answered, or rejected by reason) and returns it."""
        if isinstance(result, Answer):
            self.answered += 1
        else:
            self.rejected[result.reason.value] += 1
        return result

    def add(self, other: EngineStats) -> None:
        """Adds another run's counters to these (the worker processes of `docqa predict --workers`)."""
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(value)  # adds counts, unlike dict.update
            elif name in PEAKS:
                setattr(self, name, max(mine, value))
            else:
                setattr(self, name, mine + value)

    def minus(self, earlier: EngineStats) -> EngineStats:
        """The counts added since `earlier` (a copy of these counters taken before): one part's share."""
        delta = EngineStats()
        for name, value in vars(self).items():
            before = getattr(earlier, name)
            # A Counter's difference keeps only positive counts; a peak is the engine's so far.
            setattr(delta, name, value if name in PEAKS else value - before)
        return delta

    def to_state(self) -> dict[str, Any]:
        """All counters as JSON-able data, read back by `from_state` (a part's footer metadata)."""
        return {
            name: {str(k): v for k, v in value.items()} if isinstance(value, Counter) else value
            for name, value in vars(self).items()
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EngineStats:
        """The counters `to_state` wrote.

        Raises:
            ValueError: When `state` is not such a document.
        """
        stats = cls()
        for name, value in vars(stats).items():
            if name not in state:
                raise ValueError(f"no counter {name!r}")
            if isinstance(value, Counter):
                keys = int if name == "windows_per_row" else str
                setattr(stats, name, Counter({keys(k): int(v) for k, v in state[name].items()}))
            else:
                setattr(stats, name, type(value)(state[name]))
        return stats

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able counters."""
        return {
            "rows_read": self.rows,
            "answered": self.answered,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "windows": self.windows,
            "windows_per_row": {str(k): v for k, v in sorted(self.windows_per_row.items())},
            "questions_cut": self.questions_cut,
            "batches": self.batches,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_efficiency": self.real_tokens / self.padded_tokens if self.padded_tokens else None,
            "batch_splits": self.batch_splits,
            "oom_splits": self.oom_splits,
            "model_seconds": round(self.model_seconds, 3),
            "context_lookups": self.context_lookups,
            "contexts_tokenized": self.contexts_tokenized,
            "context_reuse_rate": (
                1 - self.contexts_tokenized / self.context_lookups if self.context_lookups else None
            ),
            "context_cache_evictions": self.context_cache_evictions,
            "context_cache_peak_bytes": self.context_cache_peak_bytes,
            "documents_read": self.documents_read,
        }
