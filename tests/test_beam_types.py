"""Beam's type checks over every graph `docqa run` builds: honest hints that resolve at run time.

Beam (2.78 and later) resolves postponed (`from __future__ import annotations`) hints and checks every
transform's input against its producer's output when the graph is built. These tests build the whole
graph with that check on for every runner `docqa run` is documented with and for both answer table
kinds (one answer, n-best), and check that each PCollection carries the type that really flows (not
`Any`), that no hint fell back to `Any` (Beam logs each string it cannot resolve) and that the graph
translates to Beam's portable form. A run over bad rows then checks every element of every stage against
its PCollection's declared type (Beam's own `--runtime_type_check` checks tagged outputs against the main
output's type, so it cannot run on a multi-output graph), and the fallback merge (`CoGroupByKey` into
`AggregateRows`, which runners that fuse the stage never reach) type-checks and answers.

The module imports nothing from `tests/` and uses the bundled model, so the newest-releases lane of
`.ci/run` runs it against the installed wheel (`--noconftest`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, TypeOptions
from apache_beam.pvalue import PCollection
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.typehints import Dict, Iterable, Tuple, Union, typehints
from apache_beam.typehints.native_type_compatibility import convert_to_beam_type

from pipelines.inference import RowDone, WindowBatch
from pipelines.run import JobSpec, build_pipeline
from pipelines.runners import local_runner
from pipelines.stages import (
    REJECTIONS,
    UNMERGED_CANDIDATES,
    UNMERGED_FAILURES,
    UNMERGED_RECORDS,
    AggregateRows,
)
from qa_core.config import QAConfig, load_config
from qa_core.engine.assembly import WindowFailure
from qa_core.io.sources import TableSource
from qa_core.io.write import prepare_output
from qa_core.jobs.parts import PartRange
from qa_core.records import (
    Answer,
    Reason,
    Record,
    RejectedRow,
    Rejection,
    RowWindows,
    WindowCandidates,
    row_key,
)

# Every runner docqa run documents, as a user would name it (nothing here starts or reaches a runner).
RUNNER_ARGS = {
    "direct": [],
    "direct-multiprocess": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable-loopback": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
    "portable-external": [
        "--runner=PortableRunner",
        "--job_endpoint=localhost:8099",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
    ],
    "flink": ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--environment_type=LOOPBACK"],
    "spark": ["--runner=SparkRunner", "--spark_master_url=spark://localhost:7077"],
    "prism": ["--runner=PrismRunner"],
    "dataflow": [
        "--runner=DataflowRunner",
        "--project=docqa-test",
        "--region=us-central1",
        "--temp_location=gs://docqa-test-bucket/tmp",
        "--sdk_container_image=us-docker.pkg.dev/docqa-test/docqa/worker:0.1.0",
    ],
}
ROW_DICT = Dict[str, Any]
# (top-level transform, output tag) -> the type that flows there; a new transform must be added here.
DECLARED: dict[tuple[str, str | None], Any] = {
    ("Units", None): PartRange,
    ("Source", None): TableSource,
    ("Spread", None): PartRange,
    ("ReadUnits", None): Tuple[int, Union[RejectedRow, ROW_DICT]],
    ("Validate", None): Record,
    ("Validate", REJECTIONS): Rejection,
    ("Featurize", None): RowWindows,
    ("Featurize", REJECTIONS): Rejection,
    ("Bucket", None): WindowBatch,
    ("Infer", None): Union[WindowCandidates, WindowFailure, RowDone],
    ("MergeWindows", None): Answer,
    ("MergeWindows", REJECTIONS): Rejection,
    ("MergeWindows", UNMERGED_RECORDS): Tuple[str, Record],
    ("MergeWindows", UNMERGED_CANDIDATES): Tuple[str, WindowCandidates],
    ("MergeWindows", UNMERGED_FAILURES): Tuple[str, str],
    ("MergeAcrossBundles", None): Tuple[
        str, Dict[str, Union[Iterable[Record], Iterable[WindowCandidates], Iterable[str]]]
    ],
    ("AggregateAcrossBundles", None): Answer,
    ("AggregateAcrossBundles", REJECTIONS): Rejection,
    ("AllAnswers", None): Answer,
    ("AllRejections", None): Rejection,
    ("CountAnswers", None): Answer,
    ("CountRejections", None): Rejection,
    ("AllResults", None): Union[Answer, Rejection],
    ("WriteParts", None): int,  # the index of each unit written
}

ROWS: list[dict[str, Any]] = [
    {
        "id": "ok",
        "question": "Which city?",
        "context": "The river runs through the city of Linmouth.",
        "t": 1,
    },
    {"id": "long", "question": "When?", "context": " ".join(["It opened in 1911."] * 120), "t": 2},
    {"id": "blank-question", "question": "  ", "context": "The city.", "t": 3},
    {"id": "no-context", "question": "What?", "context": None, "t": 4},
    {"id": None, "question": "What?", "context": "The city.", "t": 5},
    {"id": "empty-context", "question": "What?", "context": "", "t": 6},
]


def _config(top_k: int) -> QAConfig:
    # Small batches and windows, so that rows span several windows and batches.
    return load_config(
        overrides=[
            f"decode.top_k={top_k}",
            "input.passthrough_columns=[t]",
            "featurize.max_seq_len=192",
            "featurize.doc_stride=64",
            "featurize.min_context_tokens=96",
            "batch.max_batch_windows=4",
            "batch.max_batch_tokens=512",
        ]
    )


def _spec(tmp_path: Path, top_k: int) -> JobSpec:
    """The job over `ROWS` in two units, its output folder prepared (the graph writes its part files)."""
    source = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), source)
    config = _config(top_k)
    output = str(tmp_path / "out")
    units = (PartRange(0, 0, 3), PartRange(1, 3, len(ROWS)))
    owner = prepare_output(output, overwrite=False)
    return JobSpec(
        config, TableSource.open(str(source), config.input), output, units, config.config_hash(), owner
    )


def _top_level_outputs(pipeline: beam.Pipeline) -> dict[tuple[str, str | None], PCollection[Any]]:
    """`(transform label, output tag) -> PCollection` of the graph's top-level transforms."""
    found: dict[tuple[str, str | None], PCollection[Any]] = {}

    class Outputs(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node: Any) -> None:
            self.visit_transform(node)

        def visit_transform(self, node: Any) -> None:
            if node.full_label and "/" not in node.full_label:
                for tag, pcoll in node.outputs.items():
                    found[(node.full_label, tag)] = pcoll

    pipeline.visit(Outputs())
    return found


