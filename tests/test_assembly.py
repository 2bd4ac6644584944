"""`RowAssembler`, the join of records, window candidates and failures, against a plain model of its rule.

The rule: a row is answered by the arrival that gives it its record and every window index (duplicates do
not count), in any order; what is left when the pieces are taken is every row still missing something.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from qa_core.config import DecodeConfig
from qa_core.engine.assembly import RowAssembler, WindowFailure, assemble_row
from qa_core.records import Answer, Record, Rejection, WindowCandidates

Event = Record | WindowCandidates | WindowFailure


def _candidates(key: str, index: int, n_windows: int, rng: random.Random) -> WindowCandidates:
    start = rng.randint(0, 3)
    return WindowCandidates(
        key, index, n_windows, np.array([start]), np.array([start + 2]), np.array([rng.gauss(0, 1)]), 0.5
    )


def _events(rng: random.Random) -> tuple[list[Event], dict[str, int]]:
    """Records and windows of a few rows, shuffled: some windows twice, some missing, some failed."""
    events: list[Event] = []
    n_windows: dict[str, int] = {}
    for row in range(rng.randint(1, 8)):
        key = f"r{row}"
        n_windows[key] = count = rng.randint(1, 3)
        if rng.random() < 0.9:
            events.append(Record(key, row, "q", "abcdefgh"))
        for index in range(count):
            if rng.random() < 0.1:
                continue  # never arrives: the row stays incomplete
            if rng.random() < 0.15:
                events.append(WindowFailure(key, f"failed {index}", index))
            else:
                events.append(_candidates(key, index, count, rng))
            if rng.random() < 0.15:  # the same window again
                events.append(_candidates(key, index, count, rng))
    rng.shuffle(events)
    return events, n_windows


def _reference(
    events: Sequence[Event], n_windows: dict[str, int], decode: DecodeConfig
) -> tuple[list[tuple[int, Answer | Rejection]], set[str]]:
    """(event position, result) of each completed row, and the keys left incomplete: the rule, slowly."""
    pending: dict[str, list[Event]] = {}
    done: list[tuple[int, Answer | Rejection]] = []
    for position, event in enumerate(events):
        pieces = pending.setdefault(event.row_key, [])
        pieces.append(event)
        records = [e for e in pieces if isinstance(e, Record)]
        windows = {e.window_index for e in pieces if not isinstance(e, Record)}
        if records and len(windows) >= n_windows[event.row_key]:
            candidates = [e for e in pieces if isinstance(e, WindowCandidates)]
            failures = [e.error for e in pieces if isinstance(e, WindowFailure)]
            done.append((position, assemble_row(records[-1], candidates, failures, decode)))
            del pending[event.row_key]  # a later piece of the row starts it afresh
    return done, set(pending)


def test_rows_complete_on_the_arrival_that_completes_them() -> None:
    rng = random.Random(2)
    decode = DecodeConfig(handle_no_answer=True)
    for trial in range(1500):
        events, n_windows = _events(rng)
        assembler = RowAssembler(decode)
        got: list[tuple[int, Answer | Rejection]] = []
        for position, event in enumerate(events):
            if isinstance(event, Record):
                result = assembler.add_record(event, n_windows[event.row_key])
            elif isinstance(event, WindowFailure):
                result = assembler.add_failure(event)
            else:
                result = assembler.add_candidates(event)
            if result is not None:
                got.append((position, result))
        expected, incomplete = _reference(events, n_windows, decode)
        assert got == expected, (trial, events)
        pieces = assembler.take_incomplete()
        assert [p.row_key for p in pieces] == sorted(incomplete), trial
        assert assembler.take_incomplete() == []
