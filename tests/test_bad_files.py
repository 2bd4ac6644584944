"""Bad files: corrupt, truncated, empty, mistyped, many row groups, odd encodings, mixed schemas.

A job-level failure exits with code 2 and one line naming the file and the problem, and writes no
`COMPLETED`; a file that is merely unusual (empty, many row groups, large or dictionary-encoded strings,
extra columns) is read by both engines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from pipelines.run import run
from qa_core.config import load_config
from tests import fakes
from tests.conftest import write_parquet

ROWS = [
    {
        "id": f"r{i}",
        "question": "what is it?",
        "context": f"the river church number {i} " * 4,
        "title": f"t{i}",
    }
    for i in range(40)
]
ENGINES = ("predict", "run")


def docqa(engine: str, source: Path | str, out: Path, model_dir: Path, *extra: str) -> int:
    argv = [engine, "--input", str(source), "--output", str(out), "--model", str(model_dir), *extra]
    if engine == "predict":
        argv.append("--no-progress")
    return main(argv)


def assert_job_error(code: int, out: Path, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("docqa ")]
    assert len(lines) == 1 and "error:" in lines[0], err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err
    assert not (out / "COMPLETED").exists()
    return lines[0]


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_pages(path: Path) -> Path:
    """Scrambles the data pages of the third row group; the footer stays valid (found only when read)."""
    column = pq.read_metadata(path).row_group(2).column(2)
    data = bytearray(path.read_bytes())
    for k in range(column.data_page_offset + 4, column.data_page_offset + 200):
        data[k] = (data[k] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    return path


def good_file(path: Path, rows: list[dict[str, Any]] = ROWS, row_group_size: int = 10) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size, compression="snappy")
    return path


def not_parquet(path: Path) -> Path:
    path.write_text("id,question,context\n1,q,c\n")
    return path


def zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


BROKEN = {
    "truncated": (lambda p: truncated(good_file(p)), "magic bytes not found"),
    "not_parquet": (not_parquet, "magic bytes not found"),
    "zero_bytes": (zero_bytes, "0 bytes"),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_unreadable_file_fails_fast_naming_it(
    engine: str, kind: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, problem = BROKEN[kind]
    source = tmp_path / f"{kind}.parquet"
    make(source)
    out = tmp_path / "out"
    code = docqa(engine, source, out, tiny_model_dir)
    assert_job_error(code, out, capsys, str(source), problem)
    assert not out.exists(), "input problems are found before the output is touched"


@pytest.mark.parametrize("engine", ENGINES)
def test_corrupt_data_pages_fail_the_job_naming_the_file(
    engine: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = corrupt_pages(good_file(tmp_path / "pages.parquet"))
    out = tmp_path / "out"
    code = docqa(engine, source, out, tiny_model_dir)
    line = assert_job_error(code, out, capsys, f"cannot read Parquet file {source}")
    if engine == "run":
        assert "row group 2" in line and "not marked COMPLETED" in line
    # The partial output is refused without --overwrite, with a message saying it is unfinished.
    code = docqa(engine, good_file(tmp_path / "good.parquet"), out, tiny_model_dir)
    assert_job_error(code, out, capsys, "unfinished run", "--overwrite")


def test_run_cli_failure_prints_one_line_without_beam_tracebacks(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """`docqa run` in a real process: Beam logs a failing element's traceback; the CLI keeps it to a line."""
    source = corrupt_pages(good_file(tmp_path / "pages.parquet"))
    out = tmp_path / "out"
    argv = ["run", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "docqa", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("docqa run: error: the pipeline failed: InputError: cannot read Parquet file")
    assert str(source) in last and "row group 2" in last
    assert not (out / "COMPLETED").exists()


SCHEMA_ERRORS = {
    "missing_column": (
        pa.table({"id": ["a"], "query": ["q"], "context": ["c"]}),
        ["has no column(s) ['question']"],
    ),
    "int_question": (
        pa.table({"id": ["a"], "question": [7], "context": ["c"]}),
        ["column 'question'", "type int64", "expected strings"],
    ),
    "binary_context": (
        pa.table({"id": ["a"], "question": ["q"], "context": pa.array([b"c"], pa.binary())}),
        ["column 'context'", "type binary"],
    ),
    "list_question": (
        pa.table({"id": ["a"], "question": [["q", "r"]], "context": ["c"]}),
        ["column 'question'", "list<element: string>"],
    ),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", sorted(SCHEMA_ERRORS))
def test_wrong_columns_fail_fast_naming_file_and_column(
    engine: str, kind: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table, needles = SCHEMA_ERRORS[kind]
    source = tmp_path / f"{kind}.parquet"
    pq.write_table(table, source)
    out = tmp_path / "out"
    code = docqa(engine, source, out, tiny_model_dir)
    assert_job_error(code, out, capsys, str(source), *needles)


def read_output(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    assert (out / "COMPLETED").exists()
    answers = pq.read_table(out / "answers").to_pylist()
    rejections = pq.read_table(out / "rejections").to_pylist()
    return answers, rejections, json.loads((out / "_run.json").read_text())["counts"]


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_file_succeeds_with_zero_rows(engine: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    schema = pa.schema([("id", pa.string()), ("question", pa.string()), ("context", pa.string())])
    source = tmp_path / "empty.parquet"
    pq.write_table(schema.empty_table(), source)
    out = tmp_path / "out"
    assert docqa(engine, source, out, tiny_model_dir) == 0
    answers, rejections, counts = read_output(out)
    assert answers == rejections == []
    assert counts["rows_read"] == counts["answered"] == counts["rejected"] == 0
    assert pq.read_schema(next((out / "answers").glob("*.parquet"))).field("id").type == pa.string()


@pytest.mark.parametrize("engine", ENGINES)
def test_many_row_groups_every_row_once(engine: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{**row, "id": f"{row['id']}-{k}"} for k in range(3) for row in ROWS]  # 120 rows
    source = good_file(tmp_path / "groups.parquet", rows, row_group_size=3)
    assert pq.read_metadata(source).num_row_groups == 40
    out = tmp_path / "out"
    assert docqa(engine, source, out, tiny_model_dir) == 0
    answers, rejections, counts = read_output(out)
    assert sorted(a["id"] for a in answers) == sorted(r["id"] for r in rows) and rejections == []
    assert counts["rows_read"] == 120


def encoded_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows with large-string ids and contexts and dictionary-encoded questions and titles."""
    return pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.large_string()),
            "question": pa.array([r["question"] for r in rows]).dictionary_encode(),
            "context": pa.array([r["context"] for r in rows], pa.large_string()),
            "title": pa.array([r["title"] for r in rows]).dictionary_encode(),
        }
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_large_string_and_dictionary_columns(engine: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [*ROWS[:10], {"id": "blank", "question": " ", "context": "the city", "title": "t-blank"}]
    source = tmp_path / "encoded.parquet"
    pq.write_table(encoded_table(rows), source)
    schema = pq.read_schema(source)
    assert pa.types.is_dictionary(schema.field("question").type)
    assert schema.field("context").type == pa.large_string()
    plain = write_parquet(tmp_path / "plain.parquet", rows)
    settings = ["--set", "input.passthrough_columns=[title]"]
    assert docqa(engine, source, tmp_path / "encoded", tiny_model_dir, *settings) == 0
    assert docqa("predict", plain, tmp_path / "plain", tiny_model_dir, *settings) == 0
    answers, rejections, _ = read_output(tmp_path / "encoded")
    assert [(r["id"], r["reason"], r["title"]) for r in rejections] == [
        ("blank", "EMPTY_QUESTION", "t-blank")
    ]
    expected, _, _ = read_output(tmp_path / "plain")

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["id"], row["title"], row["answer"], row["start"], row["end"], round(row["score"], 6))

    assert sorted(map(key, answers)) == sorted(map(key, expected))
    written = pq.read_schema(next((tmp_path / "encoded" / "answers").glob("*.parquet")))
    assert written.field("id").type == pa.string() and written.field("title").type == pa.string()


def mixed_directory(folder: Path) -> Path:
    """Files whose schemas differ in compatible ways, and files a reader must skip."""
    folder.mkdir()
    extra = [{**r, "extra": 1.5, "lang": "en"} for r in ROWS[:5]]
    pq.write_table(pa.Table.from_pylist(extra), folder / "a_extra_columns.parquet")
    reordered = pa.Table.from_pylist(ROWS[5:10]).select(["context", "title", "question", "id"])
    pq.write_table(reordered, folder / "b_reordered.parquet")
    pq.write_table(encoded_table(ROWS[10:15]), folder / "c_encoded.parquet")
    all_null = pa.table(
        {
            "id": ["n1", "n2"],
            "question": pa.array([None, None], pa.null()),
            "context": ["the city", "the river"],
            "title": ["tn1", "tn2"],
        }
    )
    pq.write_table(all_null, folder / "d_null_question.parquet")
    nested = folder / "e_nested"
    nested.mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[15:20]), nested / "part.parquet")
    # Hidden and in-progress files (even corrupt ones) are not input.
    (folder / ".hidden.parquet").write_bytes(b"junk")
    (folder / "_tmp").mkdir()
    (folder / "_tmp" / "x.parquet").write_bytes(b"junk")
    (folder / "_SUCCESS").write_bytes(b"")
    return folder


@pytest.mark.parametrize("engine", ENGINES)
def test_directory_of_compatible_schemas(engine: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = mixed_directory(tmp_path / "in")
    out = tmp_path / "out"
    assert docqa(engine, folder, out, tiny_model_dir, "--set", "input.passthrough_columns=[title]") == 0
    answers, rejections, counts = read_output(out)
    assert sorted(a["id"] for a in answers) == sorted(r["id"] for r in ROWS[:20])
    assert sorted((r["id"], r["reason"], r["title"]) for r in rejections) == [
        ("n1", "MISSING_QUESTION", "tn1"),
        ("n2", "MISSING_QUESTION", "tn2"),
    ]
    assert counts["rows_read"] == 22 and len(json.loads((out / "_run.json").read_text())["inputs"]) == 5


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("problem", ["missing_column", "other_id_type", "other_passthrough_type"])
def test_directory_with_one_incompatible_file(
    engine: str,
    problem: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = mixed_directory(tmp_path / "in")
    bad = folder / "z_bad.parquet"
    if problem == "missing_column":
        pq.write_table(pa.Table.from_pylist(ROWS[:3]).drop_columns(["context"]), bad)
        needles = ["has no column(s) ['context']"]
    elif problem == "other_id_type":
        pq.write_table(pa.Table.from_pylist([{**r, "id": i} for i, r in enumerate(ROWS[:3])]), bad)
        needles = ["column 'id' has type int64", "a_extra_columns.parquet has string"]
    else:
        pq.write_table(pa.Table.from_pylist([{**r, "title": 3} for r in ROWS[:3]]), bad)
        needles = ["column 'title' has type int64"]
    out = tmp_path / "out"
    code = docqa(engine, folder, out, tiny_model_dir, "--set", "input.passthrough_columns=[title]")
    assert_job_error(code, out, capsys, str(bad), *needles)


def test_run_writes_plain_schema_from_encoded_input_with_fake_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Beam's WriteToParquet gets the plain output schema (string ids) for a large_string id column."""
    source = tmp_path / "encoded.parquet"
    pq.write_table(encoded_table(ROWS[:6]), source)
    out = tmp_path / "out"
    config = load_config([], [f"model.name_or_path={tiny_model_dir}"])
    argv = ["--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    info = run(argv, model_handler=fakes.FakeModelHandler(config, str(tiny_model_dir)))
    answers = pq.read_table(out / "answers")
    assert answers.schema.field("id").type == pa.string()
    assert set(answers.column("answer").to_pylist()) == {"river church"}
    assert info["counts"]["rows_read"] == 6 == info["counts"]["answered"]


# --- Duplicate column names ---------------------------------------------------------------------------


def duplicated(rows: list[dict[str, Any]], column: str, copy: str = "copy") -> pa.Table:
    """The rows as a table with a second column named `column` (pyarrow writes such tables)."""
    table = pa.Table.from_pylist(rows)
    values = pa.array([f"{copy}-{i}" for i in range(len(rows))])
    return table.append_column(pa.field(column, pa.string()), values)


@pytest.mark.parametrize("column", ["id", "question", "context", "title"])
def test_read_input_schema_refuses_a_duplicated_column_it_reads(column: str, tmp_path: Path) -> None:
    from qa_core.errors import InputError
    from qa_core.io.read import read_input_schema, table_input_schema

    source = tmp_path / "dup.parquet"
    pq.write_table(duplicated(ROWS[:3], column), source)
    assert pq.read_schema(source).names.count(column) == 2
    config = load_config([], ["input.passthrough_columns=[title]"]).input
    with pytest.raises(InputError) as raised:
        read_input_schema([str(good_file(tmp_path / "a.parquet")), str(source)], config)
    message = str(raised.value)
    assert str(source) in message and f"column '{column}'" in message and "2 times" in message
    with pytest.raises(InputError, match=f"column '{column}'"):
        table_input_schema(duplicated(ROWS[:3], column).schema, config)


def test_duplicates_of_columns_the_job_does_not_read_are_harmless(tmp_path: Path) -> None:
    """Projection by name reads the configured columns once, whatever else the file holds twice."""
    from qa_core.io.read import iter_rows, read_input_schema

    source = tmp_path / "dup.parquet"
    pq.write_table(duplicated(ROWS[:25], "extra"), source, row_group_size=10)
    config = load_config([], ["input.passthrough_columns=[title]"]).input
    schema = read_input_schema([str(source)], config)
    assert [f.name for f in schema.fields] == ["id", "question", "context", "title"]
    rows = list(iter_rows([str(source)], config, batch_rows=4))
    assert rows == [{k: r[k] for k in ("id", "question", "context", "title")} for r in ROWS[:25]]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("column", ["question", "title"])
def test_duplicated_read_column_fails_the_job_naming_file_and_column(
    engine: str, column: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = tmp_path / "out"
    assert docqa(engine, good_file(tmp_path / "good.parquet"), earlier, tiny_model_dir) == 0
    before = {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    source = tmp_path / "dup.parquet"
    pq.write_table(duplicated(ROWS, column), source)
    settings = ["--set", "input.passthrough_columns=[title]", "--overwrite"]
    code = docqa(engine, source, earlier, tiny_model_dir, *settings)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("docqa ")]
    assert len(lines) == 1 and str(source) in lines[0] and f"column '{column}'" in lines[0], err
    assert {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before, "earlier output kept"


@pytest.mark.parametrize("engine", ENGINES)
def test_duplicated_unread_column_is_answered(engine: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    source = tmp_path / "dup.parquet"
    pq.write_table(duplicated(ROWS, "extra"), source, row_group_size=10)
    out = tmp_path / "out"
    assert docqa(engine, source, out, tiny_model_dir, "--set", "input.passthrough_columns=[title]") == 0
    answers, rejections, counts = read_output(out)
    assert sorted((a["id"], a["title"]) for a in answers) == sorted((r["id"], r["title"]) for r in ROWS)
    assert rejections == [] and counts["rows_read"] == len(ROWS)


# --- Schemas that differ only in nullability ------------------------------------------------------------

STRICT = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False, metadata={"origin": "a"}),
        pa.field("question", pa.string(), nullable=False),
        pa.field("context", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("tags", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False),
    ]
)
LOOSE = pa.schema(
    [
        pa.field("id", pa.string(), metadata={"origin": "b"}),
        pa.field("question", pa.string()),
        pa.field("context", pa.string()),
        pa.field("title", pa.string()),
        pa.field("tags", pa.list_(pa.string())),
    ]
)
GOOD_LOOSE = [{**r, "tags": ["x"]} for r in ROWS[20:24]]
NULLS = [
    {"id": None, "question": "what?", "context": "the city", "title": "no-id", "tags": ["y"]},
    {"id": "nq", "question": None, "context": "the city", "title": "no-question", "tags": None},
    {"id": "nc", "question": "what?", "context": None, "title": "no-context", "tags": [None]},
    {"id": "nt", "question": "what is it?", "context": "the river church", "title": None, "tags": [None]},
]


def nullability_directory(folder: Path) -> Path:
    """A file whose fields are all non-nullable, one with the same fields nullable and holding nulls, and
    one whose question and title are all null (Arrow type `null`)."""
    folder.mkdir()
    strict = [{**r, "tags": ["a", "b"]} for r in ROWS[:20]]
    pq.write_table(pa.Table.from_pylist(strict, schema=STRICT), folder / "a_strict.parquet")
    pq.write_table(pa.Table.from_pylist(GOOD_LOOSE + NULLS, schema=LOOSE), folder / "b_nullable.parquet")
    all_null = pa.table(
        {
            "id": ["z1"],
            "question": pa.array([None], pa.null()),
            "context": ["the city"],
            "title": pa.array([None], pa.null()),
            "tags": pa.array([None], pa.null()),
        }
    )
    pq.write_table(all_null, folder / "c_all_null.parquet")
    return folder


@pytest.mark.parametrize("order", ["strict_first", "nullable_first"])
def test_output_schemas_do_not_carry_the_input_nullability(order: str, tmp_path: Path) -> None:
    from qa_core.io.read import output_schemas, read_input_schema

    folder = nullability_directory(tmp_path / "in")
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    if order == "nullable_first":
        files.reverse()
    config = load_config([], ["input.passthrough_columns=[title, tags]", "input.id_column=id"])
    schema = read_input_schema(files, config.input)
    answers, rejections = output_schemas(schema, config)
    for name in ("id", "title", "tags"):
        assert answers.field(name).nullable, name
    for name in ("id", "question", "context", "title", "tags"):
        assert rejections.field(name).nullable, name
    assert answers.field("tags").type == pa.list_(pa.string())
    assert answers.field("tags").type.value_field.nullable
    # Rows of every file fit the schemas.
    from qa_core.io.read import iter_rows

    rows = list(iter_rows(files, config.input))
    pa.Table.from_pylist(rows, schema=pa.schema([rejections.field(n) for n in config.input.columns]))


def test_type_check_ignores_nullability_and_metadata_but_not_types(tmp_path: Path) -> None:
    from qa_core.errors import InputError
    from qa_core.io.read import read_input_schema

    config = load_config([], ["input.passthrough_columns=[tags]"]).input

    def file(name: str, tags_field: pa.Field, tags: Any) -> str:
        path = tmp_path / f"{name}.parquet"
        schema = pa.schema([*[*LOOSE][:3], tags_field])
        pq.write_table(
            pa.Table.from_pylist([{"id": name, "question": "q", "context": "c", "tags": tags}], schema), path
        )
        return str(path)

    strict_list, loose_list = STRICT.field("tags"), LOOSE.field("tags")
    assert read_input_schema([file("s", strict_list, ["x"]), file("l", loose_list, [None])], config)
    ints = pa.field("tags", pa.list_(pa.int64()))
    with pytest.raises(InputError, match=r"column 'tags' has type list<element: int64>"):
        read_input_schema([file("s2", strict_list, ["x"]), file("i", ints, [1])], config)
    strict_struct = pa.field("tags", pa.struct([pa.field("a", pa.int64(), nullable=False)]), nullable=False)
    loose_struct = pa.field("tags", pa.struct([pa.field("a", pa.int64(), metadata={"m": "1"})]))
    files = [file("n1", strict_struct, {"a": 1}), file("n2", loose_struct, {"a": None})]
    assert read_input_schema(files, config).field("tags").type == pa.struct([pa.field("a", pa.int64())])
    other = pa.field("tags", pa.struct([pa.field("a", pa.string())]))
    with pytest.raises(InputError, match="column 'tags' has type struct<a: string>"):
        read_input_schema([file("n3", strict_struct, {"a": 1}), file("o", other, {"a": "1"})], config)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("passthrough", ["[title]", "[title, tags]"])
def test_files_differing_in_nullability_lose_no_row(
    engine: str, passthrough: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Top-level fields (`[title]`), then nested ones too: nulls where another file declares none."""
    folder = nullability_directory(tmp_path / "in")
    out = tmp_path / "out"
    settings = ["--set", f"input.passthrough_columns={passthrough}"]
    assert docqa(engine, folder, out, tiny_model_dir, *settings) == 0
    answers, rejections, counts = read_output(out)
    assert counts["rows_read"] == 20 + len(GOOD_LOOSE) + len(NULLS) + 1
    assert counts["rows_read"] == counts["answered"] + counts["rejected"] == len(answers) + len(rejections)
    assert sorted((r["title"] or "", r["reason"]) for r in rejections) == [
        ("", "MISSING_QUESTION"),
        ("no-context", "MISSING_CONTEXT"),
        ("no-id", "MISSING_ID"),
        ("no-question", "MISSING_QUESTION"),
    ]
    assert {a["id"]: a["title"] for a in answers if a["id"] == "nt"} == {"nt": None}
    assert sorted(a["id"] for a in answers) == sorted(
        [r["id"] for r in ROWS[:20]] + [r["id"] for r in GOOD_LOOSE] + ["nt"]
    )


# --- Paths that exist but look like globs ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["run[1].parquet", "a*b?.parquet", "in[2024]", "x[ab]/part?.parquet"])
def test_an_existing_path_is_read_as_it_is(name: str, tmp_path: Path) -> None:
    from qa_core.io.read import resolve_inputs

    target = tmp_path / name
    if target.suffix == ".parquet":
        target.parent.mkdir(exist_ok=True)
        expected = [str(good_file(target))]
    else:
        target.mkdir()
        expected = [str(good_file(target / "a.parquet")), str(good_file(target / "b.parquet"))]
    # Files a glob reading of the name would match instead.
    for decoy in ("run1.parquet", "aXbY.parquet", "xa/part1.parquet"):
        (tmp_path / decoy).parent.mkdir(exist_ok=True)
        (tmp_path / decoy).write_bytes(b"junk")
    assert resolve_inputs(str(target)) == expected
    assert resolve_inputs(str(target) + ("/" if target.is_dir() else "")) == expected


def test_a_path_that_does_not_exist_is_still_a_glob(tmp_path: Path) -> None:
    from qa_core.errors import InputError
    from qa_core.io.read import resolve_inputs

    for name in ("run1.parquet", "run2.parquet", "run3.parquet"):
        good_file(tmp_path / name)
    assert resolve_inputs(str(tmp_path / "run[12].parquet")) == [
        str(tmp_path / "run1.parquet"),
        str(tmp_path / "run2.parquet"),
    ]
    assert len(resolve_inputs(str(tmp_path / "run?.parquet"))) == 3
    with pytest.raises(InputError, match="no input Parquet files match"):
        resolve_inputs(str(tmp_path / "run[45].parquet"))


@pytest.mark.parametrize("engine", ENGINES)
def test_bracketed_file_and_directory_are_answered(engine: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "in[2024]"
    folder.mkdir()
    good_file(folder / "run[1].parquet", ROWS[:20])
    good_file(folder / "run[2].parquet", ROWS[20:])
    for source, rows in ((folder, ROWS), (folder / "run[1].parquet", ROWS[:20])):
        out = tmp_path / "out"
        assert docqa(engine, source, out, tiny_model_dir, "--overwrite") == 0
        answers, rejections, counts = read_output(out)
        assert sorted(a["id"] for a in answers) == sorted(r["id"] for r in rows) and rejections == []
        assert counts["rows_read"] == len(rows)