@pytest.mark.parametrize("top_k", [1, 3], ids=["one-answer", "n-best"])
@pytest.mark.parametrize("runner", sorted(RUNNER_ARGS))
def test_every_graph_type_checks_with_honest_hints(
    runner: str, top_k: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = PipelineOptions(RUNNER_ARGS[runner])
    assert options.view_as(TypeOptions).pipeline_type_check  # Beam's default, kept on
    caplog.set_level(logging.INFO)
    pipeline = beam.Pipeline(runner=local_runner(options), options=options)
    build_pipeline(pipeline, _spec(tmp_path, top_k))

    outputs = _top_level_outputs(pipeline)
    ours = outputs  # every top-level transform is ours now (no Beam sink)
    assert set(ours) == set(DECLARED)
    for key, pcoll in ours.items():
        assert pcoll.element_type == convert_to_beam_type(DECLARED[key]), key
        assert pcoll.element_type != typehints.Any, key
    # A hint Beam could not resolve becomes Any with an INFO line; a tag without a declared type warns.
    unresolved = [r.getMessage() for r in caplog.records if "type hint to Any" in r.getMessage()]
    assert unresolved == []
    assert not [r for r in caplog.records if "not declared in type hints" in r.getMessage()]
    pipeline.to_runner_api()  # coders for every declared type, as a runner would translate the graph


def _check_declared(element: Any, where: str, declared: Any) -> Iterator[str]:
    """Fails the pipeline when an element is not an instance of its PCollection's declared type."""
    typehints.check_constraint(declared, element)
    yield where


def test_every_element_has_its_declared_type_on_good_and_bad_rows(tmp_path: Path) -> None:
    spec = _spec(tmp_path, top_k=3)
    with BeamTestPipeline(runner=local_runner(PipelineOptions())) as pipeline:
        build_pipeline(pipeline, spec)
        checked = [
            pcoll
            | f"Check {label} {tag}" >> beam.FlatMap(_check_declared, f"{label}:{tag}", pcoll.element_type)
            for (label, tag), pcoll in _top_level_outputs(pipeline).items()
        ]
        seen = tuple(checked) | "Checked" >> beam.Flatten() | "Distinct" >> beam.Distinct()
        # Every stage that these rows reach was checked, the rejections of validation included.
        reached = [
            "Units:None",
            "Source:None",
            "Spread:None",
            "ReadUnits:None",
            "Validate:None",
            f"Validate:{REJECTIONS}",
            "Featurize:None",
            "Bucket:None",
            "Infer:None",
            "MergeWindows:None",
            "AllAnswers:None",
            "AllRejections:None",
            "CountAnswers:None",
            "CountRejections:None",
            "AllResults:None",
            "WriteParts:None",
        ]
        assert_that(seen, equal_to(reached))


def test_rows_split_across_bundles_are_merged_with_type_checks() -> None:
    config = _config(top_k=1)
    record = Record(
        row_key=row_key(0),
        id="split",
        question="Which city?",
        context="The city.",
        row={"id": "split", "question": "Which city?", "context": "The city.", "t": 1},
        passthrough_columns=("t",),
    )
    with BeamTestPipeline(runner=local_runner(PipelineOptions())) as pipeline:
        pieces = {
            "records": pipeline
            | "Records" >> beam.Create([(record.row_key, record)]).with_output_types(tuple[str, Record]),
            "candidates": pipeline
            | "Candidates" >> beam.Create([]).with_output_types(tuple[str, WindowCandidates]),
            "failures": pipeline
            | "Failures"
            >> beam.Create([(record.row_key, "window 0 failed")]).with_output_types(tuple[str, str]),
        }
        merged = (
            pieces
            | "Merge" >> beam.CoGroupByKey()
            | "Aggregate" >> beam.ParDo(AggregateRows(config)).with_outputs(REJECTIONS, main="answers")
        )
        assert_that(merged.answers, equal_to([]), label="NoAnswers")
        reasons = merged[REJECTIONS] | beam.Map(lambda r: (r.id, r.reason, r.detail))
        assert_that(reasons, equal_to([("split", Reason.MODEL_ERROR, "window 0 failed")]), label="Rejected")
