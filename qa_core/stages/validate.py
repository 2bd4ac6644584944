"""Stage 1: an input row (a dict of column values) becomes a `Record` or a `Rejection`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from qa_core.config import FeaturizeConfig, InputConfig
from qa_core.records import Reason, Record, RejectedRow, Rejection


def _check_text(value: Any, name: str) -> tuple[Reason, str] | None:
    """Returns why a question/context value is unusable, or None when it is a non-blank string."""
    missing, invalid, empty = (
        (Reason.MISSING_QUESTION, Reason.INVALID_QUESTION_TYPE, Reason.EMPTY_QUESTION)
        if name == "question"
        else (Reason.MISSING_CONTEXT, Reason.INVALID_CONTEXT_TYPE, Reason.EMPTY_CONTEXT)
    )
    if value is None:
        return missing, f"{name} is null"
    if not isinstance(value, str):
        return invalid, f"{name} is {type(value).__name__}, expected a string"
    if not value.strip():
        return empty, f"{name} is empty or whitespace only ({len(value)} characters)"
    return None


def validate_row(
    row: Mapping[str, Any],
    row_key: str,
    input_config: InputConfig,
    featurize_config: FeaturizeConfig,
) -> Record | Rejection:
    """Checks one input row.

    Args:
        row: Column name to value, as read from the input table.
        row_key: Engine-internal unique key for this row.
        input_config: Which columns hold the id, question and context.
        featurize_config: Supplies the context length limit.

    Returns:
        A `Record` ready to featurize, or a `Rejection` with a reason code (a `RejectedRow`'s own, first).
        Never raises on bad values.
    """
    row_dict = dict(row)
    row_id = row_dict.get(input_config.id_column)

    def reject(reason: Reason, detail: str) -> Rejection:
        return Rejection(row_key=row_key, id=row_id, reason=reason, detail=detail, row=row_dict)

    if isinstance(row, RejectedRow):  # a bad input found when the job was planned (two tables)
        return reject(row.reason, row.detail)

    if row_id is None:
        return reject(Reason.MISSING_ID, f"column '{input_config.id_column}' is null")
    question = row_dict.get(input_config.question_column)
    context = row_dict.get(input_config.context_column)
    for value, name in ((question, "question"), (context, "context")):
        problem = _check_text(value, name)
        if problem is not None:
            return reject(*problem)
    question, context = cast(str, question), cast(str, context)  # checked by _check_text above
    limit = featurize_config.max_context_chars
    if limit is not None and len(context) > limit:
        return reject(Reason.CONTEXT_TOO_LONG, f"context has {len(context)} characters; the limit is {limit}")
    return Record(
        row_key=row_key,
        id=row_id,
        question=question,
        context=context,
        row=row_dict,
        passthrough_columns=input_config.passthrough_columns,
    )
