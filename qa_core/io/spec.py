"""What a job reads, as the user names it: one table (`--input`), or two (`--documents`, `--questions`).

Light on purpose: the command line declares these flags at start-up, before any of the Parquet machinery
loads; `open_source` opens what they name as an `InputSource` (`qa_core.io.sources`, `qa_core.io.pairs`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qa_core.config import InputConfig
from qa_core.errors import ConfigError
from qa_core.io.joins import HELD_IN_MEMORY, Joins

if TYPE_CHECKING:
    from qa_core.io.sources import InputSource


@dataclass(frozen=True)
class TwoTables:
    """A two-table input: documents and the questions asked of them (each a file, folder or glob)."""

    documents: str
    questions: str


InputSpec = str | TwoTables
"""What a job reads: one table's Parquet file, folder or glob, or `TwoTables`."""


def input_spec(input_pattern: str | None, documents: str | None, questions: str | None) -> InputSpec:
    """The input the user named: `--input`, or `--documents` with `--questions`.

    Raises:
        ConfigError: Both kinds, neither, or one of the two tables alone, in one line.
    """
    if input_pattern is not None and (documents is not None or questions is not None):
        raise ConfigError("--input names one table and --documents/--questions two: pass one or the other")
    if input_pattern is not None:
        return input_pattern
    if documents is None and questions is None:
        raise ConfigError("no input: pass --input TABLE, or --documents DOCS with --questions QS")
    if documents is None or questions is None:
        given, missing = ("--documents", "--questions")[:: 1 if questions is None else -1]
        raise ConfigError(f"{given} needs {missing}: a two-table job reads both")
    return TwoTables(documents, questions)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """A job command's input flags: `--input`, or `--documents` with `--questions` (`input_spec`)."""
    parser.add_argument(
        "--input", metavar="IN", help="one table: a Parquet file, directory or glob (fsspec URLs ok)"
    )
    parser.add_argument(
        "--documents",
        metavar="DOCS",
        help="two tables, instead of --input: the documents (doc_id, context, pass-through columns)",
    )
    parser.add_argument(
        "--questions",
        metavar="QS",
        help="two tables: the questions (question_id, question; a doc_id asks only that document); "
        "each (document, question) pair is a row, its id doc_id/question_id",
    )


def input_of_arguments(args: argparse.Namespace) -> InputSpec:
    """The input that `add_input_arguments`' flags name.

    Raises:
        ConfigError: As `input_spec`.
    """
    return input_spec(args.input, args.documents, args.questions)


def open_source(spec: InputSpec, config: InputConfig, joins: Joins = HELD_IN_MEMORY) -> InputSource:
    """The job's input, planned: footers checked, and for two tables the pairs counted.

    Args:
        spec: What the user named.
        config: The input columns.
        joins: The joins the answering engine has (a two-table job takes one from the questions' footers).

    Raises:
        InputError, ConfigError: What makes the input unusable, in one line, before any work.
    """
    # Imported here: the command line declares its flags with this module before any Parquet code loads.
    from qa_core.io.pairs import PairsSource
    from qa_core.io.sources import TableSource

    if isinstance(spec, TwoTables):
        return PairsSource.open(spec.documents, spec.questions, config, joins)
    return TableSource.open(spec, config)
