"""`docqa run` / `python -m pipelines.run`: the Beam job, Parquet in, one part file pair per unit out.

    units -> Reshuffle -> ReadUnit (the input source: a side input)
                          (or JoinByKey: a two-table job's questions too many to hold)
          -> ValidateRows -> FeaturizeRecords -> BucketWindows
          -> RunInference(QAModelHandler) -> MergeWindows (in the same bundle)
          -> answers/part-K, rejections/part-K as each unit's last row is answered (WriteParts)

The launcher plans the input's rows as units (`qa_core.jobs.parts.plan_units`: at least two per core
the options ask for, at most `output.task_rows` rows each; `planned_cores`), so the unit of work is a
row range, not the writer's row group: a one-row-group file is answered by every worker, and a runner
with dynamic work rebalancing can split a straggling unit (`pipelines.io.ReadUnit`). The input is one
table (`--input`) or two (`--documents --questions`: `qa_core.io.pairs`); the units read it through the
job's `InputSource`, which reaches the workers as a Beam side input: a two-table job's questions, the
small side, are held by every worker (`_run.json` `two_table.join`: "side input"), and each unit reads
only the documents its rows need, each document in one unit. When the questions' footers count more
than `input.max_questions` rows, each question goes to its document's unit through two `CoGroupByKey`s
instead ("keyed join", `pipelines.keyed_join`); the documents still stay where their unit reads them.
A row's windows are
merged into its answer in the bundle that featurized it (one fused stage, no shuffle); only rows a runner
splits across bundles go through a `CoGroupByKey` (`AggregateRows`). Each unit's answers and rejections
are written as its own part files (`pipelines.write_parts`) in the bundle that answered them, as the
units finish, which is what `--resume` keeps: a killed job rerun with `--resume` answers only the units
whose two files are not there (`qa_core.jobs.resume`).

Every Beam pipeline option passes through untouched. The launcher runs the job's lifecycle
(`qa_core.jobs.lifecycle`): its checks before the graph is built, and after the pipeline has finished,
the footers against the rows read, `_run.json` and `COMPLETED`; Beam's counters add the engine's
figures. A pipeline that fails (a corrupt input file, a worker that died) is reported as one
`PipelineError` line naming the cause; its output is never marked `COMPLETED`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import (
    PipelineOptions,
)
from apache_beam.pvalue import PCollection

from pipelines import metrics, progress
from pipelines.failures import PipelineError, summarize_failure
from pipelines.inference import InferenceOutput, QAModelHandler
from pipelines.io import ReadUnit
from pipelines.keyed_join import JoinByKey
from pipelines.options import DESCRIPTION, add_run_arguments
from pipelines.runners import check_type_options, local_runner, planned_cores, workers_share_launcher_files
from pipelines.stages import (
    REJECTIONS,
    UNMERGED_CANDIDATES,
    UNMERGED_FAILURES,
    UNMERGED_RECORDS,
    AggregateRows,
    BucketWindows,
    FeaturizeRecords,
    MergeWindows,
    ValidateRows,
    count_result,
)
from pipelines.write_parts import PartSink, WriteParts
from qa_core.config import QAConfig, config_from_arguments
from qa_core.engine.stats import EngineStats
from qa_core.io.joins import Joins
from qa_core.io.pairs import PairsSource
from qa_core.io.read import output_schemas
from qa_core.io.sources import InputSource
from qa_core.io.spec import input_of_arguments
from qa_core.jobs.guard import run_guarded
from qa_core.jobs.lifecycle import Answered, AnsweringSite, JobRequest, commit, preflight
from qa_core.jobs.parts import PartRange, plan_units
from qa_core.jobs.resume import parted_output
from qa_core.runtime import host_tuning
from qa_core.runtime.loaders import load_runner

logger = logging.getLogger(__name__)


BEAM_JOINS = Joins(held="side input", keyed="keyed join")
"""The Beam job's joins: the questions reach the workers as a side input, or when the questions' footers
count more than `input.max_questions` rows, each question goes to its document's unit through
`CoGroupByKey`s (`pipelines.keyed_join`)."""


@dataclass(frozen=True)
class JobSpec:
    """What the graph needs, resolved on the launcher before the pipeline starts.

    Attributes:
        config: The config the workers answer with (`JobPlan.answer_config`).
        source: The job's input, planned (`JobPlan.source`): one table, or two tables' pairs with the
            questions held. It reaches the workers as a side input.
        output_dir: The output folder (prepared: `PartedOutput.prepare`).
        units: The units this attempt answers (all, or those a resumed job has not kept).
        config_hash: The job's config hash (`JobPlan.config`), written into each part's footers.
        owner: The job's owner token, checked before each part file is put in place.
    """

    config: QAConfig
    source: InputSource
    output_dir: str
    units: tuple[PartRange, ...]
    config_hash: str
    owner: str


def build_pipeline(
    pipeline: beam.Pipeline, spec: JobSpec, model_handler: ModelHandler[Any, Any, Any] | None = None
) -> None:
    """Adds the whole docqa graph to `pipeline`: units -> rows -> answers and rejections -> part files.

    Args:
        pipeline: The pipeline to build on (tests pass a `TestPipeline`).
        spec: Config, input source, output folder, units.
        model_handler: Replaces `QAModelHandler(config)` (tests inject failing models).
    """
    units = pipeline | "Units" >> beam.Create(list(spec.units), reshuffle=False)
    # Units to whichever worker is free, not to the one that listed them.
    spread = units | "Spread" >> beam.Reshuffle()
    keyed = spec.source.keyed if isinstance(spec.source, PairsSource) else None
    if keyed is not None:
        # Too many questions to hold: each goes to its document's unit by key (`pipelines.keyed_join`).
        rows = spread | "JoinByKey" >> JoinByKey(keyed, spec.units)
    else:
        # The input source as a side input: for two tables it holds the questions (the small side), which
        # every worker then gets through the runner's side-input channel, once per worker, not per unit.
        source = beam.pvalue.AsSingleton(pipeline | "Source" >> beam.Create([spec.source], reshuffle=False))
        rows = spread | "ReadUnits" >> beam.ParDo(ReadUnit(), source)
    answers, rejections = _answer(rows, spec.config, model_handler or QAModelHandler(spec.config))
    results = (
        answers | "CountAnswers" >> beam.Map(count_result),
        rejections | "CountRejections" >> beam.Map(count_result),
    ) | "AllResults" >> beam.Flatten()
    sink = PartSink(
        spec.output_dir,
        output_schemas(spec.source.schema, spec.config),
        spec.config.decode.top_k,
        spec.config_hash,
        spec.owner,
    )
    _ = {"units": units, "results": results} | "WriteParts" >> WriteParts(spec.units, sink)


def _answer(
    rows: PCollection[Any], config: QAConfig, handler: ModelHandler[Any, Any, Any]
) -> tuple[PCollection[Any], PCollection[Any]]:
    """The engine's stages as transforms; returns the answers and the rejections of every stage."""
    validated = rows | "Validate" >> beam.ParDo(ValidateRows(config)).with_outputs(REJECTIONS, main="records")
    featurized = validated.records | "Featurize" >> beam.ParDo(FeaturizeRecords(config)).with_outputs(
        REJECTIONS, main="rows"
    )
    merged = (
        featurized.rows
        | "Bucket" >> beam.ParDo(BucketWindows(config))
        # RunInference declares no output type; the handler's is what flows (`QAModelHandler.run_inference`).
        | "Infer" >> RunInference(handler.with_no_batching()).with_output_types(InferenceOutput)
        | "MergeWindows"
        >> beam.ParDo(MergeWindows(config)).with_outputs(
            REJECTIONS, UNMERGED_RECORDS, UNMERGED_CANDIDATES, UNMERGED_FAILURES, main="answers"
        )
    )
    # Rows that one bundle could not complete (none on runners that fuse the stage, as all do here).
    regrouped = (
        {
            "records": merged[UNMERGED_RECORDS],
            "candidates": merged[UNMERGED_CANDIDATES],
            "failures": merged[UNMERGED_FAILURES],
        }
        | "MergeAcrossBundles" >> beam.CoGroupByKey()
        | "AggregateAcrossBundles"
        >> beam.ParDo(AggregateRows(config)).with_outputs(REJECTIONS, main="answers")
    )
    answers = (merged.answers, regrouped.answers) | "AllAnswers" >> beam.Flatten()
    rejections = (
        validated[REJECTIONS],
        featurized[REJECTIONS],
        merged[REJECTIONS],
        regrouped[REJECTIONS],
    ) | "AllRejections" >> beam.Flatten()
    return answers, rejections


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parses docqa's own flags; everything else is returned untouched for Beam's `PipelineOptions`."""
    parser = argparse.ArgumentParser(prog="docqa run", description=DESCRIPTION)
    add_run_arguments(parser)
    return parser.parse_known_args(argv)


def run(
    argv: Sequence[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    model_handler: ModelHandler[Any, Any, Any] | None = None,
) -> dict[str, Any]:
    """Runs the Beam job and writes `_run.json` and `COMPLETED` when every row is accounted for.

    Args:
        argv: Command-line arguments (docqa's and Beam's).
        test_pipeline: A pipeline to build on instead of creating one from the Beam options.
        model_handler: Replaces the model handler (tests).

    Returns:
        The `_run.json` document.

    Raises:
        InputError, ModelLoadError, ConfigError: Job-level problems found before the pipeline starts
            (no input, or both kinds: `qa_core.io.spec.input_spec`).
        OutputError: An unusable output, a `--resume` of another job's output, or answers + rejections
            that do not add up to the rows read.
        PipelineError: The pipeline failed while running (a corrupt file, a worker that died).
    """
    args, beam_args = parse_args(argv)
    inputs = input_of_arguments(args)  # one table or two, or the one-line error before anything starts
    config = config_from_arguments(args)
    # The command's own process, tuned before any model loads: the launcher probes the batch shape, and
    # answers too with the in-process runners.
    if config.runtime.host_tuning:
        host_tuning.tune_host()
    options = PipelineOptions(beam_args, save_main_session=False)
    check_type_options(options)
    local = workers_share_launcher_files(options)
    request = JobRequest(inputs, args.output, overwrite=args.overwrite, resume=args.resume)
    site = AnsweringSite(
        "run", answers_here=local, unchecked_revision="unchecked:worker-image", joins=BEAM_JOINS
    )
    plan = preflight(
        config,
        request,
        site,
        # A large untuned local job probes with a model of its own: the workers load theirs.
        load=lambda: load_runner(config.model, config.runtime),
    )
    cores, task_rows = planned_cores(options), plan.config.output.task_rows
    # Units begin where a document's rows begin (two tables), so each document is read in one unit.
    units = plan_units(plan.rows_read, cores, task_rows, plan.source.boundary)
    # A resumed job takes the units its folder recorded (the cores found may differ between attempts).
    parted = parted_output(plan, units, resume=args.resume, adopt_stored_parts=True)
    owner = parted.prepare(plan)
    pending = parted.pending()
    pipeline = test_pipeline or beam.Pipeline(runner=local_runner(options), options=options)
    counters: dict[str, int] = {}
    per_worker: dict[str, int] = {}
    if pending:  # a resume of a job whose every unit was written has nothing left to run
        spec = JobSpec(
            plan.answer_config, plan.source, args.output, tuple(pending), plan.config.config_hash(), owner
        )
        build_pipeline(pipeline, spec, model_handler)
        counters, per_worker = _run_pipeline(
            pipeline, sum(unit.rows for unit in pending), args.output, progress_bar=args.progress and local
        )
    ran = metrics.stats_from_counters(counters)
    stats = None
    if ran is not None or not pending:
        stats = EngineStats()
        stats.add(ran or EngineStats())
        stats.add(parted.kept.stats)  # their footers' counters (`pipelines.write_parts.PartSink` says which)
    answered = Answered(
        f"beam:{type(pipeline.runner).__name__}",
        stats,
        exact=False,  # a runner's metrics may count a retried bundle twice: the footers decide
        model_id=plan.config.model.name_or_path,
        revision=plan.revision,
        device=plan.config.runtime.device,
        answered_rows=sum(unit.rows for unit in pending) if args.resume else None,
        counts={"metrics": counters, **parted.counts()},
        details={
            "beam": {
                "plan": {
                    "cores": cores,
                    "task_rows": plan.config.output.task_rows,
                    "units": len(parted.parts),
                },
                "rows_per_worker": per_worker,
            }
        },
    )
    return commit(plan, answered, owner)


def _run_pipeline(
    pipeline: beam.Pipeline, rows: int, output_dir: str, *, progress_bar: bool
) -> tuple[dict[str, int], dict[str, int]]:
    """Runs the pipeline to its end; returns its docqa counters and the rows each worker answered.

    Raises:
        PipelineError: The pipeline failed while running.
    """
    # Rows are counted where the workers run: a bar here moves only when they share this process's view.
    progress.start(rows, enabled=progress_bar)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as err:  # runners report worker failures in their own exception types
        raise PipelineError(
            f"the pipeline failed: {summarize_failure(err)}; {output_dir} is not marked COMPLETED "
            "(fix the cause, then rerun with --resume to keep the units written, or --overwrite)"
        ) from err
    finally:
        progress.close()
    return metrics.query_counters(result), metrics.query_counters(result, metrics.WORKER_NAMESPACE)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pipelines.run`; job errors exit with one line and code 2."""
    return run_guarded("run", lambda: run(argv) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
