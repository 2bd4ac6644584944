"""The Beam job's keyed join of a two-table input: each question brought to its document's unit.

Taken when the questions' footers count more than `input.max_questions` rows (`qa_core.io.spec.Joins`),
instead of the side input that hands every worker the questions whole. The steps are
`qa_core.io.pairs_join`'s; this module only places them around Beam's two groupings:

    units --DocumentKeys--> (doc_id, document index), the doc_id column only ---------+
    question ranges --Reshuffle--ReadQuestions--> (doc_id, question) ------------------+
        --GroupByDocId (CoGroupByKey)--> Route: (unit index, (document index, question))
    units keyed by index + routed questions --GroupByUnit (CoGroupByKey)-->
        ReadJoinedUnit: the unit's documents read and joined -> (position, row), as `ReadUnit` gives

Only keys and questions are shuffled; the documents (the large side) are read once, by their unit. The
join's plan (O(documents)) reaches the workers as a side input. A unit's rows are formed after the
grouping, so its reading is not splittable; units are work-sized (`plan_units`) and cut at documents.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import apache_beam as beam
from apache_beam.pvalue import AsSingleton, PCollection

from pipelines import metrics
from pipelines.io import open_for_beam
from qa_core.io.pairs_join import KeyedJoin, QuestionAt
from qa_core.jobs.parts import PartRange, row_ranges

QUESTION_RANGES_PER_UNIT = 1
"""Ranges the questions table is read in, per unit of the job (the question side's parallelism)."""


def _document_keys(unit: PartRange, join: KeyedJoin) -> Iterator[tuple[Any, int]]:
    yield from join.document_keys(unit.start, unit.stop, open_for_beam)


def _read_questions(rows: tuple[int, int], join: KeyedJoin) -> Iterator[tuple[Any, QuestionAt]]:
    yield from join.question_side(rows[0], rows[1], open_for_beam)


class Route(beam.DoFn):
    """`(doc_id, {"documents": indices, "questions": ...})` -> `(unit index, (document index, question))`.

    Args:
        units: The units this attempt answers, in input order.
    """

    def __init__(self, units: Sequence[PartRange]) -> None:
        self._starts = [unit.start for unit in units]
        self._indices = [unit.index for unit in units]

    def process(
        self, element: tuple[Any, dict[str, Iterable[Any]]], join: KeyedJoin
    ) -> Iterator[tuple[int, tuple[int, QuestionAt]]]:
        doc_id, sides = element
        for index, question in join.route(doc_id, sides["documents"], sides["questions"]):
            unit = bisect.bisect_right(self._starts, join.document_start(index)) - 1
            yield self._indices[unit], (index, question)


class ReadJoinedUnit(beam.DoFn):
    """`(unit index, {"unit": [unit], "questions": routed})` -> `(position, row)` of each of its rows."""

    def process(
        self, element: tuple[int, dict[str, Iterable[Any]]], join: KeyedJoin
    ) -> Iterator[tuple[int, Any]]:
        _, sides = element
        units: list[PartRange] = list(sides["unit"])
        if len(units) != 1:  # every routed question names a unit of this attempt
            raise RuntimeError(f"unit {element[0]}: {len(units)} units grouped, expected 1")
        unit = units[0]
        rows = join.unit_rows(
            unit.start,
            unit.stop,
            sides["questions"],
            open_for_beam,
            lambda documents: metrics.inc("documents_read", documents),
        )
        yield from enumerate(rows, start=unit.start)


class JoinByKey(beam.PTransform):  # type: ignore[type-arg]
    """Units of a keyed two-table job -> `(position, row)` of each of their rows.

    Args:
        join: The keyed join: the plan (O(documents)) and the tables' files.
        units: The units this attempt answers (the elements of the input), in input order.
    """

    def __init__(self, join: KeyedJoin, units: Sequence[PartRange]) -> None:
        super().__init__()
        self._join = join
        self._units = list(units)

    def expand(self, units: PCollection[PartRange]) -> PCollection[tuple[int, Any]]:
        pipeline = units.pipeline
        join = AsSingleton(pipeline | "KeyedJoinPlan" >> beam.Create([self._join], reshuffle=False))
        ranges = row_ranges(self._join.question_count, max(1, len(self._units) * QUESTION_RANGES_PER_UNIT))
        keys = units | "DocumentKeys" >> beam.FlatMap(_document_keys, join)
        questions = (
            pipeline
            | "QuestionRanges" >> beam.Create(ranges, reshuffle=False)
            | "SpreadQuestions" >> beam.Reshuffle()
            | "ReadQuestions" >> beam.FlatMap(_read_questions, join)
        )
        routed = (
            {"documents": keys, "questions": questions}
            | "GroupByDocId" >> beam.CoGroupByKey()
            | "Route" >> beam.ParDo(Route(self._units), join)
        )
        keyed_units = units | "KeyUnits" >> beam.Map(lambda unit: (unit.index, unit))
        rows = (
            {"unit": keyed_units, "questions": routed}
            | "GroupByUnit" >> beam.CoGroupByKey()
            | "ReadJoinedUnits" >> beam.ParDo(ReadJoinedUnit(), join)
        )
        return cast(PCollection[tuple[int, Any]], rows)
