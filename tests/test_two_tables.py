"""`docqa predict --documents --questions`: the pairs answered as the materialised one-table job answers them.

Each document is read and tokenized once, every bad input is one rejection, and workers and `--resume` work
as for one table.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import qa_core
from docqa.cli import main
from qa_core.evaluation.squad import load_squad, squad_to_table
from tests.conftest import SHARED_SQUAD
from tests.test_resume import read_output

SQUAD_DEV = SHARED_SQUAD / "dev-v1.1.json.zip"
WORDS = ["river", "city", "bridge", "church", "team", "war", "north", "south", "town", "built"]
SETTINGS = [
    "featurize.max_seq_len=128",
    "featurize.doc_stride=32",
    "featurize.min_context_tokens=64",
    "input.passthrough_columns=[title]",
]
QUESTION_SCHEMA = pa.schema(
    [("question_id", pa.string()), ("question", pa.string()), ("doc_id", pa.string())]
)


def paragraphs(n: int) -> list[dict[str, Any]]:
    """`n` (context, title, its questions) of SQuAD v1.1 dev when the shared data is there, else made up."""
    if SQUAD_DEV.is_file():
        table = squad_to_table(load_squad(str(SQUAD_DEV))).select(["id", "title", "context", "question"])
        found: dict[str, dict[str, Any]] = {}
        for row in table.slice(0, 2000).to_pylist():
            entry = found.setdefault(
                row["context"], {"context": row["context"], "title": row["title"], "asked": []}
            )
            entry["asked"].append((row["id"], row["question"]))
        return list(found.values())[:n]
    return [
        {
            "context": " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(20 + i % 30)),
            "title": f"title {i % 4}",
            "asked": [(f"s{i}-{j}", f"where is the {WORDS[(i + j) % len(WORDS)]}?") for j in range(2)],
        }
        for i in range(n)
    ]


def write_tables(folder: Path, n: int = 30) -> tuple[Path, Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """Documents in two files (small row groups) and questions: two of each document's own, three for all."""
    folder.mkdir(parents=True, exist_ok=True)
    found = paragraphs(n + 3)
    documents = [
        {"doc_id": f"p{i}", "context": p["context"], "title": p["title"]} for i, p in enumerate(found[:n])
    ]
    questions: list[dict[str, Any]] = [
        {"question_id": qid, "question": text, "doc_id": f"p{i}"}
        for i, p in enumerate(found[:n])
        for qid, text in p["asked"][:2]
    ]
    # Asked of every document (no doc_id): the first question of three other paragraphs, among the others.
    for position, extra in zip((0, 17, 40), found[n:], strict=True):
        qid, text = extra["asked"][0]
        questions.insert(position, {"question_id": qid, "question": text, "doc_id": None})
    docs = folder / "documents"
    docs.mkdir(exist_ok=True)
    for k, chunk in enumerate((documents[: n // 2], documents[n // 2 :])):
        pq.write_table(pa.Table.from_pylist(chunk), docs / f"part-{k}.parquet", row_group_size=4)
    qs = folder / "questions.parquet"
    pq.write_table(pa.Table.from_pylist(questions, schema=QUESTION_SCHEMA), qs)
    return docs, qs, documents, questions


def materialised(documents: list[dict[str, Any]], questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one-table input of the same pairs: each document's questions (its own and those for all)."""
    return [
        {
            "id": f"{d['doc_id']}/{q['question_id']}",
            "question": q["question"],
            "context": d["context"],
            "doc_id": d["doc_id"],
            "question_id": q["question_id"],
            "title": d["title"],
        }
        for d in documents
        for q in questions
        if q["doc_id"] in (None, d["doc_id"])
    ]


def two_table_argv(docs: Path, qs: Path, out: Path, model: Path, *extra: str) -> list[str]:
    settings = [x for s in SETTINGS for x in ("--set", s)]
    return [
        "predict",
        "--documents",
        str(docs),
        "--questions",
        str(qs),
        "--output",
        str(out),
        "--model",
        str(model),
        "--no-progress",
        "--no-report",
        *settings,
        *extra,
    ]


def run_info(out: Path) -> dict[str, Any]:
    return json.loads((out / "_run.json").read_text())


@pytest.fixture(scope="module")
def tables(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, list[dict[str, Any]], list[dict[str, Any]]]:
    return write_tables(tmp_path_factory.mktemp("two_tables"))


@pytest.fixture(scope="module")
def two_table_run(tables: Any, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs, qs, _, _ = tables
    out = tmp_path_factory.mktemp("two_table_run") / "out"
    assert main(two_table_argv(docs, qs, out, tiny_model_dir)) == 0
    return out


def test_the_pairs_are_answered_as_the_materialised_table_is(
    tables: Any, two_table_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _, _, documents, questions = tables
    pairs = materialised(documents, questions)
    one_table = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(pairs), one_table)
    out = tmp_path / "one"
    settings = [
        x
        for s in [*SETTINGS[:-1], "input.passthrough_columns=[doc_id,question_id,title]"]
        for x in ("--set", s)
    ]
    argv = ["predict", "--input", str(one_table), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*argv, "--no-progress", "--no-report", *settings]) == 0
    answers, rejections = read_output(two_table_run)
    want, want_rejected = read_output(out)
    assert rejections.num_rows == want_rejected.num_rows == 0
    assert answers.num_rows == len(pairs) == 30 * 2 + 30 * 3
    # The same pairs, in the same order, with the same answers, scores and columns (and column types).
    assert answers.schema.remove_metadata().equals(want.schema.remove_metadata(), check_metadata=False)
    assert answers.to_pylist() == want.to_pylist()
    assert answers.column("id").to_pylist() == [p["id"] for p in pairs]


def test_each_document_is_read_and_tokenized_once(tables: Any, two_table_run: Path) -> None:
    info = run_info(two_table_run)
    counts, plan = info["counts"], info["two_table"]
    assert counts["rows_read"] == plan["rows"] == plan["pairs"] == 150
    assert counts["documents_read"] == counts["contexts_tokenized"] == plan["documents"] == 30
    assert counts["context_lookups"] == 150
    assert plan["questions"] == 63 and plan["questions_asked_of_every_document"] == 3
    assert plan["join"] == "questions held in memory" and plan["pair_id"] == "doc_id/question_id"
    assert plan["bad_inputs"] == {} and plan["documents_without_questions"] == 0
    assert len(info["inputs"]) == 3  # two documents files and the questions


def test_workers_answer_as_one_process_and_read_each_document_once(
    tables: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs, qs, _, _ = tables
    # Parts of 37 pairs would split documents of 5 pairs: they are cut where a document begins instead,
    # [0, 40) [40, 75) [75, 115) [115, 150), in one process as in two (whose ranges meet at 75).
    parts = ["--set", "output.part_rows=37"]
    assert main(two_table_argv(docs, qs, tmp_path / "one", tiny_model_dir, *parts)) == 0
    assert main(two_table_argv(docs, qs, tmp_path / "two", tiny_model_dir, *parts, "--workers", "2")) == 0
    for table, want in zip(read_output(tmp_path / "two"), read_output(tmp_path / "one"), strict=True):
        assert table.to_pylist() == want.to_pylist()
    for name in ("one", "two"):
        counts = run_info(tmp_path / name)["counts"]
        assert counts["documents_read"] == counts["contexts_tokenized"] == 30 and counts["parts"] == 4
    footer = pq.read_schema(tmp_path / "two" / "answers" / "part-00001.parquet").metadata[b"docqa.part"]
    assert (json.loads(footer)["start"], json.loads(footer)["stop"]) == (40, 75)


def test_resume_keeps_the_finished_parts_and_completes_equal(
    tables: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qa_core.jobs import parts

    docs, qs, _, _ = tables
    clean, out = tmp_path / "clean", tmp_path / "resumed"
    settings = ["--set", "output.part_rows=20"]
    assert main(two_table_argv(docs, qs, clean, tiny_model_dir, *settings)) == 0
    answer_part, written = parts.answer_part, []

    def dies_after_three_parts(*args: Any, **kwargs: Any) -> Any:
        if len(written) == 3:
            raise KeyboardInterrupt  # as if killed: no cleanup, no COMPLETED
        written.append(answer_part(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(parts, "answer_part", dies_after_three_parts)
    with pytest.raises(KeyboardInterrupt):
        main(two_table_argv(docs, qs, out, tiny_model_dir, *settings))
    monkeypatch.undo()
    assert not (out / "COMPLETED").exists() and len(list((out / "answers").glob("part-*.parquet"))) == 3
    assert main(two_table_argv(docs, qs, out, tiny_model_dir, *settings, "--resume")) == 0
    counts = run_info(out)["counts"]
    assert counts["reused_parts"] == 3 and counts["reused_rows"] == 60 and counts["parts"] == 8
    assert counts["documents_read"] == 30  # the kept parts' documents counted from their footers
    for table, want in zip(read_output(out), read_output(clean), strict=True):
        assert table.equals(want)


def test_resume_refuses_other_questions(
    tables: Any, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs, qs, _, questions = tables
    out = tmp_path / "out"
    assert main(two_table_argv(docs, qs, out, tiny_model_dir)) == 0
    (out / "COMPLETED").unlink()
    other = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist(questions[:-1], schema=QUESTION_SCHEMA), other)
    capsys.readouterr()
    assert main(two_table_argv(docs, other, out, tiny_model_dir, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another input files" in err[0]


BAD_DOCUMENTS = [
    {"doc_id": None, "context": "a document without a key", "title": "x"},
    {"doc_id": "p2", "context": "a second document p2", "title": "y"},
]
"""A third documents file: a null doc_id and a repeat of p2 (`write_bad_tables`)."""


def write_bad_tables(folder: Path) -> tuple[Path, Path, list[dict[str, Any]], list[dict[str, Any]]]:
    """Six documents and their questions, then one of each bad input.

    The bad ones: `BAD_DOCUMENTS`, and three questions after the good ones (a null question_id, a
    repeated question_id, a doc_id no document has). Returns the tables' paths, the good documents and
    every question (the last three bad).
    """
    docs, qs, documents, questions = write_tables(folder, n=6)
    pq.write_table(pa.Table.from_pylist(BAD_DOCUMENTS), docs / "part-2.parquet")
    questions += [
        {"question_id": None, "question": "no key?", "doc_id": None},
        {"question_id": questions[0]["question_id"], "question": "a repeated key?", "doc_id": None},
        {"question_id": "orphan", "question": "whose?", "doc_id": "p99"},
    ]
    pq.write_table(pa.Table.from_pylist(questions, schema=QUESTION_SCHEMA), qs)
    return docs, qs, documents, questions


def test_each_bad_input_is_one_rejection_and_every_other_pair_is_answered(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs, qs, documents, questions = write_bad_tables(tmp_path / "in")
    out = tmp_path / "out"
    assert main(two_table_argv(docs, qs, out, tiny_model_dir)) == 0
    answers, rejections = read_output(out)
    good = materialised(documents, questions[:-3])
    assert answers.column("id").to_pylist() == [p["id"] for p in good]  # nothing else lost
    rejected = [(r["reason"], r["doc_id"], r["question_id"], r["id"]) for r in rejections.to_pylist()]
    assert rejected == [
        ("MISSING_DOC_ID", None, None, None),
        ("DUPLICATE_DOC_ID", "p2", None, None),
        ("MISSING_QUESTION_ID", None, None, None),
        ("DUPLICATE_QUESTION_ID", None, questions[0]["question_id"], None),
        ("UNKNOWN_DOC_ID", "p99", "orphan", None),
    ]
    assert rejections.column("context").to_pylist()[:2] == [
        "a document without a key",
        "a second document p2",
    ]
    info = run_info(out)
    assert info["counts"]["rows_read"] == len(good) + 5 == info["two_table"]["rows"]
    assert info["two_table"]["bad_inputs"] == {
        "DUPLICATE_DOC_ID": 1,
        "DUPLICATE_QUESTION_ID": 1,
        "MISSING_DOC_ID": 1,
        "MISSING_QUESTION_ID": 1,
        "UNKNOWN_DOC_ID": 1,
    }
    assert info["counts"]["rejected_by_reason"] == info["two_table"]["bad_inputs"]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("both", "--input names one table and --documents/--questions two"),
        ("no questions", "--documents needs --questions"),
        ("no documents", "--questions needs --documents"),
        ("neither", "no input: pass --input"),
        ("documents without context", "has no column(s) ['context']"),
        ("questions without question_id", "has no column(s) ['question_id']"),
        ("float keys", "keys must be strings or integers"),
        ("doc_id types differ", "cast one so that they match"),
        ("pass-through in neither", "a column of neither the documents nor the questions"),
        ("id column is a key", "input.id_column 'doc_id' is also a key column"),
        ("too many questions", "more than input.max_questions=1"),
    ],
)
def test_a_wrong_two_table_job_fails_in_one_line_before_any_work(
    case: str, needle: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = write(tmp_path / "docs.parquet", [{"doc_id": "d", "context": "the city"}])
    questions = write(tmp_path / "qs.parquet", [{"question_id": "q", "question": "what?"}] * 2)
    flags = ["--documents", str(documents), "--questions", str(questions)]
    sets: list[str] = []
    if case == "both":
        flags += ["--input", str(documents)]
    elif case in ("no questions", "no documents", "neither"):
        flags = {"no questions": flags[:2], "no documents": flags[2:], "neither": []}[case]
    elif case == "documents without context":
        write(documents, [{"doc_id": "d", "text": "the city"}])
    elif case == "questions without question_id":
        write(questions, [{"id": "q", "question": "what?"}])
    elif case == "float keys":
        write(documents, [{"doc_id": 1.5, "context": "the city"}])
    elif case == "doc_id types differ":
        write(questions, [{"question_id": "q", "question": "what?", "doc_id": 1}])
    elif case == "pass-through in neither":
        sets = ["input.passthrough_columns=[title]"]
    elif case == "id column is a key":
        sets = ["input.id_column=doc_id"]
    elif case == "too many questions":
        sets = ["input.max_questions=1"]
    out = tmp_path / "out"
    argv = ["predict", *flags, "--output", str(out), "--model", str(tiny_model_dir), "--no-progress"]
    assert main([*argv, *(x for s in sets for x in ("--set", s))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()  # nothing was started


def test_the_python_api_answers_two_tables_as_predict_does(
    tables: Any, two_table_run: Path, tiny_model_dir: Path, tiny_model: Any
) -> None:
    docs, qs, _, _ = tables
    config = qa_core.load_config(overrides=[f"model.name_or_path={tiny_model_dir}", *SETTINGS])
    documents = pa.concat_tables(pq.read_table(p) for p in sorted(docs.glob("*.parquet")))
    answers, rejections = qa_core.answer_tables(tiny_model, config, documents, pq.read_table(qs))
    want, want_rejected = read_output(two_table_run)
    assert answers.to_pylist() == want.to_pylist() and rejections.num_rows == want_rejected.num_rows == 0


def test_estimate_counts_the_pairs(tables: Any, two_table_run: Path, tiny_model_dir: Path) -> None:
    from qa_core.io.spec import TwoTables
    from qa_core.tools.estimate import estimate

    docs, qs, _, _ = tables
    overrides = [f"model.name_or_path={tiny_model_dir}", *SETTINGS, "batch.sort_buffer_windows=100000"]
    config = qa_core.load_config(overrides=overrides)
    full = estimate(config, TwoTables(str(docs), str(qs)), sample=10_000)
    counts = run_info(two_table_run)["counts"]
    assert full.rows == full.sampled_rows == counts["rows_read"] == 150
    assert (full.windows, full.real_tokens) == (counts["windows"], counts["real_tokens"])
    assert full.two_table is not None and full.two_table["pairs"] == 150
    part = estimate(config, TwoTables(str(docs), str(qs)), sample=20)
    assert part.sampled_rows == 20 and part.rows == 150
    assert "30 documents, 63 questions (3 asked of every document): 150 pairs" in part.format_table()
    # More questions than a process holds: planned as the cluster jobs' keyed join, the same figures.
    keyed_config = qa_core.load_config(overrides=[*overrides, "input.max_questions=5"])
    keyed = estimate(keyed_config, TwoTables(str(docs), str(qs)), sample=10_000)
    assert keyed.two_table is not None and keyed.two_table["join"] == "keyed join (docqa run, docqa spark)"
    assert (keyed.rows, keyed.windows, keyed.real_tokens) == (full.rows, full.windows, full.real_tokens)


def test_the_report_finds_each_shown_rows_context_and_question_by_its_keys(
    tables: Any, two_table_run: Path
) -> None:
    from qa_core.tools.report import write_report

    _, _, documents, questions = tables
    page = Path(write_report(str(two_table_run))).read_text()
    answers, _ = read_output(two_table_run)
    contexts = {d["doc_id"]: d["context"] for d in documents}
    asked = {q["question_id"]: q["question"] for q in questions}
    assert "contexts from the documents (2 files)" in page and "questions from the questions (1 file)" in page
    assert "(question not found)" not in page and "found nowhere" not in page
    # Every sampled answer is marked in its own document's context.
    shown = 0
    for row in answers.to_pylist():
        if f"id {row['id']} " in page and not row["no_answer"]:
            context = contexts[row["doc_id"]]
            assert context[row["start"] : row["end"]] == row["answer"]
            assert html.escape(asked[row["question_id"]]) in page
            assert "<mark>" + html.escape(row["answer"]) + "</mark>" in page
            shown += 1
    assert shown >= 3
