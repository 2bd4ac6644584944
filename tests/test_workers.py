"""`docqa predict --workers`: row ranges, ranged reading, and N processes writing the same answers as one."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from qa_core.config import InputConfig
from qa_core.engine import EngineStats
from qa_core.read import iter_rows
from qa_core.workers import row_ranges
from tests.test_predict_cli import ROWS


@pytest.mark.parametrize(("rows", "workers"), [(0, 3), (1, 4), (7, 3), (10, 10), (11, 2), (1000, 7)])
def test_row_ranges_cover_the_rows_in_order(rows: int, workers: int) -> None:
    ranges = row_ranges(rows, workers)
    assert len(ranges) == max(1, min(workers, rows))
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1 and (rows == 0 or min(sizes) >= 1)


def test_iter_rows_range_matches_a_slice(tmp_path: Path) -> None:
    """Any [start, stop) over files of several row groups (and an empty file) is the slice of all rows."""
    files, first = [], 0
    for k, (rows, group_rows) in enumerate([(7, 3), (0, 5), (10, 4), (1, 1)]):
        table = pa.table(
            {
                "id": [str(first + i) for i in range(rows)],
                "question": ["q"] * rows,
                "context": ["c"] * rows,
            }
        )
        pq.write_table(table, tmp_path / f"f{k}.parquet", row_group_size=group_rows)
        files.append(str(tmp_path / f"f{k}.parquet"))
        first += rows
    every = [r["id"] for r in iter_rows(files, InputConfig(), batch_rows=2)]
    assert every == [str(i) for i in range(first)]
    for start in range(first + 2):
        for stop in [None, *range(first + 2)]:
            got = [r["id"] for r in iter_rows(files, InputConfig(), batch_rows=2, start=start, stop=stop)]
            assert got == every[start:stop], (start, stop)


def test_engine_stats_add_up() -> None:
    one = EngineStats(rows=3, answered=2, rejected=Counter(EMPTY_QUESTION=1), windows_per_row=Counter({1: 2}))
    two = EngineStats(rows=2, answered=1, rejected=Counter(EMPTY_QUESTION=1, MISSING_ID=1), model_seconds=0.5)
    one.add(two)
    assert (one.rows, one.answered, one.model_seconds) == (5, 3, 0.5)
    assert one.rejected == Counter(EMPTY_QUESTION=2, MISSING_ID=1) and one.windows_per_row == Counter({1: 2})


def _predict(source: Path, out: Path, model_dir: Path, *extra: str) -> int:
    args = ["predict", "--input", str(source), "--output", str(out), "--model", str(model_dir)]
    return main([*args, "--no-progress", "--no-report", "--set", "input.passthrough_columns=[title]", *extra])


def test_workers_write_what_one_process_writes(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Three workers over two files (good and bad rows) give one process's tables, in input order."""
    source = tmp_path / "in"
    source.mkdir()
    rows = [dict(r, title=f"{r['title']}-{k}") for k in range(3) for r in ROWS]  # 15 rows, 6 rejected
    pq.write_table(pa.Table.from_pylist(rows[:8]), source / "a.parquet", row_group_size=3)
    pq.write_table(pa.Table.from_pylist(rows[8:]), source / "b.parquet")
    assert _predict(source, tmp_path / "one", tiny_model_dir) == 0
    assert _predict(source, tmp_path / "three", tiny_model_dir, "--workers", "3") == 0
    for table in ("answers", "rejections"):
        one = pq.read_table(tmp_path / "one" / table)
        three = pq.read_table(tmp_path / "three" / table)
        assert three.schema == one.schema
        assert three.to_pylist() == one.to_pylist(), table  # fp32 on a CPU: batch-independent
    assert sorted(p.name for p in (tmp_path / "three" / "answers").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert (tmp_path / "three" / "COMPLETED").exists()
    counts = json.loads((tmp_path / "three" / "_run.json").read_text())["counts"]
    expected = json.loads((tmp_path / "one" / "_run.json").read_text())["counts"]
    for key in ("rows_read", "answered", "rejected", "rejected_by_reason", "windows", "windows_per_row"):
        assert counts[key] == expected[key], key
    assert counts["rows_read"] == 15 and counts["rejected"] == 6


def test_workers_fail_fast_on_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), source)
    code = _predict(source, tmp_path / "out", Path("/nonexistent/model"), "--workers", "2")
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before the output was prepared


def test_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--input", "x", "--output", "y", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err
