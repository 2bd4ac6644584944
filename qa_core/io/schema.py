"""The output contract: folder layout and explicit Arrow schemas of answers and rejections.

Shared by the in-process writer (`docqa predict`) and the Beam job (`docqa run`), so both engines write
byte-compatible tables. Column meanings are attached as field metadata, readable with
`pyarrow.parquet.read_schema(...).field("score").metadata`.

Columns carried from the input (the id, pass-through columns, a rejection's original columns) are nullable
at every level whatever the input declares: files of one job may differ in nullability, and a row with a
null where it must not have one is rejected, never a failed write. The fixed column names are defined in
`qa_core.config` (`ANSWER_COLUMNS`, `REJECTION_COLUMNS`), where `InputConfig` refuses pass-through columns
named like them; config imports nothing of docqa, so they live there and are imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import pyarrow as pa

from qa_core.config import ANSWER_COLUMNS, REJECTION_COLUMNS
from qa_core.records import Answer, Rejection

ANSWERS_DIR = "answers"
REJECTIONS_DIR = "rejections"
RUN_INFO_FILE = "_run.json"
COMPLETED_FILE = "COMPLETED"
REPORT_FILE = "report.html"
REPORT_DIR = "report"

SCORE_DEFINITION = (
    "softmax probability of this answer among the row's candidates: exp((l - m)/T) / sum_c exp((l_c - m)/T) "
    "over the n_best spans of each window (one per character span, its best logit) plus the null answer when "
    "no-answer handling is on; l = start_logit[i] + end_logit[j], m = max l, T = decode.temperature"
)

TOP_K_TYPE = pa.list_(
    pa.struct(
        [
            pa.field("answer", pa.string()),
            pa.field("start", pa.int64()),
            pa.field("end", pa.int64()),
            pa.field("score", pa.float64()),
        ]
    )
)


def _doc(name: str, type_: pa.DataType, text: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": text})


def nullable_type(type_: pa.DataType) -> pa.DataType:
    """`type_` with every nested field (list items, struct fields, map values) nullable.

    A map's keys stay non-nullable, as Arrow requires. Field metadata is kept; it is no part of a type's
    equality (`DataType.equals(..., check_metadata=False)`).
    """
    if pa.types.is_map(type_):
        return pa.map_(type_.key_field, _nullable_field(type_.item_field), keys_sorted=type_.keys_sorted)
    if pa.types.is_fixed_size_list(type_):
        return pa.list_(_nullable_field(type_.value_field), type_.list_size)
    if pa.types.is_list(type_):
        return pa.list_(_nullable_field(type_.value_field))
    if pa.types.is_large_list(type_):
        return pa.large_list(_nullable_field(type_.value_field))
    if pa.types.is_list_view(type_):
        return pa.list_view(_nullable_field(type_.value_field))
    if pa.types.is_large_list_view(type_):
        return pa.large_list_view(_nullable_field(type_.value_field))
    if pa.types.is_struct(type_):
        return pa.struct([_nullable_field(type_.field(i)) for i in range(type_.num_fields)])
    return type_


def _nullable_field(field: pa.Field) -> pa.Field:
    return field.with_type(nullable_type(field.type)).with_nullable(True)


def carried_field(field: pa.Field) -> pa.Field:
    """An input field as the outputs carry it: nullable at every level, name, type and metadata kept."""
    return _nullable_field(field)


def answer_schema(id_type: pa.DataType, passthrough: Sequence[pa.Field] = (), top_k: int = 1) -> pa.Schema:
    """Schema of `answers/*.parquet`.

    Args:
        id_type: Arrow type of the input's id column (ids are written as they came).
        passthrough: Input fields copied to the output (written nullable: `carried_field`).
        top_k: The `top_k` column exists only when > 1.

    The `id` column is nullable although an answered row always has an id (a null id is rejected): the
    flag would promise nothing a reader needs, and a value that broke it would fail the whole write.
    """
    fields = [
        _doc(
            "id",
            nullable_type(id_type),
            "the row's id, as in the input (ids may repeat; rows are never merged)",
        ),
        _doc("answer", pa.string(), "context[start:end]; empty when there is no answer", nullable=False),
        _doc("start", pa.int64(), "code-point offset of the answer in the context; null when no answer"),
        _doc("end", pa.int64(), "exclusive end offset (code points); null when no answer"),
        _doc("score", pa.float64(), SCORE_DEFINITION, nullable=False),
        _doc(
            "logit_score",
            pa.float64(),
            "start_logit[i] + end_logit[j] of the answer (null score if none)",
            nullable=False,
        ),
        _doc("no_answer", pa.bool_(), "true when the null answer won", nullable=False),
        _doc(
            "null_score_diff",
            pa.float64(),
            "null score - best span logit; null when no-answer handling is off",
        ),
    ]
    if top_k > 1:
        fields.append(_doc("top_k", TOP_K_TYPE, "the top_k answers, the returned one first"))
    return pa.schema([*fields, *map(carried_field, passthrough)])


def rejection_schema(id_type: pa.DataType, input_fields: Sequence[pa.Field]) -> pa.Schema:
    """Schema of `rejections/*.parquet`: id, reason, detail, then the row's original columns (nullable)."""
    fields = [
        _doc("id", nullable_type(id_type), "the row's id, as in the input (may be null)"),
        _doc("reason", pa.string(), "stable upper-case reason code", nullable=False),
        _doc("detail", pa.string(), "what was wrong", nullable=False),
    ]
    return pa.schema([*fields, *(carried_field(f) for f in input_fields if f.name not in REJECTION_COLUMNS)])


