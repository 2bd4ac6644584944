"""`docqa spark --documents --questions`: the pairs answered as by `docqa predict`, the questions broadcast.

The tables are `tests.test_two_tables`' (30 documents in two files, 63 questions, 150 pairs), answered by
the tiny model on local[2] in units of about 37 pairs, each beginning at a document's first pair.
"""

from __future__ import annotations

import dataclasses
import pickle
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from pipelines.spark_job import SPARK_JOINS, share_source
from pipelines.spark_partition import UnitJob, answer_units
from qa_core.config import load_config
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.errors import JobError
from qa_core.io.read import output_schemas
from qa_core.io.sources import TableSource
from qa_core.io.spec import TwoTables, open_source
from qa_core.io.write import prepare_output
from qa_core.jobs.parts import PartRange
from tests.test_resume import read_output
from tests.test_two_tables import (
    BAD_DOCUMENTS,
    SETTINGS,
    materialised,
    run_info,
    two_table_argv,
    write_bad_tables,
    write_tables,
)

pytest.importorskip("pyspark", reason="docqa spark needs the [spark] extra")
if shutil.which("java") is None:
    pytest.skip("no Java runtime (apt-get install -y openjdk-17-jre-headless)", allow_module_level=True)

UNIT_ROWS = ["--set", "output.task_rows=37"]  # 150 pairs: units cut where a document's pairs begin
# docqa predict's parts as local[2]'s units (plan_parts(150, 4, 37) both): a part's batches, so its scores
# to the last bit, depend on its rows only.
PREDICT_PARTS = ["--workers", "4", "--set", "output.part_rows=37"]
# The two joins of the Spark job: the questions broadcast, and a keyed join, taken when the questions
# (63 here) are more than input.max_questions.
JOINS = {"broadcast": [], "keyed join": ["--set", "input.max_questions=5"]}


def spark_argv(
    docs: Path, qs: Path, out: Path, model: Path, *extra: str, master: str = "local[2]"
) -> list[str]:
    """`docqa spark` on `master` with the two-table tests' settings."""
    argv = two_table_argv(docs, qs, out, model, "--master", master, *extra)
    argv.remove("--no-progress")  # docqa predict's flag
    return ["spark", *argv[1:]]


def by_id(table: pa.Table) -> pa.Table:
    return table.sort_by([("id", "ascending")])


@pytest.fixture(scope="module")
def tables(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, list[dict[str, Any]], list[dict[str, Any]]]:
    return write_tables(tmp_path_factory.mktemp("spark_two_tables"))


