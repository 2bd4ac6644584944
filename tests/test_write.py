"""The output writer: row groups of exactly `flush_rows` rows, whatever the Arrow chunking inside."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qa_core.io.schema import ANSWERS_DIR, REJECTIONS_DIR, answer_schema, rejection_schema
from qa_core.io.write import OutputWriter
from qa_core.records import Answer, Reason, Rejection


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
