"""Row assembly: a record, the candidates of its windows and their failures become its one result.

`assemble_row` is the rule (a failed window rejects the row with `MODEL_ERROR`, else the candidates are
aggregated into the answer); `RowAssembler` is the join that waits until a row's record and every one of
its windows have arrived, in any order. `QAEngine` and the Beam job (`pipelines.stages.MergeWindows`)
both answer rows through it.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qa_core.config import DecodeConfig
from qa_core.records import Answer, Reason, Record, Rejection, WindowCandidates
from qa_core.stages.aggregate import AggregateError, aggregate

ALL_CANDIDATES = 1 << 30  # a `top_k` that keeps every candidate of a row


def with_all_candidates(decode: DecodeConfig) -> DecodeConfig:
    """`decode` returning every candidate of a row in `top_k`, at temperature 1 (`docqa calibrate`).

    The answer and its raw `logit_score` are unchanged; `top_k` then holds exactly the candidate set the
    row's `score` is a softmax over.
    """
    return dataclasses.replace(decode, top_k=ALL_CANDIDATES, n_best=ALL_CANDIDATES, temperature=1.0)


def assemble_row(
    record: Record, candidates: Sequence[WindowCandidates], failures: Sequence[str], decode: DecodeConfig
) -> Answer | Rejection:
    """The row's answer, or its `MODEL_ERROR` rejection when a window failed or the windows do not add up."""
    if failures:
        return record.reject(Reason.MODEL_ERROR, failures[0])
    try:
        return aggregate(record, candidates, decode)
    except AggregateError as err:
        return record.reject(Reason.MODEL_ERROR, str(err))


@dataclass(frozen=True)
class WindowFailure:
    """A window whose forward pass failed even alone; its row becomes a `MODEL_ERROR` rejection."""

    row_key: str
    error: str
    window_index: int  # counted by the join: a row is complete when each of its windows has arrived


@dataclass(frozen=True)
class RowPieces:
    """What has arrived of a row that is not complete (the Beam job merges these across bundles)."""

    row_key: str
    record: Record | None
    candidates: tuple[WindowCandidates, ...]
    failures: tuple[str, ...]


class RowAssembler:
    """Joins records, window candidates and window failures into one result per row.

    Args:
        decode: The decode config the answers are aggregated with.
    """

    def __init__(self, decode: DecodeConfig) -> None:
        self._decode = decode
        self._records: dict[str, tuple[Record, int]] = {}
        self._candidates: dict[str, list[WindowCandidates]] = defaultdict(list)
        self._failures: dict[str, list[WindowFailure]] = defaultdict(list)

    def add_record(self, record: Record, n_windows: int) -> Answer | Rejection | None:
        """The record of a row with `n_windows` windows; returns its result if all windows are in."""
        self._records[record.row_key] = (record, n_windows)
        return self._complete(record.row_key)

    def add_candidates(self, candidates: WindowCandidates) -> Answer | Rejection | None:
        """One window's candidates; returns the row's result if this completes it."""
        self._candidates[candidates.row_key].append(candidates)
        return self._complete(candidates.row_key)

    def add_failure(self, failure: WindowFailure) -> Answer | Rejection | None:
        """One window's failure; returns the row's result (a rejection) if this completes it."""
        self._failures[failure.row_key].append(failure)
        return self._complete(failure.row_key)

    def add_windows(
        self, candidates: Iterable[WindowCandidates], failures: Iterable[WindowFailure]
    ) -> list[Answer | Rejection]:
        """Many windows at once; returns the rows they complete."""
        done = [self.add_candidates(c) for c in candidates] + [self.add_failure(f) for f in failures]
        return [result for result in done if result is not None]

    def take_incomplete(self) -> list[RowPieces]:
        """Every row still missing its record or a window, by key, and a fresh start."""
        keys = sorted(set(self._records) | set(self._candidates) | set(self._failures))
        pieces = [
            RowPieces(
                key,
                self._records[key][0] if key in self._records else None,
                tuple(self._candidates.get(key, ())),
                tuple(f.error for f in self._failures.get(key, ())),
            )
            for key in keys
        ]
        self._records.clear()
        self._candidates.clear()
        self._failures.clear()
        return pieces

    def _complete(self, key: str) -> Answer | Rejection | None:
        expected = self._records.get(key)
        if expected is None:
            return None
        candidates = self._candidates.get(key, ())
        failures = self._failures.get(key, ())
        arrived = len(candidates) + len(failures)
        # Complete when each window index has arrived (a duplicate does not count): with fewer arrivals it
        # cannot be, and with one it is one index, so the set of indices is built only when it can tell.
        if arrived < expected[1]:
            return None
        if arrived > 1:
            indices = {c.window_index for c in candidates}
            indices.update(f.window_index for f in failures)
            if len(indices) < expected[1]:
                return None
        record, _ = self._records.pop(key)
        self._candidates.pop(key, None)
        self._failures.pop(key, None)
        return assemble_row(record, candidates, [f.error for f in failures], self._decode)
