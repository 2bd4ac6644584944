"""The join of a two-table job, planned from its keys alone: its rows, their order, and its bad inputs.

A two-table job's rows are numbered like a table's, so that every piece of the job machinery works on
their positions unchanged (`qa_core.io.sources`):

    for each document, in the documents' order:
        a good document -> one row per question asked of it, in the questions' order: the questions
                           whose doc_id is its doc_id and those without a doc_id (asked of every document)
        a bad document  -> one row: its rejection (a null doc_id, or one an earlier document has)
    then each bad question, in the questions' order -> one row: its rejection (a null or repeated
        question_id, or a doc_id that no document has)

so answers + rejections = pairs + bad inputs = the job's rows. A pair's row holds the question, the
document's context, its `doc_id` and `question_id` (with their input types) and the pass-through columns of
either table; its id is `f"{doc_id}/{question_id}"` (`PAIR_ID_SEPARATOR`). The first document of a doc_id
and the first question of a question_id are the ones asked; a repeat is rejected, once.

`plan_pairs` is pure: the questions (held whole: the small side) and the documents' doc_ids in, the plan
out. `PairsPlan.expand` turns document rows read from storage into the rows of a range of positions.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from qa_core.config import InputConfig
from qa_core.errors import InputError
from qa_core.records import Reason, RejectedRow

PAIR_ID_SEPARATOR = "/"
"""Between the doc_id and the question_id in a pair's `id` (the key columns hold them apart)."""

Key = str | int


