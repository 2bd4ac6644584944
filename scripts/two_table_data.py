"""Writes a two-table job and its materialised one-table twin from SQuAD dev, to time one against the other.

    python scripts/two_table_data.py SQUAD_DEV_JSON OUT [--documents 100] [--questions 10]

OUT/documents.parquet   the first N distinct paragraphs: doc_id, context, title
OUT/questions.parquet   Q questions asked of every document (no doc_id: "these 12 questions of each
                        contract"), taken from other paragraphs of the same set
OUT/materialised.parquet the two-table job's own rows (`qa_core.io.pairs.table_pairs`) as one table, in
                        its order: id (doc_id/question_id), question, context, doc_id, question_id,
                        title; written with pyarrow's defaults (dictionary encoding, snappy)

The two jobs' answers are the same rows (the two-table tests check that on every engine); this
script only makes inputs of a realistic size for `farm-bench`. Prints each file's bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.config import load_config
from qa_core.evaluation.squad import load_squad, squad_to_table
from qa_core.io.pairs import table_pairs


def main() -> None:
    """Writes the three tables and prints their sizes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("squad", help="SQuAD v1.1 dev JSON (or its .zip)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--questions", type=int, default=10)
    args = parser.parse_args()
    rows = squad_to_table(load_squad(args.squad)).select(["id", "title", "context", "question"]).to_pylist()
    paragraphs: dict[str, dict[str, str]] = {}
    asked: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        paragraphs.setdefault(row["context"], {"context": row["context"], "title": row["title"]})
        asked.setdefault(row["context"], []).append((row["id"], row["question"]))
    contexts = list(paragraphs)
    chosen = contexts[: args.documents]
    documents = [{"doc_id": f"d{i}", **paragraphs[c]} for i, c in enumerate(chosen)]
    # One question from each of the following paragraphs: real questions, asked of every document.
    extra = contexts[args.documents : args.documents + args.questions]
    questions = [{"question_id": asked[c][0][0], "question": asked[c][0][1]} for c in extra]
    documents_table, questions_table = pa.Table.from_pylist(documents), pa.Table.from_pylist(questions)
    # The job's own rows (the engine's join, `table_pairs`), so the twin holds exactly what the job answers.
    config = load_config((), ["input.passthrough_columns=[title]"]).input
    schema, _, pairs = table_pairs(documents_table, questions_table, config)
    names = [schema.id_field.name, *(f.name for f in schema.fields)]
    materialised = [{name: row[name] for name in names} for row in pairs]
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in (
        ("documents", documents_table),
        ("questions", questions_table),
        ("materialised", pa.Table.from_pylist(materialised)),
    ):
        path = args.out / f"{name}.parquet"
        pq.write_table(table, path)
        print(f"{path}: {table.num_rows} rows, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
