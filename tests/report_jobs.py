"""A hand-built docqa output folder whose every piece of input text is hostile HTML (report tests).

The folder has what a finished job writes (answers, rejections, `_run.json`, `COMPLETED`) with the
engine's own schemas, plus the input table `_run.json` names and a SQuAD file of the same questions, so
`docqa report` finds contexts and scores. The injected markup, were it ever run, would leave marks a test
can see: a title of `PWNED`, a `data-pwned` attribute on the root element, a `<pwned-marker>` element.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.io.schema import answer_schema, rejection_schema

SCRIPT = "<script>document.title='PWNED';document.documentElement.setAttribute('data-pwned','1')</script>"
IMG = "<img src=x onerror=\"document.body.appendChild(document.createElement('pwned-marker'))\">"
QUOTES = "Tom & \"Jerry\" 'quoted' &amp; a<b>c"
HOSTILE = (SCRIPT, IMG, QUOTES)
NOTE_COLUMN = "<b>note</b>"  # a pass-through column's name is input text too


@dataclass(frozen=True)
class HostileJob:
    """Paths of the hostile job: its output folder, its input table and its gold SQuAD file."""

    output: Path
    input: Path
    gold: Path


def _context(i: int) -> str:
    return f"Row {i} says {QUOTES}. Then {SCRIPT} and {IMG} close the paragraph number {i}."


def _rows(n: int) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        rows.append(
            {
                "id": f"q{i}-{IMG}" if i % 2 else f"q{i}-{SCRIPT}",
                "question": f"What is {SCRIPT} in row {i}?",
                "context": _context(i),
                NOTE_COLUMN: f"note {i} {IMG}",
                "question_id": f"qid{i % 3}-{SCRIPT}",
            }
        )
    return rows


def write_hostile_job(folder: Path, n_answers: int = 12) -> HostileJob:
    """Writes the hostile job under `folder` (answers spanning the injected markup, rejections of two
    reasons, a null id) and returns its paths."""
    inputs = _rows(n_answers + 3)
    input_schema = pa.schema(
        [pa.field(name, pa.string()) for name in ("id", "question", "context", NOTE_COLUMN, "question_id")]
    )
    source = folder / "input.parquet"
    pq.write_table(pa.Table.from_pylist(inputs, schema=input_schema), source, row_group_size=4)
    out = folder / "out"
    (out / "answers").mkdir(parents=True)
    (out / "rejections").mkdir()
    passthrough = [input_schema.field(NOTE_COLUMN), input_schema.field("question_id")]
    answers = []
    for i, row in enumerate(inputs[:n_answers]):
        context = str(row["context"])
        span = (SCRIPT, IMG, QUOTES)[i % 3]
        start = context.index(span)
        no_answer = i == n_answers - 1
        answers.append(
            {
                "id": row["id"],
                "answer": "" if no_answer else span,
                "start": None if no_answer else start,
                "end": None if no_answer else start + len(span),
                "score": 0.05 + i / (2 * n_answers),
                "logit_score": 1.0,
                "no_answer": no_answer,
                "null_score_diff": None,
                NOTE_COLUMN: row[NOTE_COLUMN],
                "question_id": row["question_id"],
            }
        )
    schema = answer_schema(pa.string(), passthrough)
    pq.write_table(pa.Table.from_pylist(answers, schema=schema), out / "answers" / "part-00000.parquet")
    rejected = [
        {
            **inputs[n_answers],
            "reason": "EMPTY_QUESTION",
            "detail": f"empty question {SCRIPT}",
            "question": "",
        },
        {
            **inputs[n_answers + 1],
            "reason": "EMPTY_QUESTION",
            "detail": f"empty question {IMG}",
            "question": "",
        },
        {**inputs[n_answers + 2], "id": None, "reason": "MISSING_ID", "detail": f"no id {QUOTES}"},
    ]
    rejections = rejection_schema(pa.string(), list(input_schema))
    table = pa.Table.from_pylist(rejected, schema=rejections)
    pq.write_table(table, out / "rejections" / "part-00000.parquet")
    run_info = {
        "engine": "predict",
        "model": {"id": f"model {SCRIPT}", "revision": IMG},
        "config": {
            "input": {"id_column": "id", "question_column": "question", "context_column": "context"},
            "decode": {"temperature": 1.0},
        },
        "inputs": [str(source)],
        "counts": {"rows_read": len(inputs), "answered": n_answers, "rejected": len(rejected)},
        "timings": {"wall_seconds": 1.0, "rows_per_second": float(len(inputs))},
    }
    (out / "_run.json").write_text(json.dumps(run_info), encoding="utf-8")
    (out / "COMPLETED").write_text("")
    gold = folder / "gold.json"
    paragraphs = [
        {
            "context": row["context"],
            "qas": [
                {
                    "id": row["id"],
                    "question": row["question"],
                    "answers": [{"text": SCRIPT, "answer_start": str(row["context"]).index(SCRIPT)}],
                }
            ],
        }
        for row in inputs
    ]
    document = {"version": "1.1", "data": [{"title": f"T {SCRIPT}", "paragraphs": paragraphs}]}
    gold.write_text(json.dumps(document), encoding="utf-8")
    return HostileJob(out, source, gold)
