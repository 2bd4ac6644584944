"""The output writer: row groups of exactly `flush_rows` rows, whatever the Arrow chunking inside, and
tables built column by column that equal those of the dict rows (the reference)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qa_core.io.schema import (
    ANSWERS_DIR,
    REJECTIONS_DIR,
    AnswerColumns,
    RejectionColumns,
    answer_schema,
    answer_to_row,
    rejection_schema,
    rejection_to_row,
    rows_to_table,
)
from qa_core.io.write import OutputWriter
from qa_core.records import Answer, Reason, Rejection, SpanScore


def _answer(i: int) -> Answer:
    return Answer(
        row_key=str(i),
        id=f"q{i}",
        answer=f"answer {i}",
        start=i,
        end=i + 8,
        score=0.5,
        logit_score=1.0,
        no_answer=False,
        null_score_diff=None,
    )


@pytest.mark.parametrize(("rows", "flush_rows"), [(2500, 1000), (1100, 512), (300, 1000), (0, 10)])
def test_row_groups_hold_flush_rows_rows_in_order(tmp_path: Path, rows: int, flush_rows: int) -> None:
    writer = OutputWriter(
        str(tmp_path),
        answer_schema(pa.string()),
        rejection_schema(pa.string(), [pa.field("id", pa.string())]),
        top_k=1,
        flush_rows=flush_rows,
    )
    for i in range(rows):
        writer.write(_answer(i))
    writer.write(Rejection(row_key="x", id="bad", reason=Reason.EMPTY_QUESTION, detail="", row={"id": "bad"}))
    writer.close({"counts": {}})

    part = pq.ParquetFile(tmp_path / ANSWERS_DIR / "part-00000.parquet")
    sizes = [part.metadata.row_group(g).num_rows for g in range(part.metadata.num_row_groups)]
    full, rest = divmod(rows, flush_rows)
    assert sizes == [flush_rows] * full + ([rest] if rest else []) or (rows == 0 and sizes in ([], [0]))
    table = part.read()
    assert table.column("id").to_pylist() == [f"q{i}" for i in range(rows)]
    assert table.schema.equals(answer_schema(pa.string()), check_metadata=False)
    rejected = pq.read_table(tmp_path / REJECTIONS_DIR / "part-00000.parquet")
    assert rejected.column("id").to_pylist() == ["bad"]


PASSTHROUGH = [
    pa.field("tags", pa.list_(pa.string())),
    pa.field("meta", pa.struct([pa.field("k", pa.int64()), pa.field("v", pa.float64())])),
    pa.field("n", pa.int32()),
]


def _random_answer(rng: random.Random, i: int, top_k: int) -> Answer:
    spans = [
        SpanScore(f"s{k}", None, None, rng.random(), rng.gauss(0, 3))
        if rng.random() < 0.2
        else SpanScore(f"span {k}", k, k + 3, rng.random(), rng.gauss(0, 3))
        for k in range(rng.randint(1, top_k))
    ]
    passthrough = {
        "tags": rng.choice([None, [], ["a", None, "b"]]),
        "meta": rng.choice([None, {"k": i, "v": None}, {"k": None, "v": -0.0}]),
        "n": rng.choice([None, i]),
    }
    if rng.random() < 0.2:
        del passthrough["meta"]  # a missing key is a null, as in a dict row
    return Answer(
        str(i),
        rng.choice([None, i, -i]),
        spans[0].answer,
        spans[0].start,
        spans[0].end,
        spans[0].score,
        spans[0].logit_score,
        spans[0].start is None,
        rng.choice([None, rng.gauss(0, 1), -0.0]),
        tuple(spans) if top_k > 1 else (),
        passthrough,
    )


@pytest.mark.parametrize("top_k", [1, 3])
def test_columns_build_the_table_of_the_dict_rows(top_k: int) -> None:
    """`AnswerColumns` and `RejectionColumns` make what `rows_to_table` makes of the dicts, to the bit."""
    rng = random.Random(top_k)
    schema = answer_schema(pa.int64(), PASSTHROUGH, top_k)
    input_fields = [pa.field("id", pa.int64()), pa.field("question", pa.string()), *PASSTHROUGH]
    rejections_schema = rejection_schema(pa.int64(), input_fields)
    answers, rejections = AnswerColumns(schema, top_k), RejectionColumns(rejections_schema)
    for size in (0, 1, 7, 300):  # one builder, taken again and again
        batch = [_random_answer(rng, i, top_k) for i in range(size)]
        for answer in batch:
            answers.add(answer)
        assert len(answers) == size
        got, expected = answers.take_table(), rows_to_table([answer_to_row(a, top_k) for a in batch], schema)
        assert got.schema.equals(schema, check_metadata=True)
        assert got.equals(expected) and repr(got.to_pylist()) == repr(expected.to_pylist())
        assert len(answers) == 0
        rejected = [
            Rejection(str(i), a.id, Reason.EMPTY_QUESTION, f"detail {i}", {"question": "", **a.passthrough})
            for i, a in enumerate(batch)
        ]
        for rejection in rejected:
            rejections.add(rejection)
        got = rejections.take_table()
        expected = rows_to_table([rejection_to_row(r) for r in rejected], rejections_schema)
        assert got.schema.equals(rejections_schema, check_metadata=True)
        assert got.equals(expected) and repr(got.to_pylist()) == repr(expected.to_pylist())
