"""SQuAD-format data: loading v1.1 / v2.0 JSON files and converting them to Parquet.

A SQuAD file is read from a local path or any fsspec URL, as plain JSON, gzip-compressed JSON or a zip
archive holding exactly one `.json` member (the form the official dev set is distributed in). The
container is recognised by its magic bytes, so a misnamed file still loads.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import posixpath
import zipfile
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from qa_core.errors import InputError, OutputError

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"

SQUAD_TABLE_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("context", pa.string()),
        pa.field("question", pa.string()),
        pa.field(
            "answers",
            pa.list_(pa.struct([pa.field("text", pa.string()), pa.field("answer_start", pa.int64())])),
        ),
    ]
)
"""Schema of `squad_to_table`: one row per question, in file order."""


@dataclass(frozen=True)
class SquadAnswer:
    """One gold answer span: `context[answer_start:answer_start + len(text)]` in a well-formed file."""

    text: str
    answer_start: int


@dataclass(frozen=True)
class SquadExample:
    """One question with its paragraph and gold answers.

    Attributes:
        id: The question id (unique in the file).
        title: Title of the article the paragraph belongs to.
        context: The paragraph.
        question: The question.
        answers: Gold answers (empty for an unanswerable v2.0 question).
        is_impossible: The v2.0 `is_impossible` flag; always False in a v1.1 file.

    """

    id: str
    title: str
    context: str
    question: str
    answers: tuple[SquadAnswer, ...]
    is_impossible: bool


@dataclass(frozen=True)
class SquadDataset:
    """A parsed SQuAD file.

    Attributes:
        version: "1.1" or "2.0".
        examples: Every question of the file, in file order.

    """

    version: str
    examples: tuple[SquadExample, ...]


class _MalformedError(Exception):
    """Internal: a structural error at a JSON location; re-raised as ValueError naming the file."""


def _read_bytes(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as handle:
            data: bytes = handle.read()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: SQuAD file does not exist") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the SQuAD file: {exc.strerror or exc}") from exc
    return data


def _decode_container(path: str, raw: bytes) -> bytes:
    """Unwrap a zip or gzip container; return plain bytes unchanged."""
    if raw.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                members = [
                    info
                    for info in archive.infolist()
                    if not info.is_dir()
                    and info.filename.lower().endswith(".json")
                    and not posixpath.basename(info.filename).startswith("._")
                ]
                if len(members) != 1:
                    names = [info.filename for info in members]
                    raise InputError(
                        f"{path}: a SQuAD zip must hold exactly one .json member, "
                        f"found {len(members)}: {names}"
                    )
                return archive.read(members[0])
        except zipfile.BadZipFile as exc:
            raise InputError(f"{path}: not a readable zip archive: {exc}") from exc
    if raw.startswith(_GZIP_MAGIC):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: not a readable gzip file: {exc}") from exc
    return raw


def _get(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise _MalformedError(f"{where}: missing key {key!r}")
    value = obj[key]
    # bool is an int subclass; an answer_start of `true` is malformed.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _MalformedError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _as_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _MalformedError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _parse_answers(qa: dict[str, Any], where: str) -> tuple[SquadAnswer, ...]:
    raw_answers = _get(qa, "answers", list, where)
    answers = []
    for k, raw in enumerate(raw_answers):
        at = f"{where}.answers[{k}]"
        answer = _as_dict(raw, at)
        answers.append(
            SquadAnswer(
                text=_get(answer, "text", str, at), answer_start=_get(answer, "answer_start", int, at)
            )
        )
    return tuple(answers)


def _parse(doc: Any) -> tuple[bool, list[SquadExample]]:
    """Parse a SQuAD document into (has an is_impossible key, examples).

    Raises _MalformedError with the JSON location of an error.
    """
    top = _as_dict(doc, "top level")
    articles = _get(top, "data", list, "top level")
    examples: list[SquadExample] = []
    seen: set[str] = set()
    has_flag = False
    for i, raw_article in enumerate(articles):
        where_a = f"data[{i}]"
        article = _as_dict(raw_article, where_a)
        title = _get(article, "title", str, where_a) if "title" in article else ""
        for j, raw_paragraph in enumerate(_get(article, "paragraphs", list, where_a)):
            where_p = f"{where_a}.paragraphs[{j}]"
            paragraph = _as_dict(raw_paragraph, where_p)
            context = _get(paragraph, "context", str, where_p)
            for k, raw_qa in enumerate(_get(paragraph, "qas", list, where_p)):
                where_q = f"{where_p}.qas[{k}]"
                qa = _as_dict(raw_qa, where_q)
                qid = _get(qa, "id", str, where_q)
                if qid in seen:
                    raise _MalformedError(f"{where_q}: duplicate question id {qid!r}")
                seen.add(qid)
                is_impossible = False
                if "is_impossible" in qa:
                    has_flag = True
                    is_impossible = _get(qa, "is_impossible", bool, where_q)
                answers = _parse_answers(qa, where_q)
                question = _get(qa, "question", str, where_q)
                examples.append(SquadExample(qid, title, context, question, answers, is_impossible))
    return has_flag, examples


def load_squad(path: str) -> SquadDataset:
    """Load a SQuAD v1.1 or v2.0 file.

    The version is "2.0" when the top-level "version" string starts with "v2" or "2", or when any
    question carries an `is_impossible` key; otherwise "1.1".

    Args:
        path: Local path or fsspec URL of a `.json`, `.json.gz` or `.zip` (one `.json` member) file.

    Returns:
        The dataset, questions in file order.

    Raises:
        InputError: If the file does not exist or cannot be read, is not valid JSON, is not in the SQuAD
            structure, or has duplicate ids.

    """
    payload = _decode_container(path, _read_bytes(path))
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from exc
    try:
        has_flag, examples = _parse(doc)
    except _MalformedError as exc:
        raise InputError(f"{path}: malformed SQuAD file: {exc}") from exc
    declared = doc.get("version")
    declared_v2 = isinstance(declared, str) and declared.lower().lstrip("v").startswith("2")
    version = "2.0" if declared_v2 or has_flag else "1.1"
    logger.info("Loaded %d SQuAD v%s questions from %s", len(examples), version, path)
    return SquadDataset(version=version, examples=tuple(examples))


def squad_to_table(dataset: SquadDataset) -> pa.Table:
    """Convert a dataset to an Arrow table with schema `SQUAD_TABLE_SCHEMA`, one row per question.

    Args:
        dataset: A loaded SQuAD dataset.

    Returns:
        The table, rows in the dataset's order.

    """
    examples = dataset.examples
    columns = {
        "id": [ex.id for ex in examples],
        "title": [ex.title for ex in examples],
        "context": [ex.context for ex in examples],
        "question": [ex.question for ex in examples],
        "answers": [
            [{"text": a.text, "answer_start": a.answer_start} for a in ex.answers] for ex in examples
        ],
    }
    return pa.Table.from_pydict(columns, schema=SQUAD_TABLE_SCHEMA)


def convert_squad(data_path: str, output_path: str, row_group_size: int = 1000) -> int:
    """Convert a SQuAD file to a Parquet file with schema `SQUAD_TABLE_SCHEMA`.

    Args:
        data_path: Local path or fsspec URL of the SQuAD file (see `load_squad`).
        output_path: Local path or fsspec URL of the Parquet file to write; parent folders are created.
        row_group_size: Rows per Parquet row group (at least 1).

    Returns:
        The number of rows (questions) written.

    Raises:
        ValueError: If `row_group_size` is below 1.
        InputError: If the SQuAD file is missing or malformed (`load_squad`).
        OutputError: If the Parquet file cannot be written.

    """
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be at least 1, got {row_group_size}")
    table = squad_to_table(load_squad(data_path))
    fs, fs_path = fsspec.core.url_to_fs(output_path)
    parent = posixpath.dirname(fs_path.rstrip("/"))
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(fs_path, "wb") as handle:
            pq.write_table(table, handle, row_group_size=row_group_size)
    except OSError as exc:
        raise OutputError(f"cannot write {output_path}: {exc.strerror or exc}") from exc
    logger.info("Wrote %d rows to %s", table.num_rows, output_path)
    return int(table.num_rows)
