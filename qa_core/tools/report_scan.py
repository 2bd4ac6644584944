"""One streamed pass over a docqa output folder: the counts, samples and examples `docqa report` shows.

Answers and rejections are read in record batches of a few columns, so a table of millions of rows costs
the memory of one batch plus what the page shows: histograms, a sample and the lowest scores (bounded
heaps), the first rows of each rejection reason, per-`question_id` counts (capped) and, with gold data,
the answers of the gold questions only.

The sample is the `SAMPLE_ROWS` answers with the smallest CRC-32 of their id: spread over the whole job,
and the same rows whichever engine, worker count or part order wrote the tables.
"""

from __future__ import annotations

import heapq
import zlib
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Generic, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qa_core.io.schema import ANSWERS_DIR, REJECTIONS_DIR

SCORE_BINS = 20
MAX_WORDS = 30  # longer answers share the last bar of the answer-length figure
SAMPLE_ROWS = 8
LOWEST_ROWS = 10
EXAMPLES_PER_REASON = 3
MAX_QUESTION_IDS = 10_000
"""Per-`question_id` answer rates stop counting past this many distinct ids (the section says so)."""
BATCH_ROWS = 65_536
REJECTION_BATCH_ROWS = 4_096  # rejections carry their whole input row, contexts included
MAX_CELL = 1_000  # a rejection example keeps this many characters of each value
QUESTION_ID = "question_id"

T = TypeVar("T")


class OutputFileSystem(Protocol):
    """What the report uses of an fsspec file system (`fsspec.AbstractFileSystem` has it all)."""

    def glob(self, path: str) -> list[str]:
        """Paths matching a glob pattern."""

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> IO[Any]:
        """A file object (a context manager)."""

    def exists(self, path: str) -> bool:
        """Whether the path exists."""

    def rm(self, path: str, recursive: bool = False) -> None:
        """Removes a file or, with `recursive`, a folder."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Creates a folder and its parents."""


@dataclass(frozen=True)
class AnswerRow:
    """One answer as the report shows it (no context: the answers table does not hold it).

    Attributes:
        id: The row's id, as in the table.
        answer: The answer text ("" for no answer).
        start: Code-point offset of the answer in its context (None for no answer).
        end: Exclusive end offset.
        score: The answer's score.
        no_answer: Whether the null answer won.
        keys: A two-table job's (doc_id, question_id) of the row; None for one table.
    """

    id: object
    answer: str
    start: int | None
    end: int | None
    score: float
    no_answer: bool
    keys: tuple[object, object] | None = None


@dataclass(frozen=True)
class AnswerStats:
    """Histograms of the answers table and rejection counts.

    Attributes:
        rows: Answer rows.
        no_answer: Rows where the null answer won.
        score_counts: Rows per score bin (`SCORE_BINS` equal-width bins over [0, 1]).
        length_counts: Non-empty answers by length in words: index w-1 for w words, the last index for
            `MAX_WORDS` or more.
        rejected_by_reason: Rejection rows by reason code.
    """

    rows: int
    no_answer: int
    score_counts: tuple[int, ...]
    length_counts: tuple[int, ...]
    rejected_by_reason: dict[str, int]

    @property
    def rejected(self) -> int:
        """Rejection rows."""
        return sum(self.rejected_by_reason.values())


@dataclass(frozen=True)
class QuestionRates:
    """Rows per `question_id` of a two-table job (questions x documents).

    Attributes:
        counts: question_id -> (answered with a span, no answer, rejected).
        truncated: More than `MAX_QUESTION_IDS` ids were seen: rows of the later ones are not counted.
    """

    counts: dict[object, tuple[int, int, int]]
    truncated: bool


@dataclass(frozen=True)
class GoldRows:
    """The job's rows whose id is a gold question (ids compared as strings).

    Attributes:
        answered: (id, answer, score) of each answered row in the gold data, in table order.
        rejected_ids: Gold ids the job rejected.
        rows: The job's rows (answered or rejected) whose id is in the gold data.
    """

    answered: tuple[tuple[str, str, float], ...]
    rejected_ids: frozenset[str]
    rows: int


@dataclass(frozen=True)
class Scan:
    """Everything the report shows of the two tables.

    Attributes:
        stats: Histograms and counts.
        sample: The sampled answers, by id hash.
        lowest: The lowest-scored answers, lowest first.
        rejection_examples: reason -> its first `EXAMPLES_PER_REASON` rejection rows (column -> value).
        question_rates: Per-`question_id` counts when the answers have that column, else None.
        answer_columns: The answers table's columns (pass-through columns included).
        gold: The gold rows, when gold ids were given.
    """

    stats: AnswerStats
    sample: tuple[AnswerRow, ...]
    lowest: tuple[AnswerRow, ...]
    rejection_examples: dict[str, tuple[dict[str, object], ...]]
    question_rates: QuestionRates | None
    answer_columns: tuple[str, ...]
    gold: GoldRows | None


