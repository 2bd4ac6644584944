"""A two-table job's keyed join: documents and questions meet by doc_id in the engine's own shuffle.

Taken by the engines that have one (Beam's `CoGroupByKey`, Spark's `cogroup`) when the questions' footers
count more than `input.max_questions` rows, too many for every process to hold (`qa_core.io.spec.Joins`).
The driver plans the rows from the keys alone, as for held questions (`qa_core.io.pairs_plan`: the same
positions, order, ids and bad inputs), reading only the questions' question_id and doc_id columns. What
each worker holds is then O(documents): the positions where each document's rows start, and the few
question rows that cannot be joined by key: those asked of every document and the bad ones.

    unit [start, stop) of positions --document_side-->  ReadyRow(position, row): rows needing no join
                                                          (bad documents, documents asked only the
                                                          questions of every document, bad questions)
                                                        KeyedDocument(doc_id, DocumentAt(index, row))
    range [a, b) of the questions table --question_side--> (doc_id, QuestionAt(index, row))
    the engine groups both by doc_id --joined_rows--> (position, row) of each pair of that document

Units are cut at document boundaries (`PairsPlan.boundary`), so a document's rows are one unit's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import IO, Any, cast

from qa_core.errors import InputError
from qa_core.io.pairs_plan import Key, PairsPlan
from qa_core.io.read import iter_rows

Opener = Callable[[str], AbstractContextManager[IO[bytes]]]
"""Opens a file for binary reading (`qa_core.io.read.iter_rows`; Beam passes its file systems')."""


@dataclass(frozen=True)
class ReadyRow:
    """A row of the job that needs no join, at its position."""

    position: int
    row: Mapping[str, Any]


@dataclass(frozen=True)
class DocumentAt:
    """A document with questions of its own, by its index in the documents table."""

    index: int
    row: Mapping[str, Any]


@dataclass(frozen=True)
class KeyedDocument:
    """A document to join with the questions that name its doc_id."""

    doc_id: Key
    document: DocumentAt


@dataclass(frozen=True)
class QuestionAt:
    """A question that names a document, by its index in the questions table."""

    index: int
    row: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class KeyedJoin:
    """What every worker of a keyed join holds, and the three steps of the join around the shuffle.

    Attributes:
        plan: The rows' plan without the questions asked by doc_id (`PairsPlan.questions` holds the
            questions asked of every document and the bad ones; `asked_of` is empty).
        documents: The documents' Parquet files.
        document_rows: Rows of each.
        questions: The questions' Parquet files.
        question_rows: Rows of each.
        bad_questions: The indices of the bad questions (rejected from the plan, never joined).
    """

    plan: PairsPlan
    documents: tuple[str, ...]
    document_rows: tuple[int, ...]
    questions: tuple[str, ...]
    question_rows: tuple[int, ...]
    bad_questions: frozenset[int]

    @property
    def question_count(self) -> int:
        """Rows of the questions table: `question_side` reads ranges of them."""
        return sum(self.question_rows)

    def document_side(
        self,
        start: int,
        stop: int,
        opener: Opener | None = None,
        on_documents: Callable[[int], object] | None = None,
    ) -> Iterator[ReadyRow | KeyedDocument]:
        """The documents of positions `[start, stop)`, read once each: their rows, or keyed to be joined.

        Args:
            start: The unit's first position (a document boundary).
            stop: The position it stops before.
            opener: Opens the documents' files (default: fsspec).
            on_documents: Called with the number of documents read.
        """
        plan = self.plan
        first, end = plan.document_range(start, stop)
        if first < end:
            documents = iter_rows(
                self.documents,
                plan.columns.document_columns,
                start=first,
                stop=end,
                opener=opener,
                file_rows=self.document_rows,
            )
            doc_id_column = plan.columns.rows.doc_id_column
            for index, document in enumerate(documents, start=first):
                if on_documents is not None:
                    on_documents(1)
                begin = int(plan.starts[index])
                if begin < start:
                    continue  # its rows began in an earlier unit (a unit cut at no boundary)
                doc_id = document.get(doc_id_column)
                rows = int(plan.starts[index + 1]) - begin
                if index in plan.bad_documents or doc_id is None or rows == len(plan.asked_of_all):
                    # Nothing to join: a rejection, or only the questions asked of every document.
                    for offset, row in enumerate(plan.rows_of(index, document)):
                        if begin + offset < stop:
                            yield ReadyRow(begin + offset, row)
                else:
                    yield KeyedDocument(cast(Key, doc_id), DocumentAt(index, document))
        for position in range(max(start, plan.document_rows_end), min(stop, plan.row_count)):
            yield ReadyRow(position, plan.question_row(position))

    def question_side(
        self, start: int, stop: int, opener: Opener | None = None
    ) -> Iterator[tuple[Key, QuestionAt]]:
        """The questions at rows `[start, stop)` of the questions table that name a document, keyed by it.

        Questions asked of every document and bad ones are left out: the plan holds them.
        """
        columns = self.plan.columns
        if not columns.questions_name_documents:
            return
        rows = iter_rows(
            self.questions,
            columns.question_columns,
            start=start,
            stop=stop,
            opener=opener,
            file_rows=self.question_rows,
        )
        doc_id_column = columns.rows.doc_id_column
        for index, question in enumerate(rows, start=start):
            doc_id = question.get(doc_id_column)
            if doc_id is not None and index not in self.bad_questions:
                yield cast(Key, doc_id), QuestionAt(index, question)

    def joined_rows(
        self, doc_id: Key, documents: Iterable[DocumentAt], questions: Iterable[QuestionAt]
    ) -> Iterator[ReadyRow]:
        """The rows of the document of `doc_id`, once the engine has grouped both sides by it.

        No document: it belongs to a unit this attempt does not answer (`--resume` kept it).

        Raises:
            InputError: Two documents for one doc_id, or not the questions the plan counted for it (the
                tables changed while the job ran).
        """
        found = list(documents)
        if not found:
            return
        if len(found) > 1:
            raise InputError(
                f"documents {[d.index for d in found]} share {self.plan.columns.rows.doc_id_column} "
                f"{doc_id!r}, which the plan found once: the documents changed while the job ran; rerun it"
            )
        document = found[0]
        asked = {question.index: question.row for question in questions}
        begin = int(self.plan.starts[document.index])
        for offset, row in enumerate(self.plan.rows_of(document.index, document.row, asked)):
            yield ReadyRow(begin + offset, row)


def keyed_plan(plan: PairsPlan, held: Mapping[int, Mapping[str, Any]]) -> PairsPlan:
    """The worker plan of a keyed join: `plan` holding only the `held` question rows (by index)."""
    return replace(plan, questions={k: dict(row) for k, row in held.items()}, asked_of={})


def held_indices(plan: PairsPlan) -> list[int]:
    """The questions a keyed join's workers hold: asked of every document, or bad; ascending."""
    return sorted({*plan.asked_of_all, *(k for k, _, _ in plan.bad_questions)})
