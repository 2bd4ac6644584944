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
The join (O(documents): where each document's rows start, and the questions no key routes) reaches the
executors as a broadcast.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from qa_core.io.pairs_join import KeyedJoin, QuestionAt
from qa_core.jobs.parts import PartRange, row_ranges

Routed = tuple[int, QuestionAt]
"""(document index, question): a question at its document's unit."""


class _Keys:
    """Picklable task functions over the broadcast join (Spark ships them to the executors)."""

    def __init__(self, join: Any, starts: Sequence[int]) -> None:
        self._join = join  # a Broadcast of KeyedJoin: `.value` on the executor
        self._starts = list(starts)

    def document_keys(self, unit: PartRange) -> Iterator[tuple[Any, int]]:
        join: KeyedJoin = self._join.value
        return join.document_keys(unit.start, unit.stop)

    def question_side(self, rows: tuple[int, int]) -> Iterator[tuple[Any, QuestionAt]]:
        join: KeyedJoin = self._join.value
        return join.question_side(rows[0], rows[1])

    def route(
        self, element: tuple[Any, tuple[Iterable[int], Iterable[QuestionAt]]]
    ) -> Iterator[tuple[int, Routed]]:
        join: KeyedJoin = self._join.value
        doc_id, (documents, questions) = element
        for index, question in join.route(doc_id, documents, questions):
            yield bisect.bisect_right(self._starts, join.document_start(index)) - 1, (index, question)


def _slot(key: int) -> int:
    return key


def routed_questions(context: Any, join: Any, units: Sequence[PartRange]) -> Any:
    """An RDD of `len(units)` partitions: partition k holds `(k, (document index, question))` of unit k.

    Args:
        context: The SparkContext.
        join: A Broadcast of the job's `KeyedJoin`.
        units: The units this attempt answers, in input order (partition k is `units[k]`'s).
    """
    keyed: KeyedJoin = join.value
    tasks = _Keys(join, [unit.start for unit in units])
    parts = max(1, len(units))
    keys = context.parallelize(list(units), parts).flatMap(tasks.document_keys)
    ranges = row_ranges(keyed.question_count, parts)
    questions = context.parallelize(ranges, len(ranges)).flatMap(tasks.question_side)
    return keys.cogroup(questions, parts).flatMap(tasks.route).partitionBy(parts, _slot)


def joined_unit_questions(routed: Iterable[tuple[int, Routed]]) -> Iterator[Routed]:
    """A unit task's routed questions without their partition key."""
    for _, question in routed:
        yield question
