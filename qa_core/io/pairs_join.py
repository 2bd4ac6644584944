"""A two-table job's keyed join: the questions go to their documents through the engine's own shuffle.

Taken by the engines that have one (Beam's `CoGroupByKey`, Spark's `cogroup`) when the questions' footers
count more than `input.max_questions` rows, too many for every process to hold (`qa_core.io.spec.Joins`).
The driver plans the rows from the keys alone, as for held questions (`qa_core.io.pairs_plan`: the same
positions, order, ids and bad inputs), reading only the questions' question_id and doc_id columns. Each
worker then holds O(documents): where each document's rows start, and the few question rows no key
routes (those asked of every document, and the bad ones).

The documents never move: they are the large side (a contract is kilobytes, its question a line), so the
questions are brought to the unit that reads their document, in two shuffles of keys and questions only:

    unit [start, stop) --document_keys--> (doc_id, document index) of its documents that have questions
    range [a, b) of the questions table --question_side--> (doc_id, QuestionAt)
        group by doc_id --route--> (document index, QuestionAt) -> the engine keys it by the unit
        holding that document's rows (`unit_of`) and groups by unit
    unit + its questions --unit_rows--> the unit's rows, in order: what `InputSource.rows` gives

Units are cut at document boundaries (`PairsPlan.boundary`), so a document's rows are one unit's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import IO, Any, cast

from qa_core.errors import InputError
from qa_core.io.pairs_plan import Key, PairsPlan
from qa_core.io.read import iter_rows

Opener = Callable[[str], AbstractContextManager[IO[bytes]]]
"""Opens a file for binary reading (`qa_core.io.read.iter_rows`; Beam passes its file systems')."""


@dataclass(frozen=True)
class QuestionAt:
    """A question that names a document, by its index in the questions table."""

    index: int
    row: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class KeyedJoin:
    """What every worker of a keyed join holds, and the steps of the join around the engine's shuffles.

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

    def document_keys(self, start: int, stop: int, opener: Opener | None = None) -> Iterator[tuple[Key, int]]:
        """(doc_id, index) of each document that begins in `[start, stop)` and has questions of its own.

        Only the documents' doc_id column is read.
        """
        plan = self.plan
        column = plan.columns.rows.doc_id_column
        first, doc_ids = read_documents(
            self.documents, self.document_rows, plan, start, stop, columns=[column], opener=opener
        )
        for index, row in enumerate(doc_ids, start=first):
            doc_id = row[column]
            if self._has_own_questions(index) and start <= plan.starts[index] and doc_id is not None:
                yield cast(Key, doc_id), index

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

    def route(
        self, doc_id: Key, documents: Iterable[int], questions: Iterable[QuestionAt]
    ) -> Iterator[tuple[int, QuestionAt]]:
        """(document index, question) of each question of `doc_id`, once the engine grouped both by it.

        No document: its unit is not answered by this attempt (`--resume` kept it).

        Raises:
            InputError: Two documents for one doc_id (the documents changed while the job ran).
        """
        found = sorted(set(documents))
        if not found:
            return
        if len(found) > 1:
            raise InputError(
                f"documents {found} share {self.plan.columns.rows.doc_id_column} {doc_id!r}, which the plan "
                "found once: the documents changed while the job ran; rerun it"
            )
        for question in questions:
            yield found[0], question

    def document_start(self, index: int) -> int:
        """The position of document `index`'s first row: the engine finds its unit with it."""
        return int(self.plan.starts[index])

    def unit_rows(
        self,
        start: int,
        stop: int,
        questions: Iterable[tuple[int, QuestionAt]],
        opener: Opener | None = None,
        on_documents: Callable[[int], object] | None = None,
    ) -> Iterator[Mapping[str, Any]]:
        """The rows at positions `[start, stop)` (a unit's), given the questions routed to its documents.

        Args:
            start: The unit's first position (a document boundary).
            stop: The position it stops before.
            questions: (document index, question) of its documents' own questions, in any order.
            opener: Opens the documents' files (default: fsspec).
            on_documents: Called with the number of documents read.

        Raises:
            InputError: A document without the questions the plan counted (the tables changed).
        """
        asked: dict[int, dict[int, Mapping[str, Any]]] = defaultdict(dict)
        for index, question in questions:
            asked[index][question.index] = question.row
        plan = self.plan
        first, documents = read_documents(
            self.documents,
            self.document_rows,
            plan,
            start,
            stop,
            columns=plan.columns.document_columns,
            opener=opener,
            on_documents=on_documents,
        )
        return plan.expand(documents, first, start, stop, asked)

    def _has_own_questions(self, index: int) -> bool:
        """Whether good document `index` has rows beyond the questions asked of every document."""
        plan = self.plan
        rows = int(plan.starts[index + 1] - plan.starts[index])
        return index not in plan.bad_documents and rows > len(plan.asked_of_all)


def keyed_plan(plan: PairsPlan, held: Mapping[int, Mapping[str, Any]]) -> PairsPlan:
    """The worker plan of a keyed join: `plan` holding only the `held` question rows (by index)."""
    return replace(plan, questions={k: dict(row) for k, row in held.items()}, asked_of={})


def held_indices(plan: PairsPlan) -> list[int]:
    """The questions a keyed join's workers hold: asked of every document, or bad; ascending."""
    return sorted({*plan.asked_of_all, *(k for k, _, _ in plan.bad_questions)})


def read_documents(
    files: Sequence[str],
    file_rows: Sequence[int],
    plan: PairsPlan,
    start: int,
    stop: int,
    *,
    columns: Sequence[str],
    opener: Opener | None = None,
    on_documents: Callable[[int], object] | None = None,
) -> tuple[int, Iterator[Mapping[str, Any]]]:
    """The documents whose rows hold positions `[start, stop)`: the first one's index, and their `columns`.

    Each is read once, in order, with column projection (`qa_core.io.read.iter_rows`); `on_documents`
    is called with 1 as each is read (`EngineStats.documents_read`).
    """
    first, end = plan.document_range(start, stop)
    if first >= end:
        return first, iter(())
    rows = iter_rows(files, columns, start=first, stop=end, opener=opener, file_rows=file_rows)
    return first, rows if on_documents is None else _counted(rows, on_documents)


def _counted(
    rows: Iterator[Mapping[str, Any]], on_documents: Callable[[int], object]
) -> Iterator[Mapping[str, Any]]:
    for row in rows:
        on_documents(1)
        yield row
