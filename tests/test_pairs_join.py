"""The keyed join (`qa_core.io.pairs_join`) forms exactly the rows the held questions do.

The engine's shuffle is played here by a dict grouping both sides by doc_id; Beam's `CoGroupByKey` and
Spark's `cogroup` do the same across workers (tests of `docqa run` and `docqa spark`).
"""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qa_core.config import InputConfig
from qa_core.io.joins import Joins
from qa_core.io.pairs import PairsSource
from qa_core.io.pairs_join import KeyedJoin, QuestionAt
from qa_core.jobs.parts import plan_units, row_ranges
from qa_core.records import RejectedRow

JOINS = Joins(held="held", keyed="keyed")
DOCUMENT_SCHEMA = pa.schema([("doc_id", pa.int64()), ("context", pa.string()), ("title", pa.string())])
QUESTION_SCHEMA = pa.schema(
    [("question_id", pa.string()), ("question", pa.string()), ("doc_id", pa.int64()), ("kind", pa.string())]
)


def random_tables(folder: Path, seed: int) -> tuple[str, str]:
    """Documents (with null and repeated doc_ids) and questions (asked of all, of one, unknown, repeated)."""
    rng = random.Random(seed)
    documents = [
        {"doc_id": rng.choice([i, i, i, None, max(i - 1, 0)]), "context": f"context {i}", "title": f"t{i}"}
        for i in range(rng.randint(0, 25))
    ]
    questions = [
        {
            "question_id": rng.choice([f"q{k}", f"q{k}", f"q{k}", None, f"q{max(k - 1, 0)}"]),
            "question": f"question {k}?",
            "doc_id": rng.choice([None, rng.randint(0, 30), rng.randint(0, 12), rng.randint(0, 12)]),
            "kind": f"kind {k % 3}",
        }
        for k in range(rng.randint(2, 40))
    ]
    docs, qs = folder / f"documents-{seed}", folder / f"questions-{seed}"
    docs.mkdir()
    qs.mkdir()
    half = len(documents) // 2
    for k, chunk in enumerate((documents[:half], documents[half:])):
        pq.write_table(
            pa.Table.from_pylist(chunk, schema=DOCUMENT_SCHEMA), docs / f"part-{k}.parquet", row_group_size=3
        )
    pq.write_table(pa.Table.from_pylist(questions, schema=QUESTION_SCHEMA), qs / "part-0.parquet")
    return str(docs), str(qs)


def comparable(row: Any) -> tuple[Any, ...]:
    """A row with its rejection, if any, for equality."""
    if isinstance(row, RejectedRow):
        return (dict(row), row.reason, row.detail)
    return (dict(row), None, None)


def shuffle(join: KeyedJoin, units: list[tuple[int, int]], question_ranges: int) -> dict[int, Any]:
    """The rows at their positions, the engine's two shuffles played by dicts."""
    keys: dict[Any, list[int]] = defaultdict(list)
    questions: dict[Any, list[QuestionAt]] = defaultdict(list)
    for start, stop in units:
        for doc_id, index in join.document_keys(start, stop):
            keys[doc_id].append(index)
    for start, stop in row_ranges(join.question_count, question_ranges):
        for doc_id, question in join.question_side(start, stop):
            questions[doc_id].append(question)
    by_unit: dict[int, list[tuple[int, QuestionAt]]] = defaultdict(list)
    starts = [start for start, _ in units]
    for doc_id in keys.keys() | questions.keys():
        for index, question in join.route(doc_id, keys.get(doc_id, []), questions.get(doc_id, [])):
            by_unit[bisect.bisect_right(starts, join.document_start(index)) - 1].append((index, question))
    found: dict[int, Any] = {}
    for k, (start, stop) in enumerate(units):
        routed = by_unit.get(k, [])
        random.Random(k).shuffle(routed)  # a shuffle keeps no order
        for position, row in enumerate(join.unit_rows(start, stop, routed), start=start):
            found[position] = row
    return found


@pytest.mark.parametrize("seed", range(40))
def test_keyed_join_forms_the_rows_the_held_questions_form(tmp_path: Path, seed: int) -> None:
    docs, qs = random_tables(tmp_path, seed)
    config = InputConfig(passthrough_columns=("title", "kind"))
    held = PairsSource.open(docs, qs, config, JOINS)
    assert held.keyed is None and held.join == "held"
    keyed = PairsSource.open(
        docs, qs, InputConfig(passthrough_columns=("title", "kind"), max_questions=1), JOINS
    )
    assert keyed.keyed is not None and keyed.join == "keyed"
    assert keyed.row_count == held.row_count and keyed.details() == {
        "two_table": {**held.details()["two_table"], "join": "keyed"}
    }
    expected = [comparable(row) for row in held.rows(0, held.row_count)]
    units = plan_units(keyed.row_count, 2, 5, keyed.boundary)
    found = shuffle(keyed.keyed, [(u.start, u.stop) for u in units], question_ranges=3)
    assert sorted(found) == list(range(held.row_count))
    assert [comparable(found[p]) for p in range(held.row_count)] == expected
    # docqa estimate's sample of a keyed job: the same rows as the held plan's.
    assert [comparable(r) for r in keyed.sample(7, seed)] == [comparable(r) for r in held.sample(7, seed)]
    # A resumed attempt answers some units: exactly their rows, the other documents' questions dropped.
    some = [(u.start, u.stop) for u in units[::2]]
    partial = shuffle(keyed.keyed, some, question_ranges=2)
    assert sorted(partial) == [p for start, stop in some for p in range(start, stop)]
    assert all(comparable(row) == expected[p] for p, row in partial.items())


def test_a_keyed_plan_holds_only_the_questions_no_key_routes(tmp_path: Path) -> None:
    docs, qs = random_tables(tmp_path, 7)
    keyed = PairsSource.open(
        docs, qs, InputConfig(passthrough_columns=("title", "kind"), max_questions=1), JOINS
    )
    assert keyed.keyed is not None
    plan = keyed.keyed.plan
    bad = {k for k, _, _ in plan.bad_questions}
    assert set(plan.questions) == bad | set(plan.asked_of_all) and plan.asked_of == {}
    with pytest.raises(RuntimeError, match="shuffle"):
        list(keyed.rows(0, 1))
