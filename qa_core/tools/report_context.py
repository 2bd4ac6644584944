"""Where `docqa report` finds the question and context of the few answers it shows in their context.

The answers table holds neither (unless the job passed them through), so for the rows on the page (the
sample and the lowest scores) the report looks them up by id, in this order, each source only for the ids
the earlier ones did not have:

1. the answers table itself, when the job passed the context column through;
2. the job's input files named in `_run.json` (`inputs`, with `config.input`'s column names): each row
   group's id column is read, and the question and context columns only of the row groups that hold a
   wanted id; the search stops once every id is found (at worst one pass over the input's id column);
3. the gold SQuAD file given with `--data`.

A two-table job's rows are found by their keys instead (`lookup_pair_texts`): the context by doc_id in
the documents table, the question by question_id in the questions table (both named in `_run.json`
`two_table.files`), each read as above: the key column, then the text of the row groups that hold one.

A source that cannot be read (moved input, missing credentials, a column renamed) is skipped with a note
on the page; the answers are then shown without their context, never as a failed report. The page uses a
context only when `context[start:end]` is the answer (`answer_in_context`): ids may repeat with other
contexts, and an input may change after its run.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass

import fsspec
import pyarrow.parquet as pq

from qa_core.evaluation.squad import SquadExample


@dataclass(frozen=True)
class RowText:
    """A row's question and context as found (either may be missing from a source)."""

    question: str | None
    context: str | None


@dataclass(frozen=True)
class TextLookup:
    """The texts found for the wanted ids, and what the page should say about where they came from.

    Attributes:
        texts: id (as in the answers table) -> its question and context.
        notes: One line per source used or skipped.
    """

    texts: dict[object, RowText]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class TableSource:
    """Parquet files to search by id, with the names of their id, question and context columns."""

    name: str
    files: tuple[str, ...]
    id_column: str
    question_column: str
    context_column: str


def _key(value: object) -> Hashable | None:
    """`value` as a dict key, or None when it cannot be one (a list or struct id)."""
    return value if isinstance(value, str | int | bytes | float) else None


def _search(source: TableSource, wanted: set[Hashable], found: dict[object, RowText]) -> None:
    """Adds to `found` the rows of `source` whose id is in `wanted` (removing them from `wanted`)."""
    for file in source.files:
        with fsspec.open(file, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = set(parquet.schema_arrow.names)
            if source.id_column not in names:
                raise ValueError(f"{file} has no id column {source.id_column!r}")
            columns = [source.id_column] + [
                c for c in (source.question_column, source.context_column) if c in names
            ]
            for group in range(parquet.num_row_groups):
                ids = parquet.read_row_group(group, columns=[source.id_column]).column(0).to_pylist()
                hits = [i for i, value in enumerate(ids) if _key(value) is not None and value in wanted]
                if not hits:
                    continue
                for row in parquet.read_row_group(group, columns=columns).take(hits).to_pylist():
                    key = row[source.id_column]
                    if key in wanted:
                        found[key] = RowText(row.get(source.question_column), row.get(source.context_column))
                        wanted.discard(key)
                if not wanted:
                    return


def _search_noted(
    source: TableSource, wanted: set[Hashable], found: dict[object, RowText], notes: list[str], what: str
) -> None:
    """`_search`, with a note of how many `what` it found, or of why it could not read the source."""
    before = len(found)
    try:
        _search(source, wanted, found)
    except Exception as err:  # storage, Parquet and schema errors alike: the page goes on without them
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        notes.append(f"could not read {source.name}: {first}")
        return
    notes.append(f"{len(found) - before} {what} from {source.name}")


def lookup_texts(
    ids: Collection[object],
    sources: Sequence[TableSource],
    gold: Mapping[str, SquadExample] | None = None,
) -> TextLookup:
    """The question and context of each of `ids`, from `sources` in order, then from `gold` (by str id).

    Args:
        ids: The ids to find (values as in the answers table).
        sources: Tables to search, in order; one that fails to read is skipped with a note.
        gold: Gold examples by id, searched last.

    Returns:
        The texts found, and a note per source saying how many it gave or why it was skipped.
    """
    wanted: set[Hashable] = {key for key in map(_key, ids) if key is not None}
    found: dict[object, RowText] = {}
    notes: list[str] = []
    for source in sources:
        if not wanted:
            break
        _search_noted(source, wanted, found, notes, "contexts")
    if gold is not None and wanted:
        hits = [key for key in wanted if str(key) in gold]
        for key in hits:
            example = gold[str(key)]
            found[key] = RowText(example.question, example.context)
            wanted.discard(key)
        notes.append(f"{len(hits)} contexts from the gold data")
    if wanted:
        notes.append(f"{len(wanted)} answers' contexts were found nowhere: shown without their context")
    return TextLookup(found, tuple(notes))


def answer_in_context(context: str | None, start: int | None, end: int | None, answer: str) -> bool:
    """Whether `context[start:end]` is `answer` (the span can be highlighted in this context)."""
    if context is None or start is None or end is None:
        return False
    return 0 <= start <= end <= len(context) and context[start:end] == answer


def lookup_pair_texts(
    rows: Collection[tuple[object, tuple[object, object] | None]],
    documents: TableSource,
    questions: TableSource,
) -> TextLookup:
    """The question and context of a two-table job's rows, by their doc_id and question_id.

    Args:
        rows: (id, (doc_id, question_id)) of each row to show (keys None: the row is not looked up).
        documents: The documents table (`id_column`: the doc_id column; its question column absent).
        questions: The questions table (`id_column`: the question_id column; its context column absent).

    Returns:
        The texts found by row id, and a note per table.
    """
    keyed = [(row_id, keys) for row_id, keys in rows if keys is not None]
    found: dict[str, dict[object, RowText]] = {}
    notes: list[str] = []
    for name, source, index in (("contexts", documents, 0), ("questions", questions, 1)):
        wanted: set[Hashable] = {k for k in (_key(keys[index]) for _, keys in keyed) if k is not None}
        texts: dict[object, RowText] = {}
        _search_noted(source, wanted, texts, notes, name)
        found[name] = texts
    result: dict[object, RowText] = {}
    for row_id, (doc_id, question_id) in keyed:
        context = found["contexts"].get(doc_id)
        question = found["questions"].get(question_id)
        if context is not None or question is not None:
            result[row_id] = RowText(
                question.question if question is not None else None,
                context.context if context is not None else None,
            )
    return TextLookup(result, tuple(notes))