def answer_to_row(answer: Answer, top_k: int) -> dict[str, Any]:
    """One answer as a dict matching `answer_schema`."""
    row: dict[str, Any] = {
        "id": answer.id,
        "answer": answer.answer,
        "start": answer.start,
        "end": answer.end,
        "score": answer.score,
        "logit_score": answer.logit_score,
        "no_answer": answer.no_answer,
        "null_score_diff": answer.null_score_diff,
    }
    if top_k > 1:
        row["top_k"] = [
            {"answer": s.answer, "start": s.start, "end": s.end, "score": s.score} for s in answer.top_k
        ]
    row.update(answer.passthrough)
    return row


def rejection_to_row(rejection: Rejection) -> dict[str, Any]:
    """One rejection as a dict matching `rejection_schema` (extra keys are ignored by the table)."""
    return {**rejection.row, "id": rejection.id, "reason": rejection.reason.value, "detail": rejection.detail}


def rows_to_table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Builds a table with exactly `schema`'s columns from dict rows."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


ResultT_contra = TypeVar("ResultT_contra", Answer, Rejection, contravariant=True)


class ResultColumns(Protocol[ResultT_contra]):
    """Results gathered one at a time, then taken as a table (`AnswerColumns`, `RejectionColumns`)."""

    def add(self, result: ResultT_contra) -> None:
        """Keeps one result for the next table."""

    def __len__(self) -> int:
        """The results kept since the last `take_table`."""

    def take_table(self) -> pa.Table:
        """The kept results as a table (the schema's columns, in order), and a fresh start."""


class AnswerColumns:
    """Answers as `answer_schema` tables, built column by column.

    The table is the one `rows_to_table` makes of `answer_to_row`'s dicts (the same values and types),
    without a dict per answer and per `top_k` entry.

    Args:
        schema: The answers schema (`answer_schema`): its fixed columns, then pass-through ones.
        top_k: The `top_k` column holds each answer's list when > 1 (else nulls, as in `answer_to_row`).
    """

    def __init__(self, schema: pa.Schema, top_k: int) -> None:
        self._schema = schema
        self._top_k = top_k
        # One tuple per answer: its fixed columns (`ANSWER_COLUMNS` order), then its pass-through dict.
        self._rows: list[tuple[Any, ...]] = []

    def add(self, answer: Answer) -> None:
        """Keeps one answer for the next table."""
        self._rows.append(
            (
                answer.id,
                answer.answer,
                answer.start,
                answer.end,
                answer.score,
                answer.logit_score,
                answer.no_answer,
                answer.null_score_diff,
                answer.top_k,
                answer.passthrough,
            )
        )

    def __len__(self) -> int:
        return len(self._rows)

    def take_table(self) -> pa.Table:
        """The kept answers as an `answer_schema` table, and a fresh start."""
        rows, self._rows = self._rows, []
        # (10, N): one sequence per fixed column, then the pass-through dicts
        columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [()] * 10
        position = {name: k for k, name in enumerate(ANSWER_COLUMNS)}
        arrays = []
        for field in self._schema:
            if field.name == "top_k":
                # Struct values as tuples (in the struct's field order): half the cost of dicts.
                values: Sequence[Any] = (
                    [[(s.answer, s.start, s.end, s.score) for s in spans] for spans in columns[8]]
                    if self._top_k > 1
                    else [None] * len(rows)
                )
            elif field.name in position:
                values = columns[position[field.name]]
            else:
                values = [passthrough.get(field.name) for passthrough in columns[9]]
            arrays.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(arrays, schema=self._schema)


class RejectionColumns:
    """Rejections as `rejection_schema` tables, built column by column.

    The table is the one `rows_to_table` makes of `rejection_to_row`'s dicts.

    Args:
        schema: The rejections schema (`rejection_schema`): id, reason, detail, then the input columns.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self._schema = schema
        self._rows: list[Rejection] = []

    def add(self, rejection: Rejection) -> None:
        """Keeps one rejection for the next table."""
        self._rows.append(rejection)

    def __len__(self) -> int:
        return len(self._rows)

    def take_table(self) -> pa.Table:
        """The kept rejections as a `rejection_schema` table, and a fresh start."""
        rows, self._rows = self._rows, []
        fixed: dict[str, list[Any]] = {
            "id": [r.id for r in rows],
            "reason": [r.reason.value for r in rows],
            "detail": [r.detail for r in rows],
        }
        arrays = [
            pa.array(fixed[f.name] if f.name in fixed else [r.row.get(f.name) for r in rows], type=f.type)
            for f in self._schema
        ]
        return pa.Table.from_arrays(arrays, schema=self._schema)
