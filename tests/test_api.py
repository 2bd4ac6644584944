"""The Python API (`qa_core.load_config`, `load_model`, `answer_rows`, `answer_table`) matches predict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import qa_core
from qa_core.errors import InputError
from qa_core.jobs.predict import predict
from qa_core.runtime.torch_runner import TorchRunner
from tests.conftest import write_parquet

ROWS = [
    {"id": "a", "question": "where is the church?", "context": "the church stands by the river", "n": 1},
    {"id": "b", "question": "", "context": "the city", "n": 2},
    {"id": "c", "question": "which city?", "context": "the city of 東京 is north of the river " * 30, "n": 3},
]


def test_import_is_cheap_and_names_resolve() -> None:
    code = "import qa_core, sys; print('torch' in sys.modules); print(qa_core.Answer.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "Answer"]
    with pytest.raises(AttributeError):
        _ = qa_core.no_such_name  # type: ignore[attr-defined]


def test_answer_table_equals_what_predict_writes(
    tiny_model_dir: Path, tiny_model: TorchRunner, tmp_path: Path
) -> None:
    overrides = [f"model.name_or_path={tiny_model_dir}", "input.passthrough_columns=[n]", "decode.top_k=2"]
    config = qa_core.load_config(overrides=overrides)
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    predict(config, str(source), str(tmp_path / "out"), progress=False, model=tiny_model)
    answers, rejections = qa_core.answer_table(tiny_model, config, pq.read_table(source))
    assert answers.equals(pq.read_table(tmp_path / "out" / "answers"))
    assert rejections.equals(pq.read_table(tmp_path / "out" / "rejections"))
    assert answers.column("id").to_pylist() == ["a", "c"] and rejections.column("reason").to_pylist() == [
        "EMPTY_QUESTION"
    ]


def test_answer_rows_yields_one_result_per_row_in_order(
    tiny_model_dir: Path, tiny_model: TorchRunner
) -> None:
    config = qa_core.load_config(overrides=[f"model.name_or_path={tiny_model_dir}"])
    results = list(qa_core.answer_rows(tiny_model, config, ROWS))
    assert [type(r).__name__ for r in results] == ["Answer", "Rejection", "Answer"]
    assert [r.id for r in results] == ["a", "b", "c"]
    context = str(ROWS[2]["context"])
    answer = results[2]
    assert isinstance(answer, qa_core.Answer) and answer.start is not None and answer.end is not None
    assert context[answer.start : answer.end] == answer.answer


def test_answer_table_names_a_missing_column(tiny_model: TorchRunner) -> None:
    with pytest.raises(InputError, match="no column"):
        qa_core.answer_table(tiny_model, qa_core.QAConfig(), pa.table({"id": [1], "question": ["q"]}))
