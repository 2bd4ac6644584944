"""The config sections of a job's tables: `InputConfig`, `OutputConfig`, and the output's fixed columns.

Data only, like `qa_core.config_sections` (the other sections, split off to keep each module short);
`qa_core.config` assembles them into `QAConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

from qa_core.errors import ConfigError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class OutputConfig:
    """How a job cuts its rows into parts, each one part file pair and the unit `--resume` keeps.

    Attributes:
        part_rows: `docqa predict`: input rows per part file pair (`answers/part-N.parquet`,
            `rejections/part-N.parquet`). A job killed part way reruns only its unfinished parts. Each part
            is answered on its own (its sort buffers start with it), so a resumed output equals a clean
            run's.
        task_rows: `docqa spark` and `docqa run`: the most input rows of one unit of work (one task, one
            part file pair). The job plans at least two units per core it finds, and none larger than
            this, so every core gets work and a retried task repeats little (`qa_core.jobs.parts.plan_units`).
            At about 30 rows/s per CPU core for the bundled model, 2,000 rows is about a minute.
    """

    part_rows: int = 100_000
    task_rows: int = 2_000

    def __post_init__(self) -> None:
        _require(self.part_rows >= 1, f"output.part_rows must be >= 1, got {self.part_rows}")
        _require(self.task_rows >= 1, f"output.task_rows must be >= 1, got {self.task_rows}")


@dataclass(frozen=True)
class InputConfig:
    """Which input columns hold what.

    Attributes:
        id_column: The row id, copied to the outputs as it is (ids may repeat).
        question_column: The question text.
        context_column: The context text.
        passthrough_columns: Extra input columns copied to answers and rejections, each named once and
            none named like an output column (`RESERVED_OUTPUT_COLUMNS`, `id` included); the question,
            the context and an id column not named `id` may be copied (the answers hold them nowhere else).
            In a two-table job each is a column of the documents or of the questions.
        doc_id_column, question_id_column: Two-table jobs (`--documents`, `--questions`): the keys of
            the documents and of the questions (which may name a document too); copied to the outputs.
        max_questions: Two-table jobs: the most question rows, which every answering process holds in
            memory (about half a KiB each); more need a keyed join, which no engine has yet.
    """

    id_column: str = "id"
    question_column: str = "question"
    context_column: str = "context"
    passthrough_columns: tuple[str, ...] = ()
    doc_id_column: str = "doc_id"
    question_id_column: str = "question_id"
    max_questions: int = 1_000_000

    def __post_init__(self) -> None:
        names = [self.id_column, self.question_column, self.context_column]
        _require(len(set(names)) == 3, f"input: id/question/context columns must differ, got {names}")
        keys = [self.doc_id_column, self.question_id_column]
        unique = len({*keys, *names[1:]}) == 4 and not RESERVED_OUTPUT_COLUMNS.intersection(keys)
        _require(
            unique,
            f"input: doc_id/question_id columns {keys} must differ, and from the text and output columns",
        )
        _require(self.max_questions >= 1, f"input.max_questions must be >= 1, got {self.max_questions}")
        twice = sorted({c for c in self.passthrough_columns if self.passthrough_columns.count(c) > 1})
        _require(
            not twice,
            f"input.passthrough_columns names {', '.join(map(repr, twice))} twice; list each column once",
        )
        clash = [c for c in self.passthrough_columns if c in RESERVED_OUTPUT_COLUMNS]
        _require(
            not clash,
            f"input.passthrough_columns {clash} collide with the output's own columns "
            f"({', '.join(sorted(RESERVED_OUTPUT_COLUMNS))}; the row id is always written as 'id'): "
            "remove them from input.passthrough_columns",
        )

    @property
    def columns(self) -> list[str]:
        """All input columns to read (projection), in a stable order."""
        base = [self.id_column, self.question_column, self.context_column]
        return base + [c for c in self.passthrough_columns if c not in base]


ANSWER_COLUMNS = (
    "id",
    "answer",
    "start",
    "end",
    "score",
    "logit_score",
    "no_answer",
    "null_score_diff",
    "top_k",
)
"""The fixed columns of `answers/*.parquet`, in order (`top_k` only when decode.top_k > 1), before the
pass-through columns. Defined here, not in `qa_core/io/schema.py` (which imports them), because config
imports nothing of docqa and the stages and engine, which import config, must not import `io`."""

REJECTION_COLUMNS = ("id", "reason", "detail")
"""The fixed columns of `rejections/*.parquet`, in order, before the row's original columns."""

RESERVED_OUTPUT_COLUMNS = frozenset(ANSWER_COLUMNS) | frozenset(REJECTION_COLUMNS)
"""Names `input.passthrough_columns` may not use: a second column of the same name in the output."""
