"""The nouns of the data flow, defined once.

rows (dicts) -> `Record` or `Rejection` (validate) -> `Feature`, one tokenized window (featurize) ->
`Batch` of padded windows (batch) -> logits (model) -> `WindowCandidates` (decode) -> `Answer` (aggregate).

A row is identified inside the engine by `row_key`, unique per input row; the user's `id` may repeat and
is only carried to the outputs. Every engine (predict, its workers, the Beam job, calibrate, estimate,
bench) keys a row by its position in the job's input (`row_key`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt


def row_key(position: int) -> str:
    """The engine key of the row at `position` (0-based, counted over all input files in order).

    Positions are unique within a job (worker processes and Beam row groups know their first row), and
    the same input gives the same keys, so batch planning is deterministic.
    """
    return str(position)


class Reason(StrEnum):
    """Stable reason codes of rejected rows (part of the output contract; never rename one)."""

    MISSING_ID = "MISSING_ID"
    MISSING_QUESTION = "MISSING_QUESTION"
    MISSING_CONTEXT = "MISSING_CONTEXT"
    INVALID_QUESTION_TYPE = "INVALID_QUESTION_TYPE"
    INVALID_CONTEXT_TYPE = "INVALID_CONTEXT_TYPE"
    EMPTY_QUESTION = "EMPTY_QUESTION"
    EMPTY_CONTEXT = "EMPTY_CONTEXT"
    CONTEXT_TOO_LONG = "CONTEXT_TOO_LONG"
    QUESTION_TOO_LONG = "QUESTION_TOO_LONG"
    NO_CONTEXT_TOKENS = "NO_CONTEXT_TOKENS"
    FEATURIZE_ERROR = "FEATURIZE_ERROR"
    MODEL_ERROR = "MODEL_ERROR"
    # Two-table inputs (`qa_core.io.pairs`): a bad document or question, one rejection each.
    MISSING_DOC_ID = "MISSING_DOC_ID"
    DUPLICATE_DOC_ID = "DUPLICATE_DOC_ID"
    MISSING_QUESTION_ID = "MISSING_QUESTION_ID"
    DUPLICATE_QUESTION_ID = "DUPLICATE_QUESTION_ID"
    UNKNOWN_DOC_ID = "UNKNOWN_DOC_ID"


class RejectedRow(dict[str, Any]):
    """An input row already rejected where the input was planned: validation rejects it with its reason.

    A two-table job's bad documents and questions (a null or repeated key, a question whose document does
    not exist) are found before any work, each put in the job's rows as one of these (`qa_core.io.pairs`),
    so that it is written, counted and resumed as any other rejected row.

    Args:
        row: The row's columns, as the rejection carries them.
        reason: Why it is rejected.
        detail: What was wrong.
    """

    def __init__(self, row: Mapping[str, Any], reason: Reason, detail: str) -> None:
        super().__init__(row)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Record:
    """A validated input row.

    Attributes:
        row_key: Engine-internal unique key of the row.
        id: The user's id, as in the input.
        question: Question text.
        context: Context text; answer offsets index into exactly this string.
        row: The row's original input columns (copied to a rejection if a later stage rejects it).
        passthrough_columns: Which of `row`'s columns to copy to the answer.
    """

    row_key: str
    id: Any
    question: str
    context: str
    row: dict[str, Any] = field(default_factory=dict)
    passthrough_columns: tuple[str, ...] = ()

    @property
    def passthrough(self) -> dict[str, Any]:
        """The pass-through columns of the row."""
        return {name: self.row.get(name) for name in self.passthrough_columns}

    def reject(self, reason: Reason, detail: str) -> Rejection:
        """A rejection of this record that keeps its original columns."""
        return Rejection(row_key=self.row_key, id=self.id, reason=reason, detail=detail, row=self.row)


@dataclass(frozen=True)
class Rejection:
    """An input row that gets no answer, with a stable reason code.

    Attributes:
        row_key: Engine-internal unique key of the row.
        id: The user's id (may be None).
        reason: Why the row was rejected.
        detail: Human-readable detail (an error message, a length).
        row: The row's original input columns.
    """

    row_key: str
    id: Any
    reason: Reason
    detail: str
    row: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Feature:
    """One tokenized window of a record.

    Attributes:
        row_key: The record this window belongs to.
        window_index: Position of the window in the record (0-based).
        n_windows: How many windows the record has (lets aggregation know when a row is complete).
        input_ids: Token ids, shape (T,), int32.
        token_type_ids: Segment ids, shape (T,), int8.
        char_starts: Start character of each token in the context, -1 outside the context, shape (T,).
        char_ends: End character (exclusive) of each context token, -1 outside the context, shape (T,).
        cls_index: Position of the CLS token (its logits give the null score), -1 if the model has none.
        question_cut: Whether the window holds a cut question (too long to leave the context its room).
    """

    row_key: str
    window_index: int
    n_windows: int
    input_ids: npt.NDArray[np.int32]
    token_type_ids: npt.NDArray[np.int8]
    char_starts: npt.NDArray[np.int32]
    char_ends: npt.NDArray[np.int32]
    cls_index: int
    question_cut: bool = False

    @property
    def length(self) -> int:
        """Real (unpadded) tokens in the window."""
        return len(self.input_ids)  # read several times per window: `len` is the cheapest way


@dataclass(frozen=True, eq=False)
class WindowCandidates:
    """The best spans of one window, in character offsets, best first.

    Attributes:
        row_key: The record of the window.
        window_index: Position of the window in the record.
        n_windows: How many windows the record has.
        starts: Start character of each candidate, shape (K,), int64.
        ends: End character (exclusive) of each candidate, shape (K,), int64.
        logits: `start_logit[i] + end_logit[j]` of each candidate, shape (K,), float64.
        null_logit: `start_logit[cls] + end_logit[cls]`, or None when the model has no CLS token.
        ranked: The logits strictly decrease and no (start, end) comes twice (decode says so; False:
            not known), so the spans of a lone window need no merging.
    """

    row_key: str
    window_index: int
    n_windows: int
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]
    logits: npt.NDArray[np.float64]
    null_logit: float | None
    ranked: bool = False


@dataclass(frozen=True)
class SpanScore:
    """One ranked answer of a row (an entry of the `top_k` column)."""

    answer: str
    start: int | None
    end: int | None
    score: float
    logit_score: float


@dataclass(frozen=True)
class Answer:
    """The answer row of one record.

    Attributes:
        row_key: Engine-internal key of the row.
        id: The user's id.
        answer: `context[start:end]`, or "" when there is no answer.
        start: Code-point offset of the answer in the context, None when no answer.
        end: Exclusive end offset, None when no answer.
        score: Probability of this answer among the row's candidates (see README, "Scores").
        logit_score: The winning `start_logit[i] + end_logit[j]` (the null score for no answer).
        no_answer: True when the null answer won.
        null_score_diff: `null_score - best_span_logit` when no-answer handling is on, else None.
        top_k: The `top_k` best answers, best first.
        passthrough: Extra input columns copied from the row.
    """

    row_key: str
    id: Any
    answer: str
    start: int | None
    end: int | None
    score: float
    logit_score: float
    no_answer: bool
    null_score_diff: float | None
    top_k: tuple[SpanScore, ...] = ()
    passthrough: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowWindows:
    """A validated record with its tokenized windows (the output of featurize for one row).

    Attributes:
        record: The record.
        windows: Its windows, in window order (at least one).
    """

    record: Record
    windows: tuple[Feature, ...]