@dataclass
class _Smallest(Generic[T]):
    """The `k` items of smallest key offered so far (a bounded max-heap; on ties the first one stays)."""

    k: int
    heap: list[tuple[float, int, T]] = field(default_factory=list)
    offered: int = 0

    def offer(self, key: float, item: T) -> None:
        self.offered += 1
        entry = (-key, -self.offered, item)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        elif key < -self.heap[0][0]:
            heapq.heapreplace(self.heap, entry)

    def sorted(self) -> tuple[T, ...]:
        return tuple(item for _, _, item in sorted(self.heap, key=lambda e: (-e[0], -e[1])))


def _parquet_files(fs: OutputFileSystem, root: str, folder: str) -> list[str]:
    return sorted(fs.glob(f"{root}/{folder}/*.parquet"))


def _batches(
    fs: OutputFileSystem, root: str, folder: str, wanted: list[str], rows: int = BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    """The folder's Parquet files one batch at a time: the `wanted` columns a file has (all if empty)."""
    for file in _parquet_files(fs, root, folder):
        with fs.open(file, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = set(parquet.schema_arrow.names)
            columns = [c for c in wanted if c in names] if wanted else None
            yield from parquet.iter_batches(batch_size=rows, columns=columns)


def table_columns(fs: OutputFileSystem, root: str, folder: str) -> tuple[str, ...]:
    """The columns of a folder's first Parquet file (none when it holds no file)."""
    files = _parquet_files(fs, root, folder)
    if not files:
        return ()
    with fs.open(files[0], "rb") as handle:
        return tuple(pq.ParquetFile(handle).schema_arrow.names)


def _candidates(keys: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
    """Indices of (at least) the `k` smallest keys of a batch: only these can enter a heap of `k`."""
    return np.arange(len(keys)) if len(keys) <= k else np.argpartition(keys, k)[:k]


def _id_hash(value: object) -> int:
    return zlib.crc32(str(value).encode("utf-8", "surrogatepass"))


def _answer_row(batch: pa.RecordBatch, index: int, keys: tuple[str, str] | None) -> AnswerRow:
    row = {name: batch.column(name)[index].as_py() for name in ("id", "answer", "start", "end", "score")}
    return AnswerRow(
        keys=None
        if keys is None
        else (batch.column(keys[0])[index].as_py(), batch.column(keys[1])[index].as_py()),
        id=row["id"],
        answer=row["answer"] or "",
        start=row["start"],
        end=row["end"],
        score=float(row["score"]),
        no_answer=bool(batch.column("no_answer")[index].as_py()),
    )


def _cell(value: object) -> object:
    """A rejection value as kept for the page: long text cut (a context can be megabytes)."""
    if isinstance(value, str | bytes) and len(value) > MAX_CELL:
        return value[:MAX_CELL]
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)[:MAX_CELL]


class _Scanner:
    """The accumulators of one pass; `scan_outputs` feeds them batches."""

    def __init__(self, gold_ids: Collection[str] | None, rates: bool, keys: tuple[str, str] | None) -> None:
        self.keys = keys
        self.rows = self.no_answer = 0
        self.scores = np.zeros(SCORE_BINS, dtype=np.int64)
        self.lengths = np.zeros(MAX_WORDS, dtype=np.int64)
        self.sample: _Smallest[AnswerRow] = _Smallest(SAMPLE_ROWS)
        self.lowest: _Smallest[AnswerRow] = _Smallest(LOWEST_ROWS)
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, object]]] = {}
        self.rates: dict[object, list[int]] | None = {} if rates else None
        self.rates_truncated = False
        self.gold_ids = gold_ids
        self.gold_answered: list[tuple[str, str, float]] = []
        self.gold_rejected: set[str] = set()
        self.gold_rows = 0

    def answers(self, batch: pa.RecordBatch) -> None:
        null = batch.column("no_answer")
        self.rows += batch.num_rows
        self.no_answer += int(pc.sum(null).as_py() or 0)
        score = batch.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        self.scores += np.bincount(
            np.clip((score * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1), minlength=SCORE_BINS
        )
        spans = pc.filter(batch.column("answer"), pc.invert(null))
        words = pc.list_value_length(pc.utf8_split_whitespace(spans)).to_numpy(zero_copy_only=False)
        words = np.clip(words[words > 0], 1, MAX_WORDS) - 1
        self.lengths += np.bincount(words.astype(np.int64), minlength=MAX_WORDS)
        ids = batch.column("id").to_pylist()
        hashes = np.fromiter((_id_hash(i) for i in ids), dtype=np.int64, count=len(ids))
        for i in _candidates(hashes, SAMPLE_ROWS):
            self.sample.offer(float(hashes[i]), _answer_row(batch, int(i), self.keys))
        for i in _candidates(score, LOWEST_ROWS):
            self.lowest.offer(float(score[i]), _answer_row(batch, int(i), self.keys))
        if self.rates is not None:
            answered = pc.invert(null).to_pylist()
            for qid, spanned in zip(batch.column(QUESTION_ID).to_pylist(), answered, strict=True):
                self._count(self.rates, qid, 0 if spanned else 1)
        if self.gold_ids is not None:
            for qid, text, value in zip(ids, batch.column("answer").to_pylist(), score.tolist(), strict=True):
                if qid is not None and str(qid) in self.gold_ids:
                    self.gold_answered.append((str(qid), text or "", value))
                    self.gold_rows += 1

    def rejections(self, batch: pa.RecordBatch) -> None:
        reasons = batch.column("reason").to_pylist()
        self.reasons.update(reasons)
        picks: list[int] = []
        pending: Counter[str] = Counter()
        for index, reason in enumerate(reasons):
            if len(self.examples.setdefault(reason, [])) + pending[reason] < EXAMPLES_PER_REASON:
                picks.append(index)
                pending[reason] += 1
        for row in batch.take(pa.array(picks, pa.int64())).to_pylist() if picks else ():
            self.examples[row["reason"]].append({name: _cell(value) for name, value in row.items()})
        if self.rates is not None and QUESTION_ID in batch.schema.names:
            for qid in batch.column(QUESTION_ID).to_pylist():
                self._count(self.rates, qid, 2)
        if self.gold_ids is not None:
            for qid in batch.column("id").to_pylist():
                if qid is not None and str(qid) in self.gold_ids:
                    self.gold_rejected.add(str(qid))
                    self.gold_rows += 1

    def _count(self, rates: dict[object, list[int]], qid: object, slot: int) -> None:
        """Counts one row of `qid` in `slot` (0 answered, 1 no answer, 2 rejected), up to the id cap."""
        counts = rates.get(qid)
        if counts is None:
            if len(rates) >= MAX_QUESTION_IDS:
                self.rates_truncated = True
                return
            counts = rates[qid] = [0, 0, 0]
        counts[slot] += 1

    def result(self, answer_columns: tuple[str, ...]) -> Scan:
        stats = AnswerStats(
            self.rows,
            self.no_answer,
            tuple(self.scores.tolist()),
            tuple(self.lengths.tolist()),
            dict(sorted(self.reasons.items())),
        )
        rates = None
        if self.rates is not None:
            counts = {qid: (c[0], c[1], c[2]) for qid, c in self.rates.items()}
            rates = QuestionRates(counts, self.rates_truncated)
        gold = None
        if self.gold_ids is not None:
            gold = GoldRows(tuple(self.gold_answered), frozenset(self.gold_rejected), self.gold_rows)
        examples = {reason: tuple(rows) for reason, rows in sorted(self.examples.items())}
        return Scan(stats, self.sample.sorted(), self.lowest.sorted(), examples, rates, answer_columns, gold)


ANSWER_READ = ["id", "answer", "start", "end", "score", "no_answer"]


def scan_outputs(
    fs: OutputFileSystem,
    root: str,
    gold_ids: Collection[str] | None = None,
    pair_keys: tuple[str, str] | None = None,
) -> Scan:
    """Streams `answers/` and `rejections/` of an output folder once into what the report shows.

    Args:
        fs: The output folder's file system.
        root: The folder's path on `fs`.
        gold_ids: The gold data's question ids: the rows with these ids are kept for scoring.
        pair_keys: A two-table job's doc_id and question_id columns: the shown rows carry their values
            (`AnswerRow.keys`), by which their texts are found in the two tables.

    Returns:
        The scan; `question_rates` only when the answers table has a `question_id` column.
    """
    columns = table_columns(fs, root, ANSWERS_DIR)
    rates = QUESTION_ID in columns
    keys = pair_keys if pair_keys is not None and set(pair_keys) <= set(columns) else None
    scanner = _Scanner(gold_ids, rates, keys)
    wanted = list(dict.fromkeys(ANSWER_READ + ([QUESTION_ID] if rates else []) + list(keys or ())))
    for batch in _batches(fs, root, ANSWERS_DIR, wanted):
        scanner.answers(batch)
    for batch in _batches(fs, root, REJECTIONS_DIR, [], REJECTION_BATCH_ROWS):
        scanner.rejections(batch)
    return scanner.result(columns)
