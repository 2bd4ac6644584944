"""`docqa run --documents --questions`: the Beam job answers two tables as `docqa predict` does.

The job's input source (the questions held, the documents read by range) reaches the workers as a Beam
side input. On the local FnApiRunner (the DirectRunner asked for): the answers and rejections equal
`docqa predict`'s two-table job's and the Beam one-table job's over the materialised pairs; `_run.json`
says the join was a side input and that each document was read and tokenized once; every bad input is
one rejection with its reason and no row is lost; and `--resume` answers only the unit whose part files
are gone. The model is the tiny random BERT of `tests/conftest.py`; the tables are `test_two_tables`'.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from tests.test_resume import read_output
from tests.test_two_tables import (
    SETTINGS,
    materialised,
    run_info,
    two_table_argv,
    write_bad_tables,
    write_tables,
)

DOCUMENTS = 12
PAIRS = DOCUMENTS * 2 + DOCUMENTS * 3  # each document's two own questions and the three asked of all
# One SDK worker (two ranges, [0, 30) and [30, 60)) cut every 12 rows, each cut moved forward to where a
# document's five rows begin: units [0, 15) [15, 25) [25, 30) [30, 45) [45, 55) [55, 60), no document in two.
BEAM = ["--direct_num_workers=1", "--set", "output.task_rows=12"]
ANSWER_KEYS = ["id"]
REJECTION_KEYS = ["reason", "doc_id", "question_id", "id"]
# The logits are float32: a row batched with other neighbours moves by float32 rounding (~1e-7 relative),
# which reaches its probability as ~1e-9 to 1e-8 (1.005e-9 seen on the made-up tables of a clone without
# ../shared, 1e-13 on SQuAD's); far below any real difference.
SCORE_TOLERANCE = 1e-6
SCORE_COLUMNS = ("score", "logit_score", "null_score_diff")
# The two joins of the Beam job: the questions held (a side input), and a keyed join, taken when the
# questions (27 here) are more than input.max_questions.
JOINS = {"side input": [], "keyed join": ["--set", "input.max_questions=5"]}


def run_argv(docs: Path, qs: Path, out: Path, model: Path, *extra: str) -> list[str]:
    """`docqa run` of the two tables, with `test_two_tables`' settings and this module's units."""
    return ["run", *two_table_argv(docs, qs, out, model, *BEAM, *extra)[1:]]


def sorted_output(out: Path) -> tuple[pa.Table, pa.Table]:
    """Answers sorted by id and rejections by reason and keys, their footers' metadata dropped."""
    answers, rejections = read_output(out)
    return (
        answers.sort_by([(k, "ascending") for k in ANSWER_KEYS]).replace_schema_metadata(),
        rejections.sort_by([(k, "ascending") for k in REJECTION_KEYS]).replace_schema_metadata(),
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Any], list[Any]]:
    return write_tables(tmp_path_factory.mktemp("beam_two_tables"), n=DOCUMENTS)


