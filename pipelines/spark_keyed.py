"""`docqa spark`'s keyed join of a two-table input: each question brought to its document's unit.

Taken when the questions' footers count more than `input.max_questions` rows (`qa_core.io.spec.Joins`),
instead of broadcasting the questions whole. The steps are `qa_core.io.pairs_join`'s; this module only
places them around Spark's two shuffles:

    units --document_keys--> (doc_id, document index), the doc_id column only ------+
    ranges of the questions table --question_side--> (doc_id, question) -------------+
        --cogroup by doc_id--> route --> (unit slot, (document index, question))
        --partitionBy(unit slot)--> partition k holds the questions of unit k's documents, which the
        unit's task reads and joins (`unit_rows`) before answering them as a held job's unit

Only keys and questions are shuffled; the documents (the large side) are read once, by their unit's task.
The job's input, with the join (O(documents): where each document's rows start, and the questions no key
routes), reaches the executors as the broadcast the held join uses too.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from qa_core.errors import JobError
from qa_core.io.pairs_join import KeyedJoin, QuestionAt
from qa_core.jobs.parts import PartRange, row_ranges

Routed = tuple[int, QuestionAt]
"""(document index, question): a question at its document's unit."""


class _Keys:
    """Picklable task functions over the broadcast input (Spark ships them to the executors)."""

    def __init__(self, source: Any, starts: Sequence[int]) -> None:
        self._source = source  # a Broadcast of the job's PairsSource: `.value` on the executor
        self._starts = list(starts)

    def _join(self) -> KeyedJoin:
        join: KeyedJoin | None = self._source.value.keyed
        if join is None:
            raise JobError("the Spark keyed join was given an input without one")
        return join

    def document_keys(self, unit: PartRange) -> Iterator[tuple[Any, int]]:
        return self._join().document_keys(unit.start, unit.stop)

    def question_side(self, rows: tuple[int, int]) -> Iterator[tuple[Any, QuestionAt]]:
        return self._join().question_side(rows[0], rows[1])

    def route(
        self, element: tuple[Any, tuple[Iterable[int], Iterable[QuestionAt]]]
    ) -> Iterator[tuple[int, Routed]]:
        join = self._join()
        doc_id, (documents, questions) = element
        for index, question in join.route(doc_id, documents, questions):
            yield bisect.bisect_right(self._starts, join.document_start(index)) - 1, (index, question)


def _slot(key: int) -> int:
    return key


def routed_questions(context: Any, source: Any, units: Sequence[PartRange]) -> Any:
    """An RDD of `len(units)` partitions: partition k holds `(k, (document index, question))` of unit k.

    Args:
        context: The SparkContext.
        source: A Broadcast of the job's `PairsSource` (its `keyed` join set).
        units: The units this attempt answers, in input order (partition k is `units[k]`'s).
    """
    tasks = _Keys(source, [unit.start for unit in units])
    parts = max(1, len(units))
    keys = context.parallelize(list(units), parts).flatMap(tasks.document_keys)
    ranges = row_ranges(tasks._join().question_count, parts)
    questions = context.parallelize(ranges, len(ranges)).flatMap(tasks.question_side)
    return keys.cogroup(questions, parts).flatMap(tasks.route).partitionBy(parts, _slot)
