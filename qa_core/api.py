"""The Python API: load a config and a model, answer rows or a pyarrow Table, as `docqa predict` does.

    import qa_core
    config = qa_core.load_config(overrides=["decode.top_k=3"])
    model = qa_core.load_model(config)
    for result in qa_core.answer_rows(model, config, [{"id": 1, "question": "...", "context": "..."}]):
        print(result)  # an Answer, or a Rejection with its reason code
    answers, rejections = qa_core.answer_tables(model, config, documents, questions)  # two pyarrow Tables

The same engine, config checks and calibration as the command-line jobs; nothing is written to storage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from qa_core.config import QAConfig
from qa_core.engine.loop import QAEngine
from qa_core.evaluation.calibration import apply_model_calibration
from qa_core.io.pairs import table_pairs
from qa_core.io.read import InputSchema, output_schemas, table_input_schema
from qa_core.io.schema import answer_to_row, rejection_to_row, rows_to_table
from qa_core.records import Answer, Rejection
from qa_core.runtime.loaders import load_runner
from qa_core.runtime.runner import ModelRunner


def load_model(config: QAConfig) -> ModelRunner:
    """Loads `config.model` (checkpoint, dtype, device, safety switches) in this process.

    Raises:
        ModelLoadError: Missing or unsafe checkpoint, no fast tokenizer, or a required GPU absent.
    """
    return load_runner(config.model, config.runtime)


def answer_rows(
    model: ModelRunner, config: QAConfig, rows: Iterable[Mapping[str, Any]]
) -> Iterator[Answer | Rejection]:
    """Answers rows (dicts with the configured id / question / context columns), one result per row.

    Results come in input order; the model's `calibration.json` applies as in a job.
    """
    yield from _engine(model, config).answer_rows(rows)


def answer_table(model: ModelRunner, config: QAConfig, table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Answers every row of a table; returns (answers, rejections) with the schemas `docqa predict` writes.

    Raises:
        InputError: A configured column is missing, or the question or context column holds no text.
    """
    schema = table_input_schema(table.schema, config.input)
    return _tables(_engine(model, config), schema, table.select(config.input.columns).to_pylist())


def answer_tables(
    model: ModelRunner, config: QAConfig, documents: pa.Table, questions: pa.Table
) -> tuple[pa.Table, pa.Table]:
    """Answers each question asked of its documents, as `docqa predict --documents --questions` does.

    A question with a doc_id (`input.doc_id_column`) is asked of that document, one without of every
    document; each pair is a row with the id `doc_id/question_id` and both keys as columns, and each bad
    document or question is one rejection (`qa_core.io.pairs_plan`).

    Returns:
        (answers, rejections) with the schemas `docqa predict` writes.

    Raises:
        InputError, ConfigError: A missing or unusable column or key column.
    """
    schema, plan, rows = table_pairs(documents, questions, config.input)
    return _tables(_engine(model, dataclasses.replace(config, input=plan.columns.rows)), schema, rows)


def _tables(
    engine: QAEngine, schema: InputSchema, rows: Iterable[Mapping[str, Any]]
) -> tuple[pa.Table, pa.Table]:
    """The engine's answers and rejections of `rows` (of columns `schema`) as the two output tables."""
    config = engine.config
    answer_schema, rejection_schema = output_schemas(schema, config)
    top_k = config.decode.top_k
    answers: list[dict[str, Any]] = []
    rejections: list[dict[str, Any]] = []
    for result in engine.answer_rows(rows):
        if isinstance(result, Answer):
            answers.append(answer_to_row(result, top_k))
        else:
            rejections.append(rejection_to_row(result))
    return (
        rows_to_table(answers, answer_schema),
        rows_to_table(rejections, rejection_schema),
    )


def _engine(model: ModelRunner, config: QAConfig) -> QAEngine:
    """The engine over `model`, with the model's calibration applied as a job's `preflight` applies it."""
    return QAEngine(model, apply_model_calibration(config))