@pytest.fixture(scope="module", params=list(JOINS))
def join(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def beam_run(tables: Any, join: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs, qs, _, _ = tables
    out = tmp_path_factory.mktemp("beam_two_table_run") / "out"
    assert main(run_argv(docs, qs, out, tiny_model_dir, *JOINS[join])) == 0
    return out


def test_the_beam_job_answers_as_predict_and_as_the_materialised_table(
    tables: Any, beam_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs, qs, documents, questions = tables
    assert main(two_table_argv(docs, qs, tmp_path / "predict", tiny_model_dir)) == 0
    answers, rejections = sorted_output(beam_run)
    want, want_rejected = sorted_output(tmp_path / "predict")
    assert answers.num_rows == PAIRS and rejections.num_rows == 0
    assert answers.equals(want) and rejections.equals(want_rejected)
    # The Beam one-table job over the same pairs, materialised (the pair id doc_id/question_id as the id).
    pairs = materialised(documents, questions)
    one_table = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(pairs), one_table)
    settings = [*SETTINGS[:-1], "input.passthrough_columns=[doc_id,question_id,title]"]
    argv = [
        "run",
        "--input",
        str(one_table),
        "--output",
        str(tmp_path / "one"),
        "--model",
        str(tiny_model_dir),
    ]
    argv += ["--no-progress", "--no-report", *BEAM, *(x for s in settings for x in ("--set", s))]
    assert main(argv) == 0
    one, one_rejected = sorted_output(tmp_path / "one")
    assert one_rejected.num_rows == 0 and answers.equals(one)
    assert sorted(answers.column("id").to_pylist()) == sorted(p["id"] for p in pairs)


def test_run_json_says_the_join_and_each_document_read_and_tokenized_once(beam_run: Path, join: str) -> None:
    info = run_info(beam_run)
    counts, plan = info["counts"], info["two_table"]
    assert plan["join"] == join
    assert counts["rows_read"] == plan["rows"] == PAIRS
    assert counts["documents_read"] == counts["contexts_tokenized"] == plan["documents"] == DOCUMENTS
    assert counts["metrics"]["documents_read"] == DOCUMENTS  # the Beam counter itself
    assert info["beam"]["plan"]["units"] == counts["parts"] == 6
    assert len(info["inputs"]) == 3  # two documents files and the questions


@pytest.mark.parametrize("join_flags", list(JOINS.values()), ids=list(JOINS))
def test_each_bad_input_is_one_rejection_and_nothing_is_lost(
    join_flags: list[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs, qs, documents, questions = write_bad_tables(tmp_path / "in")
    assert main(run_argv(docs, qs, tmp_path / "run", tiny_model_dir, *join_flags)) == 0
    assert main(two_table_argv(docs, qs, tmp_path / "predict", tiny_model_dir)) == 0
    answers, rejections = sorted_output(tmp_path / "run")
    want, want_rejected = sorted_output(tmp_path / "predict")
    assert answers.equals(want) and rejections.equals(want_rejected)
    assert sorted(answers.column("id").to_pylist()) == sorted(
        p["id"] for p in materialised(documents, questions[:-3])
    )
    assert [(r["reason"], r["doc_id"], r["question_id"]) for r in rejections.to_pylist()] == [
        ("DUPLICATE_DOC_ID", "p2", None),
        ("DUPLICATE_QUESTION_ID", None, questions[0]["question_id"]),
        ("MISSING_DOC_ID", None, None),
        ("MISSING_QUESTION_ID", None, None),
        ("UNKNOWN_DOC_ID", "p99", "orphan"),
    ]
    info = run_info(tmp_path / "run")
    counts = info["counts"]
    assert answers.num_rows + rejections.num_rows == counts["rows_read"] == info["two_table"]["rows"]
    assert counts["rejected_by_reason"] == {
        "DUPLICATE_DOC_ID": 1,
        "DUPLICATE_QUESTION_ID": 1,
        "MISSING_DOC_ID": 1,
        "MISSING_QUESTION_ID": 1,
        "UNKNOWN_DOC_ID": 1,
    }


def test_resume_answers_only_the_unit_whose_parts_are_gone(
    tables: Any, beam_run: Path, join: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs, qs, _, _ = tables
    out = tmp_path / "out"
    assert main(run_argv(docs, qs, out, tiny_model_dir, *JOINS[join])) == 0
    (out / "COMPLETED").unlink()
    for folder in ("answers", "rejections"):
        (out / folder / "part-00003.parquet").unlink()  # the unit [30, 45): three documents' rows
    assert main(run_argv(docs, qs, out, tiny_model_dir, *JOINS[join], "--resume")) == 0
    info = run_info(out)
    counts = info["counts"]
    assert counts["parts"] == 6 and counts["reused_parts"] == 5 and counts["reused_rows"] == PAIRS - 15
    assert counts["metrics"]["rows_read"] == 15 and counts["metrics"]["documents_read"] == 3
    (answers, rejections), (want, want_rejected) = read_output(out), read_output(beam_run)
    assert rejections.replace_schema_metadata().equals(want_rejected.replace_schema_metadata())
    # The unit answered alone is batched apart from its neighbours: its scores (the probability, the
    # logit and the null difference, all from the same logits) may differ in the last bits; every other
    # column is equal.
    scores = [name for name in SCORE_COLUMNS if name in answers.schema.names]
    assert (
        answers.drop_columns(scores)
        .replace_schema_metadata()
        .equals(want.drop_columns(scores).replace_schema_metadata())
    )
    for name in scores:
        got, expected = answers.column(name).to_pylist(), want.column(name).to_pylist()
        assert all(
            (a is None and b is None) or math.isclose(a, b, rel_tol=0, abs_tol=SCORE_TOLERANCE)
            for a, b in zip(got, expected, strict=True)
        ), (name, max(abs(a - b) for a, b in zip(got, expected, strict=True) if a is not None))


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ([], "no input: pass --input"),
        (["--input", "x.parquet", "--documents", "d"], "--input names one table"),
        (["--questions", "q"], "--questions needs --documents"),
    ],
)
def test_a_wrong_input_fails_in_one_line(
    flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *flags, "--output", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "out").exists()