@dataclass(frozen=True)
class PairColumns:
    """The columns of a two-table job's rows and where each comes from.

    Attributes:
        rows: The rows' columns as the engine validates them: `id_column` (the pair id), the question and
            context columns, and as pass-through columns the doc_id, the question_id and the user's.
        from_documents: Pass-through columns read from the documents.
        from_questions: Pass-through columns read from the questions.
        questions_name_documents: Whether the questions have a doc_id column.
    """

    rows: InputConfig
    from_documents: tuple[str, ...]
    from_questions: tuple[str, ...]
    questions_name_documents: bool

    @property
    def document_columns(self) -> list[str]:
        """The columns read of the documents."""
        return [self.rows.doc_id_column, self.rows.context_column, *self.from_documents]

    @property
    def question_columns(self) -> list[str]:
        """The columns read of the questions."""
        c = self.rows
        doc_id = [c.doc_id_column] if self.questions_name_documents else []
        return [c.question_id_column, c.question_column, *doc_id, *self.from_questions]

    @property
    def question_key_columns(self) -> list[str]:
        """The key columns of the questions (a keyed join's plan reads only these)."""
        c = self.rows
        return [c.question_id_column, *([c.doc_id_column] if self.questions_name_documents else [])]

    def pair_row(self, document: Mapping[str, Any], question: Mapping[str, Any]) -> dict[str, Any]:
        """The row of a question asked of a document."""
        c = self.rows
        doc_id, question_id = document[c.doc_id_column], question[c.question_id_column]
        row = {
            c.id_column: f"{doc_id}{PAIR_ID_SEPARATOR}{question_id}",
            c.question_column: question[c.question_column],
            c.context_column: document[c.context_column],
            c.doc_id_column: doc_id,
            c.question_id_column: question_id,
        }
        row.update((name, document[name]) for name in self.from_documents)
        row.update((name, question[name]) for name in self.from_questions)
        return row

    def lone_row(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """The row of a bad document or question: its own columns, the others (and the id) null."""
        row: dict[str, Any] = dict.fromkeys(self.rows.columns)
        row.update(columns)
        return row


@dataclass(frozen=True, eq=False)
class PairsPlan:
    """Which rows a two-table job has, from its keys (`plan_pairs`); small enough to ship to every worker.

    Attributes:
        columns: The rows' columns.
        questions: The question rows (`PairColumns.question_columns`) by index: every one, in the questions'
            order, when the questions are held; a keyed join's worker plan holds only those asked of every
            document and the bad ones (the rest meet their documents in the engine's shuffle).
        question_count: Questions in the questions table.
        asked_of_all: The questions without a doc_id (asked of every document), by index.
        asked_of: The questions of each document's doc_id, by index (documents that have some only).
        starts: `starts[i]` is the position of document i's first row; `starts[-1]` the first bad
            question's (length: documents + 1).
        bad_documents: Document index -> why it is rejected.
        bad_questions: (question index, reason, detail) of each bad question, in the questions' order.
        documents_without_questions: Good documents that no question is asked of (they have no rows).
    """

    columns: PairColumns
    questions: tuple[dict[str, Any], ...] | Mapping[int, dict[str, Any]]
    question_count: int
    asked_of_all: tuple[int, ...]
    asked_of: dict[Key, tuple[int, ...]]
    starts: npt.NDArray[np.int64]
    bad_documents: dict[int, tuple[Reason, str]]
    bad_questions: tuple[tuple[int, Reason, str], ...]
    documents_without_questions: int

    @property
    def documents(self) -> int:
        """Documents in the documents table."""
        return len(self.starts) - 1

    @property
    def document_rows_end(self) -> int:
        """The position after the last document's rows (the first bad question's)."""
        return int(self.starts[-1])

    @property
    def row_count(self) -> int:
        """The job's rows: pairs, bad documents and bad questions."""
        return self.document_rows_end + len(self.bad_questions)

    def document_range(self, start: int, stop: int) -> tuple[int, int]:
        """The documents `[first, end)` whose rows cover positions `[start, stop)` (none past the last)."""
        stop = min(stop, self.document_rows_end)
        if start >= stop:
            return self.documents, self.documents
        # The last document starting at or before `start` (documents without rows start there too).
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        return first, int(np.searchsorted(self.starts, stop, side="left"))

    def boundary(self, position: int) -> int:
        """The first position >= `position` that begins a document's rows (or a bad question's row)."""
        if position >= self.document_rows_end:
            return position
        return int(self.starts[int(np.searchsorted(self.starts, position, side="left"))])

    def document_of(self, position: int) -> int:
        """The index of the document whose rows hold `position` (< `document_rows_end`)."""
        return int(np.searchsorted(self.starts, position, side="right")) - 1

    def rows_of(
        self, index: int, document: Mapping[str, Any], joined: Mapping[int, Mapping[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Document `index`'s rows, from its row (`PairColumns.document_columns`).

        Args:
            index: The document's index.
            document: Its row.
            joined: A keyed join's questions asked of it by its doc_id, by question index (None: this
                plan's `asked_of` says which).

        Raises:
            InputError: When it does not have the rows it had when the job was planned (the documents
                changed under the running job).
        """
        c = self.columns.rows
        bad = self.bad_documents.get(index)
        doc_id = document.get(c.doc_id_column)
        rows: list[dict[str, Any]]
        if bad is not None:
            rows = [RejectedRow(self.columns.lone_row(document), *bad)]
        elif doc_id is None:
            rows = []  # planned good: the document changed; the count below says so
        else:
            held = self.questions
            asked = self.asked_of.get(doc_id) if joined is None else sorted(joined)
            order = self.asked_of_all if not asked else heapq.merge(asked, self.asked_of_all)
            rows = [
                self.columns.pair_row(document, joined[k] if joined and k in joined else held[k])
                for k in order
            ]
        expected = int(self.starts[index + 1] - self.starts[index])
        if len(rows) != expected or (bad is None and doc_id is None):
            raise InputError(
                f"document {index} (doc_id {doc_id!r}) has {len(rows)} rows now but had {expected} when "
                "the job was planned: the documents changed while the job ran; rerun it"
            )
        return rows

    def question_row(self, position: int) -> RejectedRow:
        """The row at `position` >= `document_rows_end`: a bad question's rejection."""
        index, reason, detail = self.bad_questions[position - self.document_rows_end]
        return RejectedRow(self.columns.lone_row(self.questions[index]), reason, detail)

    def expand(
        self,
        documents: Iterable[Mapping[str, Any]],
        first: int,
        start: int,
        stop: int,
        joined: Mapping[int, Mapping[int, Mapping[str, Any]]] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The rows at positions `[start, stop)`, given the rows of documents `document_range(start, stop)`.

        Args:
            documents: The documents' rows, from document `first` on, in order.
            first: The index of the first of them.
            start: The first position.
            stop: The position to stop before.
            joined: A keyed join's questions routed to these documents: document index -> question index
                -> question row (None: the plan holds the questions).
        """
        index = first
        for document in documents:
            begin, end = int(self.starts[index]), int(self.starts[index + 1])
            if max(start, begin) < min(stop, end):
                own = None if joined is None else joined.get(index, {})
                yield from self.rows_of(index, document, own)[max(start - begin, 0) : min(stop, end) - begin]
            index += 1
        for position in range(max(start, self.document_rows_end), min(stop, self.row_count)):
            yield self.question_row(position)

    def counts(self) -> dict[str, Any]:
        """What the plan holds, for `_run.json` (`two_table`)."""
        reasons = Counter(reason.value for reason, _ in self.bad_documents.values())
        reasons.update(reason.value for _, reason, _ in self.bad_questions)
        c = self.columns.rows
        return {
            "pair_id": f"{c.doc_id_column}{PAIR_ID_SEPARATOR}{c.question_id_column}",
            "documents": self.documents,
            "questions": self.question_count,
            "questions_asked_of_every_document": len(self.asked_of_all),
            "pairs": self.document_rows_end - len(self.bad_documents),
            "documents_without_questions": self.documents_without_questions,
            "bad_inputs": dict(sorted(reasons.items())),
            "rows": self.row_count,
        }


def plan_pairs(
    columns: PairColumns, questions: Sequence[Mapping[str, Any]], doc_ids: Iterable[Key | None]
) -> PairsPlan:
    """The rows of a two-table job (see the module's docstring), from its questions and documents' doc_ids.

    Args:
        columns: The rows' columns.
        questions: Every question row, in the questions' order.
        doc_ids: Each document's doc_id, in the documents' order (read once, as it streams).
    """
    c = columns.rows
    bad: dict[int, tuple[Reason, str]] = {}
    first_question: dict[Key, int] = {}
    for k, question in enumerate(questions):
        question_id = question[c.question_id_column]
        if question_id is None:
            bad[k] = (Reason.MISSING_QUESTION_ID, f"question {k}: column '{c.question_id_column}' is null")
        elif question_id in first_question:
            bad[k] = (
                Reason.DUPLICATE_QUESTION_ID,
                f"question {k}: {c.question_id_column} {question_id!r} is question "
                f"{first_question[question_id]}'s too (the first is asked)",
            )
        else:
            first_question[question_id] = k
    asked_of: dict[Key, list[int]] = defaultdict(list)
    asked_of_all: list[int] = []
    for k, question in enumerate(questions):
        if k not in bad:
            doc_id = question.get(c.doc_id_column) if columns.questions_name_documents else None
            (asked_of_all if doc_id is None else asked_of[doc_id]).append(k)
    first_document: dict[Key, int] = {}
    bad_documents: dict[int, tuple[Reason, str]] = {}
    sizes: list[int] = []
    for i, doc_id in enumerate(doc_ids):
        if doc_id is None:
            bad_documents[i] = (Reason.MISSING_DOC_ID, f"document {i}: column '{c.doc_id_column}' is null")
        elif doc_id in first_document:
            bad_documents[i] = (
                Reason.DUPLICATE_DOC_ID,
                f"document {i}: {c.doc_id_column} {doc_id!r} is document {first_document[doc_id]}'s too "
                "(the first is asked)",
            )
        else:
            first_document[doc_id] = i
            sizes.append(len(asked_of_all) + len(asked_of.get(doc_id, ())))
            continue
        sizes.append(1)  # its rejection
    for doc_id in [d for d in asked_of if d not in first_document]:
        for k in asked_of.pop(doc_id):
            bad[k] = (Reason.UNKNOWN_DOC_ID, f"question {k}: no document has {c.doc_id_column} {doc_id!r}")
    starts = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.asarray(sizes, dtype=np.int64), out=starts[1:])
    return PairsPlan(
        columns=columns,
        questions=tuple(dict(q) for q in questions),
        question_count=len(questions),
        asked_of_all=tuple(asked_of_all),
        asked_of={doc_id: tuple(ks) for doc_id, ks in asked_of.items()},
        starts=starts,
        bad_documents=bad_documents,
        bad_questions=tuple((k, *bad[k]) for k in sorted(bad)),
        documents_without_questions=sizes.count(0),
    )
