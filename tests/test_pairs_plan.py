"""The two-table join (`qa_core.io.pairs_plan`) against a brute-force enumeration of its rows, and the parts
planned on document boundaries (`jobs/parts.py` `plan_parts(boundary=...)`)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from qa_core.config import InputConfig
from qa_core.errors import InputError
from qa_core.io.pairs import pair_columns
from qa_core.io.pairs_plan import PairsPlan, plan_pairs
from qa_core.jobs.parts import plan_parts
from qa_core.records import Reason, RejectedRow

CONFIG = InputConfig(passthrough_columns=("title", "kind"))
COLUMNS = pair_columns(CONFIG, ["doc_id", "context", "title"], ["question_id", "question", "doc_id", "kind"])


def brute_force(documents: list[dict[str, Any]], questions: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The job's rows as the README states the rule, written as plainly as possible.

    Each row is (id, question, context, doc_id, question_id, title, kind, reason or None).
    """
    question_ids = [q["question_id"] for q in questions]
    doc_ids = [d["doc_id"] for d in documents]

    def bad_question(k: int) -> Reason | None:
        q = questions[k]
        if q["question_id"] is None:
            return Reason.MISSING_QUESTION_ID
        if q["question_id"] in question_ids[:k]:
            return Reason.DUPLICATE_QUESTION_ID
        if q["doc_id"] is not None and q["doc_id"] not in doc_ids:
            return Reason.UNKNOWN_DOC_ID
        return None

    rows: list[tuple[Any, ...]] = []
    for i, d in enumerate(documents):
        if d["doc_id"] is None or d["doc_id"] in doc_ids[:i]:
            reason = Reason.MISSING_DOC_ID if d["doc_id"] is None else Reason.DUPLICATE_DOC_ID
            rows.append((None, None, d["context"], d["doc_id"], None, d["title"], None, reason))
            continue
        for k, q in enumerate(questions):
            if bad_question(k) is None and q["doc_id"] in (None, d["doc_id"]):
                pair_id = f"{d['doc_id']}/{q['question_id']}"
                rows.append(
                    (
                        pair_id,
                        q["question"],
                        d["context"],
                        d["doc_id"],
                        q["question_id"],
                        d["title"],
                        q["kind"],
                        None,
                    )
                )
    for k, q in enumerate(questions):
        reason = bad_question(k)
        if reason is not None:
            rows.append((None, q["question"], None, q["doc_id"], q["question_id"], None, q["kind"], reason))
    return rows


def as_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    names = ["id", "question", "context", "doc_id", "question_id", "title", "kind"]
    return (*(row[n] for n in names), row.reason if isinstance(row, RejectedRow) else None)


def random_tables(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Small tables whose keys collide, go missing and point nowhere often."""
    keys = [None, *range(6)]
    documents = [
        {"doc_id": rng.choice(keys), "context": f"context {i}", "title": f"t{i}"}
        for i in range(rng.randint(0, 8))
    ]
    questions = [
        {
            "question_id": rng.choice([None, *(f"q{j}" for j in range(8))]),
            "question": f"question {k}?",
            "doc_id": rng.choice([None, None, *range(8)]),
            "kind": rng.choice(["a", "b"]),
        }
        for k in range(rng.randint(0, 8))
    ]
    return documents, questions


def read_range(
    plan: PairsPlan, documents: list[dict[str, Any]], start: int, stop: int
) -> list[dict[str, Any]]:
    """`PairsSource.rows` without the files: the documents `document_range` names, expanded."""
    first, end = plan.document_range(start, stop)
    return list(plan.expand(documents[first:end], first, start, stop))


@pytest.mark.parametrize("seed", range(300))
def test_the_rows_and_every_range_of_them_equal_the_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    documents, questions = random_tables(rng)
    plan = plan_pairs(COLUMNS, questions, [d["doc_id"] for d in documents])
    want = brute_force(documents, questions)
    assert plan.row_count == len(want)
    assert [as_tuple(r) for r in read_range(plan, documents, 0, plan.row_count)] == want
    for _ in range(5):
        start = rng.randint(0, plan.row_count)
        stop = rng.randint(start, plan.row_count)
        assert [as_tuple(r) for r in read_range(plan, documents, start, stop)] == want[start:stop]
    counts = plan.counts()
    bad = [r[-1] for r in want if r[-1] is not None]
    assert sum(counts["bad_inputs"].values()) == len(bad) and counts["pairs"] + len(bad) == plan.row_count


def test_a_document_range_reads_only_the_documents_that_hold_the_rows() -> None:
    documents = [{"doc_id": i, "context": f"c{i}", "title": None} for i in range(5)]
    questions = [
        {"question_id": "a", "question": "?", "doc_id": 1, "kind": None},
        {"question_id": "b", "question": "?", "doc_id": 3, "kind": None},
        {"question_id": "c", "question": "?", "doc_id": 3, "kind": None},
    ]
    plan = plan_pairs(COLUMNS, questions, [d["doc_id"] for d in documents])
    # Documents 0, 2 and 4 have no rows; 1 has row 0; 3 has rows 1 and 2.
    assert plan.starts.tolist() == [0, 0, 1, 1, 3, 3]
    assert plan.document_range(0, 1) == (1, 2)
    assert plan.document_range(1, 3) == (3, 4)
    assert plan.document_range(2, 3) == (3, 4)
    assert plan.document_range(3, 3) == (5, 5)
    assert plan.documents_without_questions == 3
    assert [plan.boundary(p) for p in range(4)] == [0, 1, 3, 3]


def test_a_changed_document_fails_the_read_in_one_line() -> None:
    documents = [{"doc_id": "d", "context": "c", "title": None}]
    questions = [{"question_id": "q", "question": "?", "doc_id": "d", "kind": None}]
    plan = plan_pairs(COLUMNS, questions, ["d"])
    with pytest.raises(InputError, match="changed while the job ran"):
        list(plan.expand([{"doc_id": "e", "context": "c", "title": None}], 0, 0, 1))
    assert len(list(plan.expand(documents, 0, 0, 1))) == 1


@pytest.mark.parametrize("seed", range(100))
def test_parts_begin_on_document_boundaries_and_cover_every_row(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 1, 2, 5, 12]) for _ in range(rng.randint(0, 30))]
    starts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    total = starts[-1] + rng.randint(0, 3)  # bad questions after the documents: one row each
    boundaries = sorted({*starts, *range(starts[-1], total + 1)})

    def boundary(position: int) -> int:
        return min(b for b in boundaries if b >= position)

    workers, part_rows = rng.randint(1, 4), rng.randint(1, 10)
    plans = plan_parts(total, workers, part_rows, boundary)
    parts = [p for ranges in plans for p in ranges]
    assert [p.index for p in parts] == list(range(len(parts)))
    assert parts[0].start == 0 and parts[-1].stop == total
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    assert all(p.start in boundaries and (p.rows > 0 or total == 0) for p in parts)
    assert len(plans) <= workers and all(plans)
