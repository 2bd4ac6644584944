"""The Beam job: transforms with TestPipeline + assert_that, and Parquet -> Parquet on three runner setups."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from docqa.cli import main
from pipelines.inference import QAModelHandler, RowDone, WindowBatch
from pipelines.run import run
from pipelines.runners import local_runner
from pipelines.stages import (
    REJECTIONS,
    UNMERGED_CANDIDATES,
    UNMERGED_RECORDS,
    BucketWindows,
    FeaturizeRecords,
    MergeWindows,
    ValidateRows,
)
from qa_core.config import BatchConfig, QAConfig, load_config
from qa_core.engine.assembly import WindowFailure
from qa_core.records import Answer, Feature, Reason, Record, RowWindows, WindowCandidates
from qa_core.runtime.torch_runner import TorchRunner
from tests.conftest import write_parquet
from tests.test_engine import PoisonModel

MIXED_ROWS: list[dict[str, Any]] = [
    {
        "id": "q1",
        "question": "what city?",
        "context": "the city of 東京 is north of the river",
        "title": "t1",
    },
    {"id": "q2", "question": "which team?", "context": "the team won the war \r\n in 1999", "title": "t2"},
    {"id": "dup", "question": "what?", "context": "the river church", "title": "t3"},
    {"id": "dup", "question": "what?", "context": "a school music film", "title": "t4"},
    {"id": "q5", "question": "", "context": "the city", "title": "t5"},
    {"id": "q6", "question": None, "context": "the city", "title": "t6"},
    {"id": "q7", "question": "   \t", "context": "the city", "title": "t7"},
    {"id": "q8", "question": "what?", "context": "", "title": "t8"},
    {"id": "q9", "question": "what?", "context": None, "title": "t9"},
    {"id": "q10", "question": "what?", "context": " \n ", "title": "t10"},
    {"id": None, "question": "what?", "context": "the city", "title": "t11"},
    {
        "id": "q12",
        "question": "history of the state?",
        "context": " ".join(["the state war"] * 300),
        "title": "t12",
    },
]
EXPECTED_REJECTIONS = {
    "q5": "EMPTY_QUESTION",
    "q6": "MISSING_QUESTION",
    "q7": "EMPTY_QUESTION",
    "q8": "EMPTY_CONTEXT",
    "q9": "MISSING_CONTEXT",
    "q10": "EMPTY_CONTEXT",
    None: "MISSING_ID",
}
ENGINES = {
    "direct": [],
    "multiprocess": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}
# The DirectRunner (asked for by default) is replaced by the FnApiRunner it would fall back to, so Beam
# never tries to download the Prism runner (pipelines.runners.local_runner).
RUNNERS = {
    "direct": "beam:FnApiRunner",
    "multiprocess": "beam:FnApiRunner",
    "portable": "beam:PortableRunner",
}


def local_test_pipeline() -> BeamTestPipeline:
    """A TestPipeline on the runner `docqa run` uses locally (no Prism download attempt)."""
    return BeamTestPipeline(runner=local_runner(PipelineOptions()))


def answer_set(out: Path) -> set[tuple[Any, ...]]:
    rows = pq.read_table(out / "answers").to_pylist()
    return {(r["id"], r["title"], r["answer"], r["start"], r["end"], round(r["score"], 5)) for r in rows}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("beam")
    source = write_parquet(base / "mixed.parquet", MIXED_ROWS)
    out = base / "predict"
    args = ["--model", str(tiny_model_dir), "--set", "input.passthrough_columns=[title]"]
    assert main(["predict", "--input", str(source), "--output", str(out), "--no-progress", *args]) == 0
    return source, out


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_run_matches_predict_on_every_engine(
    engine: str, predicted: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    source, predict_out = predicted
    out = tmp_path / engine
    argv = ["run", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    argv += ["--set", "input.passthrough_columns=[title]", *ENGINES[engine]]
    assert main(argv) == 0
    assert (out / "COMPLETED").exists()
    assert answer_set(out) == answer_set(predict_out)
    rejections = pq.read_table(out / "rejections").to_pylist()
    assert {r["id"]: r["reason"] for r in rejections} == EXPECTED_REJECTIONS
    info = json.loads((out / "_run.json").read_text())
    assert info["engine"] == RUNNERS[engine]
    counts = info["counts"]
    assert counts["rows_read"] == len(MIXED_ROWS) == counts["answered"] + counts["rejected"]
    assert counts["answered"] == 5
    # Every row was merged in the bundle that featurized it: nothing went through the fallback shuffle.
    assert counts["metrics"].get("rows_merged_across_bundles", 0) == 0
    # Two rows sharing an id are answered separately, each from its own context.
    dup = {r["title"]: r["answer"] for r in pq.read_table(out / "answers").to_pylist() if r["id"] == "dup"}
    assert set(dup) == {"t3", "t4"}
    assert dup["t3"] in "the river church" and dup["t4"] in "a school music film"


def test_run_resolves_every_type_hint_and_logs_none(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source = write_parquet(tmp_path / "in.parquet", MIXED_ROWS[:2])
    argv = ["run", "--input", str(source), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir)]
    assert main([*argv, "--no-report", "--no-progress"]) == 0
    assert any(r.name == "qa_core.jobs.lifecycle" for r in caplog.records)  # the job's own INFO lines do show
    # Beam logs each hint it cannot resolve (and then takes as Any) at INFO; docqa's all resolve.
    assert not [r for r in caplog.records if "type hint to Any" in r.getMessage()]


@pytest.mark.parametrize(
    ("argv", "runner"),
    [
        ([], "FnApiRunner"),
        (["--runner=DirectRunner", "--direct_num_workers=2"], "FnApiRunner"),
        (["--runner=PrismRunner"], None),
        (["--runner=PortableRunner"], None),
    ],
)
def test_local_runner_skips_the_prism_download(argv: list[str], runner: str | None) -> None:
    chosen = local_runner(PipelineOptions(argv))
    assert (type(chosen).__name__ if chosen else None) == runner


def test_validate_rows_transform() -> None:
    config = QAConfig()
    rows = [{"id": 1, "question": "q?", "context": "c"}, {"id": 2, "question": " ", "context": "c"}]
    with local_test_pipeline() as p:
        positioned = p | beam.Create([(7, rows[0]), (8, rows[1])])
        out = positioned | beam.ParDo(ValidateRows(config)).with_outputs(REJECTIONS, main="records")
        keyed = out.records | "Ids" >> beam.Map(lambda r: (r.row_key, r.id))
        assert_that(keyed, equal_to([("7", 1)]), label="records")  # keyed by the input position
        reasons = out[REJECTIONS] | "Reasons" >> beam.Map(lambda r: (r.id, r.reason.value))
        assert_that(reasons, equal_to([(2, "EMPTY_QUESTION")]), label="rejections")


def test_featurize_records_in_chunks_match_the_featurizer(tiny_model_dir: Path) -> None:
    """Records featurized in chunks (full ones in process, the rest in finish_bundle): every record once,
    with the windows the featurizer gives it alone, rejections tagged."""
    from qa_core.runtime.loaders import load_tokenizer
    from qa_core.stages.featurize import Featurizer

    config = load_config([], [f"model.name_or_path={tiny_model_dir}", "runtime.device=cpu"])
    contexts = ["the city of the river " * 40, "the team won", "\u200b\u200b", "a school music film " * 3]
    records = [Record(f"k{i}", f"id{i}", f"what city {i}?", contexts[i % 4]) for i in range(300)]
    alone = Featurizer(load_tokenizer(config.model), config.featurize)
    expected, rejected = [], []
    for record in records:
        (result,) = alone.featurize([record])
        if isinstance(result, list):
            expected.append((record.row_key, [(f.window_index, f.input_ids.tolist()) for f in result]))
        else:
            rejected.append((record.row_key, result.reason.value))
    assert len(rejected) == 75 and len(expected) == 225  # the zero-width contexts have no tokens
    with local_test_pipeline() as p:
        out = (
            p
            | beam.Create(records, reshuffle=False)
            | beam.ParDo(FeaturizeRecords(config)).with_outputs(REJECTIONS, main="rows")
        )
        windows = out.rows | "Windows" >> beam.Map(
            lambda row: (row.record.row_key, [(f.window_index, f.input_ids.tolist()) for f in row.windows])
        )
        assert_that(windows, equal_to(expected), label="rows")
        reasons = out[REJECTIONS] | "Reasons" >> beam.Map(lambda r: (r.row_key, r.reason.value))
        assert_that(reasons, equal_to(rejected), label="rejections")


def _feature(key: str, length: int, index: int = 0, n_windows: int = 1) -> Feature:
    ids = np.arange(length, dtype=np.int32)
    return Feature(key, index, n_windows, ids, np.zeros(length, np.int8), ids, ids + 1, 0)


def _row(key: str, *lengths: int) -> RowWindows:
    windows = tuple(_feature(key, n, i, len(lengths)) for i, n in enumerate(lengths))
    return RowWindows(Record(key, key, "q", "c"), windows)


def test_bucket_windows_sorts_caps_and_sends_each_row_with_its_last_window() -> None:
    config = QAConfig(batch=BatchConfig(max_batch_windows=4, max_batch_tokens=64, sort_buffer_windows=50))
    lengths = [3, 40, 9, 17, 5, 33, 8, 8, 2, 30, 12]
    rows = [_row(f"k{i}", n) for i, n in enumerate(lengths)]
    rows += [_row("long", 40, 40, 6), _row("pair", 2, 33)]  # windows of one row land in several batches
    all_windows = sorted((f.row_key, f.window_index) for row in rows for f in row.windows)

    def check(batches: list[WindowBatch]) -> None:
        assert sorted((f.row_key, f.window_index) for b in batches for f in b) == all_windows
        seen: set[tuple[str, int]] = set()
        done_rows: list[str] = []
        for batch in batches:  # one bundle here: the order is the emission order
            width = -(-max(f.length for f in batch) // 8) * 8
            assert len(batch) <= 4 and (len(batch) * width <= 64 or len(batch) == 1)
            seen.update((f.row_key, f.window_index) for f in batch)
            for done in batch.done:
                # Every window of a finished row has been sent, in this batch or an earlier one.
                assert all((done.record.row_key, i) in seen for i in range(done.n_windows))
                done_rows.append(done.record.row_key)
        assert sorted(done_rows) == sorted(row.record.row_key for row in rows)

    with local_test_pipeline() as p:
        batches = p | beam.Create(rows, reshuffle=False) | beam.ParDo(BucketWindows(config))
        assert_that(batches, check)


def _candidates(key: str, index: int, n_windows: int, start: int) -> WindowCandidates:
    return WindowCandidates(
        key, index, n_windows, np.array([start]), np.array([start + 3]), np.array([1.0 + index]), None
    )


def _run_merge(bundles: list[list[Any]]) -> tuple[list[Any], list[tuple[str, Any]]]:
    """Runs `MergeWindows` by hand over the given bundles; returns (answers/rejections, unmerged pieces)."""
    merge = MergeWindows(QAConfig())
    merged: list[Any] = []
    unmerged: list[tuple[str, Any]] = []
    for bundle in bundles:
        merge.start_bundle()
        for item in bundle:
            merged.extend(merge.process(item))
        for out in merge.finish_bundle():
            unmerged.append((out.tag, out.value.value))
    return merged, unmerged


def test_merge_windows_answers_complete_rows_in_any_order_and_hands_on_split_rows() -> None:
    record = Record("a", "id-a", "q", "the river flows past the church")
    done = RowDone(record, 2)
    first, second = _candidates("a", 0, 2, 4), _candidates("a", 1, 2, 10)
    for order in ([first, second, done], [done, second, first], [second, done, first]):
        merged, unmerged = _run_merge([order])
        assert unmerged == []
        (answer,) = merged
        assert isinstance(answer, Answer) and answer.answer == record.context[10:13]
    # A failed window rejects the row, once all its windows are accounted for.
    merged, _ = _run_merge([[first, WindowFailure("a", "CUDA error", 1), done]])
    assert len(merged) == 1 and merged[0].tag == REJECTIONS
    assert merged[0].value.reason is Reason.MODEL_ERROR
    # Split across bundles: nothing is answered from half a row; every piece goes to the fallback merge.
    merged, unmerged = _run_merge([[first], [second, done]])
    assert merged == []
    assert sorted(tag for tag, _ in unmerged) == [UNMERGED_CANDIDATES, UNMERGED_CANDIDATES, UNMERGED_RECORDS]
    assert all(value[0] == "a" for _, value in unmerged)


class PoisonHandler(QAModelHandler):
    """Loads the tiny model's tokenizer with a model that fails on batches holding the word 'film'."""

    def __init__(self, config: QAConfig, tokenizer_dir: str) -> None:
        super().__init__(config)
        self._dir = tokenizer_dir

    def load_model(self) -> TorchRunner:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self._dir)
        ids = tok.convert_tokens_to_ids(["river", "church", "film"])
        return TorchRunner(PoisonModel(*ids), tok, torch.device("cpu"), torch.float32, "poison", "test")