@pytest.fixture(scope="module")
def predict_run(tables: Any, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs, qs, _, _ = tables
    out = tmp_path_factory.mktemp("predict") / "out"
    assert main(two_table_argv(docs, qs, out, tiny_model_dir, *PREDICT_PARTS)) == 0
    return out


@pytest.fixture(scope="module", params=list(JOINS))
def join(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def spark_run(tables: Any, join: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs, qs, _, _ = tables
    out = tmp_path_factory.mktemp("spark") / "out"
    assert main(spark_argv(docs, qs, out, tiny_model_dir, *UNIT_ROWS, *JOINS[join])) == 0
    return out


def test_spark_answers_the_pairs_as_predict_and_the_materialised_table(
    tables: Any, predict_run: Path, spark_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    _, _, documents, questions = tables
    answers, rejections = read_output(spark_run)
    want, want_rejected = read_output(predict_run)
    assert answers.num_rows == 150 and rejections.num_rows == want_rejected.num_rows == 0
    assert by_id(answers).equals(by_id(want))
    assert answers.equals(want) and rejections.equals(want_rejected)  # in input order too
    # The one-table job of the same pairs (id doc_id/question_id) answers them alike (its parts, so its
    # batches, differ: scores to 1e-9).
    pairs = materialised(documents, questions)
    one_table = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(pairs), one_table)
    settings = [*SETTINGS[:-1], "input.passthrough_columns=[doc_id,question_id,title]"]
    argv = ["predict", "--input", str(one_table), "--output", str(tmp_path / "one")]
    argv += ["--model", str(tiny_model_dir), "--no-progress", "--no-report"]
    assert main([*argv, *(x for s in settings for x in ("--set", s))]) == 0
    one, _ = read_output(tmp_path / "one")
    ours, theirs = by_id(answers).to_pylist(), by_id(one).to_pylist()
    assert [r["id"] for r in ours] == sorted(p["id"] for p in pairs)
    for row, want_row in zip(ours, theirs, strict=True):
        assert row.keys() == want_row.keys()
        assert {k: v for k, v in row.items() if "score" not in k} == {
            k: v for k, v in want_row.items() if "score" not in k
        }
        for key in (k for k in row if "score" in k):  # score, logit_score
            assert row[key] == pytest.approx(want_row[key], abs=1e-9), key


def test_the_run_says_its_join_and_reads_and_tokenizes_each_document_once(spark_run: Path, join: str) -> None:
    info = run_info(spark_run)
    counts, plan = info["counts"], info["two_table"]
    assert plan["join"] == join and plan["pair_id"] == "doc_id/question_id"
    assert counts["rows_read"] == plan["pairs"] == 150
    # Each unit holds whole documents, so each is read and tokenized by one task only.
    assert counts["documents_read"] == counts["contexts_tokenized"] == plan["documents"] == 30
    assert counts["context_lookups"] == 150
    units = info["spark"]["plan"]["units"]
    assert units == counts["partitions"] >= 4
    assert sum(e["rows"] for e in info["spark"]["executors"].values()) == 150
    assert info["engine"] == "spark:local[2]" and len(info["inputs"]) == 3


def test_resume_answers_only_the_unit_whose_parts_were_removed(
    tables: Any, spark_run: Path, join: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs, qs, _, _ = tables
    out = tmp_path / "out"
    shutil.copytree(spark_run, out)
    (out / "COMPLETED").unlink()
    removed = pq.read_table(out / "answers" / "part-00002.parquet").num_rows
    for table in ("answers", "rejections"):
        (out / table / "part-00002.parquet").unlink()
    assert main(spark_argv(docs, qs, out, tiny_model_dir, *UNIT_ROWS, *JOINS[join], "--resume")) == 0
    info, clean = run_info(out), run_info(spark_run)
    assert info["counts"]["reused_parts"] == clean["counts"]["partitions"] - 1
    executors = info["spark"]["executors"].values()
    assert sum(e["tasks"] for e in executors) == 1 and sum(e["rows"] for e in executors) == removed > 0
    assert info["counts"]["documents_read"] == 30  # the kept units' documents counted from their footers
    for table, want in zip(read_output(out), read_output(spark_run), strict=True):
        assert table.equals(want)


@pytest.mark.parametrize("join_flags", list(JOINS.values()), ids=list(JOINS))
def test_each_bad_input_is_one_rejection_with_its_reason(
    join_flags: list[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    docs, qs, documents, questions = write_bad_tables(tmp_path / "in")
    out = tmp_path / "out"
    assert main(spark_argv(docs, qs, out, tiny_model_dir, "--set", "output.task_rows=8", *join_flags)) == 0
    answers, rejections = read_output(out)
    good = materialised(documents, questions[:-3])
    assert sorted(answers.column("id").to_pylist()) == sorted(p["id"] for p in good)
    rejected = [(r["reason"], r["doc_id"], r["question_id"]) for r in rejections.to_pylist()]
    assert sorted(rejected, key=str) == sorted(
        [
            ("MISSING_DOC_ID", None, None),
            ("DUPLICATE_DOC_ID", "p2", None),
            ("MISSING_QUESTION_ID", None, None),
            ("DUPLICATE_QUESTION_ID", None, questions[0]["question_id"]),
            ("UNKNOWN_DOC_ID", "p99", "orphan"),
        ],
        key=str,
    )
    info = run_info(out)
    assert answers.num_rows + rejections.num_rows == info["counts"]["rows_read"] == len(good) + 5
    assert info["counts"]["rejected_by_reason"] == info["two_table"]["bad_inputs"]
    # Every document row is read once, the two bad ones too (their rejections carry their context).
    assert info["counts"]["documents_read"] == len(documents) + len(BAD_DOCUMENTS) == 8
    assert main(two_table_argv(docs, qs, tmp_path / "predict", tiny_model_dir)) == 0
    assert rejections.equals(read_output(tmp_path / "predict")[1])
    assert run_info(tmp_path / "predict")["counts"]["documents_read"] == 8


@pytest.mark.parametrize(
    ("flags", "needle"),
    [([], "no input: pass --input"), (["--questions", "qs.parquet"], "--questions needs --documents")],
)
def test_a_spark_job_without_its_input_fails_in_one_line(
    flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["spark", *flags, "--output", str(out), "--master", "local[2]", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("docqa spark: error:"), err
    assert not out.exists()


class FakeBroadcast:
    """A Spark broadcast as the driver and a task see it: a value, and a reference when pickled."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return (FakeBroadcast, (None,))  # Spark pickles a broadcast's id, never its value


class FakeContext:
    def __init__(self) -> None:
        self.shared: list[Any] = []

    def broadcast(self, value: Any) -> FakeBroadcast:
        self.shared.append(value)
        return FakeBroadcast(value)


def test_a_two_table_input_is_broadcast_and_read_through_it_in_the_task(
    tables: Any, tiny_model: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Without Spark: the job's closure names the broadcast only; the task reads the source through it."""
    docs, qs, _, questions = tables
    config = load_config([], [f"model.name_or_path={tiny_model_dir}", *SETTINGS])
    source = open_source(TwoTables(str(docs), str(qs)), config.input, SPARK_JOINS)
    context = FakeContext()
    shared = share_source(context, source)
    assert context.shared == [source] and shared.value is source
    one_table = TableSource((), (), source.schema, config.input)
    assert share_source(context, one_table) is None and len(context.shared) == 1
    answer_config = dataclasses.replace(config, input=source.columns)
    schemas = output_schemas(source.schema, answer_config)
    owner = prepare_output(str(tmp_path / "out"), overwrite=False)
    job = UnitJob(answer_config, str(tmp_path / "out"), *schemas, owner, "hash", shared_source=shared)
    closure = pickle.dumps(job)
    assert questions[0]["question"].encode() in pickle.dumps(source)
    assert questions[0]["question"].encode() not in closure
    with pytest.raises(JobError, match="not both"):
        UnitJob(answer_config, "out", *schemas, owner, "hash", source=source, shared_source=shared)
    import pipelines.spark_partition as partition_module

    partition_module._ENGINES[answer_config.config_hash()] = QAEngine(tiny_model, answer_config)
    (summary,) = list(answer_units(job, [PartRange(0, 0, source.boundary(12))]))
    counts = EngineStats.from_state(summary["counts"])
    # Documents p0..p2 hold 5 pairs each (two own questions, three for all): the unit reads those three.
    assert (summary["rows"], counts.documents_read, counts.contexts_tokenized) == (15, 3, 3)
    assert SPARK_JOINS.held == "broadcast" and SPARK_JOINS.keyed == "keyed join"
