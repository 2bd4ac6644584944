"""A two-table input (`--documents DOCS --questions QS`) as a source of numbered rows: the pairs.

Planned on the driver, before any work (`PairsSource.open`): both tables' footers checked, the questions
read whole (the small side: at most `input.max_questions` rows; beyond, an engine with a keyed join reads
only their key columns and `qa_core.io.pairs_join` forms the rows around its shuffle, and one without
stops in one line), the documents' doc_id column read once (column projection), and the join planned
from the keys (`qa_core.io.pairs_plan`). A range of positions is then read by reading only the documents
that hold it, each once, with `qa_core.io.read.iter_rows`, and expanding each into its rows: one per
question asked of it, all with the same context string, so that the engine's context cache tokenizes
each document once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from qa_core.config import InputConfig
from qa_core.errors import ConfigError, InputError
from qa_core.io.joins import HELD_IN_MEMORY, Joins
from qa_core.io.pairs_join import KeyedJoin, held_indices, keyed_plan, read_documents
from qa_core.io.pairs_plan import PairColumns, PairsPlan, plan_pairs
from qa_core.io.read import (
    InputSchema,
    TableColumns,
    file_row_counts,
    file_schema,
    iter_rows,
    iter_values,
    read_table_fields,
    resolve_inputs,
    table_fields,
)
from qa_core.io.sample import read_layout, read_positions, sample_positions
from qa_core.io.schema import carried_field
from qa_core.io.sources import OnDocuments, Opener, file_identities
from qa_core.io.storage import redact_url

KEY_TYPES = "strings or integers"
"""What a doc_id or question_id column may hold (a pair's id is built from them as text)."""


@dataclass(frozen=True, eq=False)
class PairsSource:
    """The pairs of a documents table and a questions table, numbered as `qa_core.io.pairs_plan` says.

    Attributes:
        documents: The documents' Parquet files.
        document_rows: Rows of each (footers).
        questions: The questions' Parquet files.
        question_rows: Rows of each.
        schema: The fields of the pairs' columns.
        plan: The join.
        join: How the engine joins them, in its words (`qa_core.io.spec.Joins`; `_run.json`).
        keyed: The keyed join, when the engine takes one (`qa_core.io.pairs_join`): the rows are then
            formed in the engine's shuffle, not read by range (`rows` refuses).
    """

    documents: tuple[str, ...]
    document_rows: tuple[int, ...]
    questions: tuple[str, ...]
    question_rows: tuple[int, ...]
    schema: InputSchema
    plan: PairsPlan
    join: str = HELD_IN_MEMORY.held
    keyed: KeyedJoin | None = None

    @classmethod
    def open(
        cls,
        documents_pattern: str,
        questions_pattern: str,
        config: InputConfig,
        joins: Joins = HELD_IN_MEMORY,
    ) -> PairsSource:
        """Checks both tables (each a Parquet file, folder or glob) and plans their pairs.

        Args:
            documents_pattern: The documents.
            questions_pattern: The questions.
            config: The input columns and `max_questions`.
            joins: The engine's joins: the questions held whole when their footers count at most
                `input.max_questions` rows, else the engine's keyed join.

        Raises:
            InputError, ConfigError: Missing or unusable columns or keys, too many questions, an
                unreadable file; one line, before any work.
        """
        _check_id_column(config)
        documents, questions = resolve_inputs(documents_pattern), resolve_inputs(questions_pattern)
        document_schemas = [file_schema(f) for f in documents]
        question_schemas = [file_schema(f) for f in questions]
        columns = pair_columns(config, document_schemas[0].names, question_schemas[0].names)
        document_fields = read_table_fields(documents, _document_roles(columns), document_schemas)
        question_fields = read_table_fields(questions, _question_roles(columns), question_schemas)
        schema = pair_schema(columns, document_fields, question_fields)
        question_rows = tuple(file_row_counts(questions))
        keys: Iterable[Any] = iter_values(documents, config.doc_id_column)
        document_rows = tuple(file_row_counts(documents))
        if sum(question_rows) <= config.max_questions:
            plan = plan_pairs(columns, list(iter_rows(questions, columns.question_columns)), keys)
            return cls(
                tuple(documents), document_rows, tuple(questions), question_rows, schema, plan, joins.held
            )
        if joins.keyed is None:
            raise InputError(
                f"the questions ({redact_url(questions_pattern)}) have {sum(question_rows)} rows, more than "
                f"input.max_questions={config.max_questions}: docqa predict holds them in memory; raise "
                "input.max_questions if they fit, or run the job with docqa run or docqa spark, which join "
                "larger question tables by key"
            )
        # Too many to hold: plan from the keys only, and hold the few questions no key can route.
        plan = plan_pairs(columns, list(iter_rows(questions, columns.question_key_columns)), keys)
        held = held_indices(plan)
        rows = read_positions(read_layout(list(questions)), columns.question_columns, held)
        join = KeyedJoin(
            keyed_plan(plan, dict(zip(held, rows, strict=True))),
            tuple(documents),
            document_rows,
            tuple(questions),
            question_rows,
            frozenset(k for k, _, _ in plan.bad_questions),
        )
        return cls(
            tuple(documents),
            document_rows,
            tuple(questions),
            question_rows,
            schema,
            join.plan,
            joins.keyed,
            join,
        )

    @property
    def files(self) -> tuple[str, ...]:
        """The documents' files, then the questions'."""
        return self.documents + self.questions

    @property
    def columns(self) -> InputConfig:
        """The pairs' columns (`PairColumns.rows`): the id, question and context, the rest pass-through."""
        return self.plan.columns.rows

    @property
    def row_count(self) -> int:
        """Pairs, bad documents and bad questions."""
        return self.plan.row_count

    def rows(
        self,
        start: int,
        stop: int,
        on_documents: OnDocuments | None = None,
        opener: Opener | None = None,
    ) -> Iterator[Mapping[str, Any]]:
        """The rows `[start, stop)`: only the documents that hold them are read, each once.

        A range that begins inside a document's rows reads that document whole and keeps the rows it
        asks for, so ranges cut anywhere (a runner's split of a unit) lose and repeat no row; only ranges
        cut at `boundary` read each document once over the job.

        Raises:
            RuntimeError: For a keyed join, whose rows meet in the engine's shuffle (a bug in the engine).
        """
        if self.keyed is not None:
            raise RuntimeError("a keyed join's rows are formed by the engine's shuffle (KeyedJoin), not read")
        first, documents = read_documents(
            self.documents,
            self.document_rows,
            self.plan,
            start,
            stop,
            columns=self.plan.columns.document_columns,
            opener=opener,
            on_documents=on_documents,
        )
        return self.plan.expand(documents, first, start, stop)

    def boundary(self, position: int) -> int:
        """A document's rows are read together: ranges begin where a document's rows begin."""
        return self.plan.boundary(position)

    def identity(self) -> dict[str, Any]:
        """Both tables' files, with their rows, sizes and versions."""
        return {
            "documents": file_identities(self.documents, self.document_rows),
            "questions": file_identities(self.questions, self.question_rows),
        }

    def sample(self, n: int, seed: int = 0) -> list[Mapping[str, Any]]:
        """Rows at `n` positions spread over the pairs (`qa_core.io.sample`), reading only their documents."""
        positions = sample_positions(self.row_count, n, seed)
        plan = self.plan
        indices = sorted({plan.document_of(p) for p in positions if p < plan.document_rows_end})
        layout = read_layout(list(self.documents))
        read = read_positions(layout, plan.columns.document_columns, indices)
        documents = dict(zip(indices, read, strict=True))
        joined = self._sampled_questions(documents) if self.keyed is not None else {}
        rows: list[Mapping[str, Any]] = []
        for position in positions:
            if position >= plan.document_rows_end:
                rows.append(plan.question_row(position))
                continue
            index = plan.document_of(position)
            own = joined.get(index, {}) if self.keyed is not None else None
            rows.append(plan.rows_of(index, documents[index], own)[position - int(plan.starts[index])])
        return rows

    def _sampled_questions(
        self, documents: Mapping[int, Mapping[str, Any]]
    ) -> dict[int, dict[int, Mapping[str, Any]]]:
        """A keyed join's questions of the sampled documents, by document and question index.

        One pass over the questions table: `docqa estimate` has no shuffle to route them.
        """
        join = self.keyed
        if join is None:
            return {}
        column = self.plan.columns.rows.doc_id_column
        bad = self.plan.bad_documents  # a repeated doc_id's later documents are asked nothing
        index_of = {d.get(column): index for index, d in documents.items() if index not in bad}
        joined: dict[int, dict[int, Mapping[str, Any]]] = {index: {} for index in documents}
        for doc_id, question in join.question_side(0, join.question_count):
            index = index_of.get(doc_id)
            if index is not None:
                joined[index][question.index] = question.row
        return joined

    def details(self) -> dict[str, Any]:
        """`_run.json` `two_table`: the plan's counts and both tables' files."""
        files = {
            "documents": [redact_url(f) for f in self.documents],
            "questions": [redact_url(f) for f in self.questions],
        }
        return {"two_table": {"join": self.join, **self.plan.counts(), "files": files}}


def table_pairs(
    documents: pa.Table, questions: pa.Table, config: InputConfig
) -> tuple[InputSchema, PairsPlan, Iterator[Mapping[str, Any]]]:
    """The pairs of two in-memory tables (the Python API): their schema, plan and rows, in order.

    Raises:
        InputError, ConfigError: As `PairsSource.open`.
    """
    _check_id_column(config)
    columns = pair_columns(config, documents.schema.names, questions.schema.names)
    schema = pair_schema(
        columns,
        table_fields(documents.schema, _document_roles(columns), "the documents"),
        table_fields(questions.schema, _question_roles(columns), "the questions"),
    )
    held = questions.select(columns.question_columns).to_pylist()
    plan = plan_pairs(columns, held, documents.column(config.doc_id_column).to_pylist())
    rows = plan.expand(documents.select(columns.document_columns).to_pylist(), 0, 0, plan.row_count)
    return schema, plan, rows


def _check_id_column(config: InputConfig) -> None:
    """The pair id is written under `input.id_column`: it must not be one of the key columns."""
    if config.id_column in (config.doc_id_column, config.question_id_column):
        raise ConfigError(
            f"input.id_column '{config.id_column}' is also a key column: a two-table job writes each pair's "
            "id (doc_id/question_id) under input.id_column; set input.id_column to another name"
        )


def pair_columns(
    config: InputConfig, document_names: Sequence[str], question_names: Sequence[str]
) -> PairColumns:
    """Where each column of the pairs comes from, given the tables' column names.

    Raises:
        InputError: A pass-through column in both tables or in neither.
    """
    fixed = {
        config.id_column,
        config.question_column,
        config.context_column,
        config.doc_id_column,
        config.question_id_column,
    }
    from_documents: list[str] = []
    from_questions: list[str] = []
    for name in config.passthrough_columns:
        if name in fixed:
            continue  # every pair carries it already
        in_documents, in_questions = name in document_names, name in question_names
        if in_documents == in_questions:
            where = (
                "both the documents and the questions"
                if in_documents
                else "neither the documents nor the questions"
            )
            raise InputError(
                f"input.passthrough_columns names '{name}', a column of {where}: name a column of one table "
                "(rename one of the two)"
            )
        (from_documents if in_documents else from_questions).append(name)
    keys = (config.doc_id_column, config.question_id_column)
    rows = dataclasses.replace(
        config, passthrough_columns=(*keys, *(c for c in config.passthrough_columns if c not in keys))
    )
    return PairColumns(
        rows, tuple(from_documents), tuple(from_questions), config.doc_id_column in question_names
    )


def _document_roles(columns: PairColumns) -> TableColumns:
    c = columns.rows
    settings = {c.doc_id_column: "input.doc_id_column", c.context_column: "input.context_column"}
    settings.update(dict.fromkeys(columns.from_documents, "input.passthrough_columns"))
    return TableColumns(settings, frozenset({c.context_column}))


def _question_roles(columns: PairColumns) -> TableColumns:
    c = columns.rows
    settings = {c.question_id_column: "input.question_id_column", c.question_column: "input.question_column"}
    if columns.questions_name_documents:
        settings[c.doc_id_column] = "input.doc_id_column"
    settings.update(dict.fromkeys(columns.from_questions, "input.passthrough_columns"))
    return TableColumns(settings, frozenset({c.question_column}))


def pair_schema(
    columns: PairColumns, document_fields: Sequence[pa.Field], question_fields: Sequence[pa.Field]
) -> InputSchema:
    """The fields of the pairs' columns: the id (text), then each column with its table's type.

    Raises:
        InputError: A key column that holds neither strings nor integers, or a questions' doc_id whose
            type differs from the documents'.
    """
    c = columns.rows
    documents = {f.name: f for f in document_fields}
    questions = {f.name: f for f in question_fields}
    for name, field, table in (
        (c.doc_id_column, documents[c.doc_id_column], "documents"),
        (c.question_id_column, questions[c.question_id_column], "questions"),
    ):
        if not _is_key(field.type):
            raise InputError(
                f"the {table}' column '{name}' has type {field.type}; keys must be {KEY_TYPES}: cast it"
            )
    asked = questions.get(c.doc_id_column)
    if (
        asked is not None
        and not pa.types.is_null(asked.type)
        and not asked.type.equals(documents[c.doc_id_column].type)
    ):
        raise InputError(
            f"the questions' column '{c.doc_id_column}' has type {asked.type} but the documents' has "
            f"{documents[c.doc_id_column].type}: cast one so that they match"
        )
    fields = {**questions, **documents, c.id_column: carried_field(pa.field(c.id_column, pa.string()))}
    return InputSchema(fields[c.id_column], tuple(fields[name] for name in c.columns))


def _is_key(type_: pa.DataType) -> bool:
    return bool(pa.types.is_string(type_) or pa.types.is_integer(type_) or pa.types.is_null(type_))