def test_poison_row_rejects_only_that_row(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = [{"id": i, "question": "what?", "context": "the river church"} for i in range(12)]
    rows[5] = {"id": 5, "question": "what?", "context": "the film river church"}
    source = write_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    argv = ["--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    config = load_config([], [f"model.name_or_path={tiny_model_dir}"])
    info = run(argv, model_handler=PoisonHandler(config, str(tiny_model_dir)))
    rejections = pq.read_table(out / "rejections").to_pylist()
    assert [(r["id"], r["reason"]) for r in rejections] == [(5, "MODEL_ERROR")]
    assert "poisoned batch" in rejections[0]["detail"]
    answers = pq.read_table(out / "answers").to_pylist()
    assert len(answers) == 11 and {a["answer"] for a in answers} == {"river church"}
    assert info["counts"]["rows_read"] == 12 and (out / "COMPLETED").exists()


def test_run_fails_fast_on_missing_column(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", [{"id": 1, "query": "q", "context": "c"}])
    code = main(
        ["run", "--input", str(source), "--output", str(tmp_path / "o"), "--model", str(tiny_model_dir)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "has no column(s) ['question']" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "COMPLETED").exists()


@pytest.mark.parametrize("flag", ["--runtime_type_check", "--performance_runtime_type_check"])
def test_run_refuses_beams_runtime_type_check_before_any_work(
    flag: str, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", MIXED_ROWS[:2])
    out = tmp_path / "o"
    code = main(["run", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir), flag])
    err = capsys.readouterr().err
    assert code == 2 and f"{flag}: Beam checks tagged outputs" in err and "Traceback" not in err
    assert not out.exists()


def test_run_counts_cut_questions_as_predict_does(
    predicted: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    source, _ = predicted
    argv = ["--input", str(source), "--model", str(tiny_model_dir), "--set", "featurize.max_question_len=1"]
    assert main(["predict", *argv, "--output", str(tmp_path / "p"), "--no-progress", "--no-report"]) == 0
    assert main(["run", *argv, "--output", str(tmp_path / "r")]) == 0
    counts = [json.loads((tmp_path / o / "_run.json").read_text())["counts"] for o in "pr"]
    assert counts[0]["questions_cut"] == counts[1]["questions_cut"] > 0
    # Beam counts the context cache's work too (its bundles may tokenize a context more than once).
    assert counts[0]["context_lookups"] == counts[1]["context_lookups"] > 0
    assert (
        0 < counts[0]["contexts_tokenized"] <= counts[1]["contexts_tokenized"] <= counts[1]["context_lookups"]
    )
    assert counts[1]["context_cache_peak_bytes"] > 0
