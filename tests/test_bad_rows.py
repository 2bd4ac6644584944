"""Bad rows: a corpus of hostile inputs; every row ends as one answer or one rejection with a stable code.

The same corpus runs through the in-process engine (rows as dicts, with the tiny random BERT), through
`docqa predict` and through the Beam job (Parquet, with the marker model, whose answer is known: the span
from "river" to "church"). Every answer must be an exact substring of its row's context.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.run import run
from qa_core.config import load_config
from qa_core.engine.loop import QAEngine
from qa_core.jobs.predict import predict
from qa_core.records import Answer, Reason, Rejection
from qa_core.runtime.torch_runner import TorchRunner
from tests import fakes

ANSWER = "ANSWER"
LIMIT = 1_000_000  # featurize.max_context_chars of the Parquet runs: a context of exactly LIMIT is kept
FILLER = "the city school "  # no marker word: the only marker span of a big context is the planted one


def big_context(n: int, planted: str = "river museum church") -> str:
    """`n` characters of filler with `planted` near the end (the answer lies in one of the last windows)."""
    body = (FILLER * (n // len(FILLER) + 1))[: n - len(planted) - 40]
    return (body + " " + planted + " " + FILLER * 3)[:n]


@dataclass(frozen=True)
class Case:
    """One kind of bad row: what it holds and how it must end (a reason code or ANSWER)."""

    kind: str
    question: Any
    context: Any
    expected: str
    id: Any = "same-as-kind"
    answer: str | None = None  # the marker model's exact answer, where the row has one

    @property
    def row_id(self) -> Any:
        return self.kind if self.id == "same-as-kind" else self.id

    def row(self) -> dict[str, Any]:
        return {"id": self.row_id, "question": self.question, "context": self.context, "kind": self.kind}


# Rows that Parquet can hold (string columns): run through all three engines.
CORPUS: list[Case] = [
    Case("null_question", None, "the river church", Reason.MISSING_QUESTION),
    Case("empty_question", "", "the river church", Reason.EMPTY_QUESTION),
    Case("whitespace_question", " \t\r\n\u00a0\u3000", "the river church", Reason.EMPTY_QUESTION),
    Case("newline_only_question", "\n\n\r\n", "the river church", Reason.EMPTY_QUESTION),
    Case("null_context", "what?", None, Reason.MISSING_CONTEXT),
    Case("empty_context", "what?", "", Reason.EMPTY_CONTEXT),
    Case("whitespace_context", "what?", " \r\n\t\u00a0\u2003\u3000 ", Reason.EMPTY_CONTEXT),
    Case("null_id", "what?", "the river church", Reason.MISSING_ID, id=None),
    Case("blank_id", "what?", "the river church", ANSWER, id="  ", answer="river church"),
    Case("duplicate_id_first", "what?", "the river church", ANSWER, id="dup", answer="river church"),
    Case(
        "duplicate_id_second",
        "what?",
        "a school river music church",
        ANSWER,
        id="dup",
        answer="river music church",
    ),
    Case(
        "question_longer_than_window",
        "what is the history " * 600,
        "the old river and the church",
        ANSWER,
        answer="river and the church",
    ),
    Case("million_char_context", "where?", big_context(LIMIT), ANSWER, answer="river museum church"),
    Case("context_over_limit", "where?", big_context(LIMIT + 1), Reason.CONTEXT_TOO_LONG),
    Case("punctuation_only_question", "?!... ;;", "the river church", ANSWER, answer="river church"),
    Case("punctuation_only_context", "what?", "!!! ... ??? ,,, ;; --", ANSWER),
    Case("control_chars_question", "\x00\x01\x1f\x7f", "the river church", Reason.EMPTY_QUESTION),
    Case("control_chars_context", "what?", "\x00\x01\x02\x1b\x7f", Reason.NO_CONTEXT_TOKENS),
    Case(
        "nul_and_escapes_inside_text",
        "what\x00?",
        "the \x00river\x07 \x1b[0m church\x00",
        ANSWER,
        answer="river\x07 \x1b[0m church",
    ),
    Case(
        "emoji_with_zwj",
        "who?",
        "family 👨\u200d👩\u200d👧\u200d👦 by the river 🏳\ufe0f\u200d🌈 church",
        ANSWER,
        answer="river 🏳\ufe0f\u200d🌈 church",
    ),
    Case("emoji_only_context", "who?", "👨\u200d👩\u200d👧\u200d👦🏳\ufe0f\u200d🌈🎉", ANSWER),
    Case(
        "combining_marks",
        "que\u0301?",
        "cafe\u0301 river re\u0301sume\u0301 church nai\u0308ve Z\u0335\u0321a\u0337lgo",
        ANSWER,
        answer="river re\u0301sume\u0301 church",
    ),
    Case(
        "right_to_left",
        "מה?",
        "مرحبا بالعالم river שלום \u202eעולם\u202c church",  # noqa: RUF001
        ANSWER,
        answer="river שלום \u202eעולם\u202c church",  # noqa: RUF001
    ),
    Case("cjk_without_spaces", "東京?", "東京は日本の首都です東京タワーがあります", ANSWER),
    Case("thai_without_spaces", "อะไร?", "ภาษาไทยไม่มีช่องว่างระหว่างคำ", ANSWER),
    Case(
        "zero_width_soft_hyphen_bom",
        "\ufeffwhat\u200b?",
        "zero\u200bwidth river soft\u00adhyphen \ufeffbom church\u200d end",
        ANSWER,
        # The ZWJ after "church" extends its last character (UAX #29 GB9): a whole cluster is answered.
        answer="river soft\u00adhyphen \ufeffbom church\u200d",
    ),
    Case("zero_width_only_question", "\u200b\ufeff\u00ad\u2060", "the river church", Reason.EMPTY_QUESTION),
    Case(
        "zero_width_only_context", "what?", "\u200b\u200c\u200d\ufeff\u00ad\u2060", Reason.NO_CONTEXT_TOKENS
    ),
    Case(
        "html",
        "what?",
        '<html><body><p class="x">the <b>river</b> &amp; church</p><script>alert(1)</script></body></html>',
        ANSWER,
        answer="river</b> &amp; church",
    ),
    Case(
        "crlf_and_tabs",
        "what?\r\n",
        "col1\tcol2\r\nthe river\r\n\tchurch\r\n",
        ANSWER,
        answer="river\r\n\tchurch",
    ),
    Case("unicode_line_separators", "what?", "the river\u2028and\u2029the church", ANSWER),
    Case(
        "astral_plane_letters",
        "what?",
        "𝐀𝐁𝐂 river 𝔘𝔫𝔦 church 𝟘𝟙",  # noqa: RUF001
        ANSWER,
        answer="river 𝔘𝔫𝔦 church",  # noqa: RUF001
    ),
    Case("single_character_context", "what?", "x", ANSWER, answer="x"),
    Case("one_10k_character_word", "what?", "a" * 10_000, ANSWER, answer="a" * 10_000),
]
# Values that only a Python caller of QAEngine can pass (Parquet columns are typed; a wrongly typed
# column is a job-level error, see test_bad_files.py).
DICT_ONLY: list[Case] = [
    Case("int_question", 42, "the river church", Reason.INVALID_QUESTION_TYPE),
    Case("bool_question", True, "the river church", Reason.INVALID_QUESTION_TYPE),
    Case("nan_question", float("nan"), "the river church", Reason.INVALID_QUESTION_TYPE),
    Case("bytes_context", "what?", b"the river church", Reason.INVALID_CONTEXT_TYPE),
    Case("list_context", "what?", ["the", "river"], Reason.INVALID_CONTEXT_TYPE),
    Case("dict_context", "what?", {"text": "the river"}, Reason.INVALID_CONTEXT_TYPE),
    Case("lone_surrogate_context", "what?", "bad \ud800 river church", Reason.FEATURIZE_ERROR),
]
PARQUET_SCHEMA = pa.schema(
    [("id", pa.string()), ("question", pa.string()), ("context", pa.string()), ("kind", pa.string())]
)
BIG = {"million_char_context", "context_over_limit"}


def test_corpus_covers_at_least_30_kinds() -> None:
    kinds = [c.kind for c in CORPUS + DICT_ONLY]
    assert len(kinds) == len(set(kinds)) >= 30
    assert {str(c.expected) for c in CORPUS + DICT_ONLY} - {ANSWER} <= {r.value for r in Reason}


def check_outcomes(outcomes: dict[str, tuple[str, Any]], cases: list[Case]) -> None:
    """`outcomes`: kind -> (reason code or ANSWER, answer row); every case ends as expected."""
    assert set(outcomes) == {c.kind for c in cases}
    wrong = {c.kind: outcomes[c.kind][0] for c in cases if outcomes[c.kind][0] != str(c.expected)}
    assert not wrong, f"unexpected outcomes: {wrong}"
    for case in cases:
        if case.expected != ANSWER:
            continue
        answer, start, end = outcomes[case.kind][1]
        assert 0 <= start < end <= len(case.context), case.kind
        assert answer == case.context[start:end], f"{case.kind}: not a substring at its offsets"


def engine_outcomes(results: list[Answer | Rejection], cases: list[Case]) -> dict[str, tuple[str, Any]]:
    assert len(results) == len(cases), "exactly one result per row"
    out: dict[str, tuple[str, Any]] = {}
    for case, result in zip(cases, results, strict=True):  # the engine keeps input order
        assert result.id == case.row_id
        if isinstance(result, Answer):
            assert result.answer, f"{case.kind}: an answer is never empty (no-answer handling is off)"
            out[case.kind] = (ANSWER, (result.answer, result.start, result.end))
            for entry in result.top_k:
                assert entry.answer == case.context[entry.start : entry.end]
        else:
            out[case.kind] = (result.reason.value, result.detail)
    return out


def test_engine_answers_or_rejects_every_row(tiny_model: TorchRunner) -> None:
    """The random tiny BERT on every kind (but the two huge contexts), rows passed as Python dicts."""
    cases = [c for c in CORPUS if c.kind not in BIG] + DICT_ONLY
    engine = QAEngine(tiny_model, load_config([], ["decode.top_k=3"]))
    results = list(engine.answer_rows([c.row() for c in cases]))
    check_outcomes(engine_outcomes(results, cases), cases)
    stats = engine.stats
    assert stats.rows == len(cases) == stats.answered + sum(stats.rejected.values())


def test_engine_marker_answers_are_exact(tiny_model: TorchRunner) -> None:
    """With the marker model the answer of each row is known, the huge contexts included."""
    model = fakes.marker(tiny_model.tokenizer)
    config = load_config([], [f"featurize.max_context_chars={LIMIT}"])
    engine = QAEngine(model, config)
    results = list(engine.answer_rows([c.row() for c in CORPUS]))
    outcomes = engine_outcomes(results, CORPUS)
    check_outcomes(outcomes, CORPUS)
    for case in CORPUS:
        if case.answer is not None:
            assert outcomes[case.kind][1][0] == case.answer, case.kind
    assert engine.stats.windows > 700  # the million-character context went through many windows


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bad_rows") / "corpus.parquet"
    table = pa.Table.from_pylist([c.row() for c in CORPUS], schema=PARQUET_SCHEMA)
    pq.write_table(table, path, row_group_size=8)
    return path


def table_outcomes(out: Path) -> dict[str, tuple[str, Any]]:
    answers = pq.read_table(out / "answers").to_pylist()
    rejections = pq.read_table(out / "rejections").to_pylist()
    kinds = Counter([r["kind"] for r in answers] + [r["kind"] for r in rejections])
    assert not [k for k, n in kinds.items() if n != 1], "a row appears more than once"
    outcomes: dict[str, tuple[str, Any]] = {r["kind"]: (r["reason"], r["detail"]) for r in rejections}
    outcomes.update({r["kind"]: (ANSWER, (r["answer"], r["start"], r["end"])) for r in answers})
    return outcomes


def check_output(out: Path) -> dict[str, tuple[str, Any]]:
    outcomes = table_outcomes(out)
    check_outcomes(outcomes, CORPUS)
    for case in CORPUS:
        if case.answer is not None:
            assert outcomes[case.kind][1][0] == case.answer, case.kind
    assert "limit is 1000000" in outcomes["context_over_limit"][1]
    rejections = pq.read_table(out / "rejections").to_pylist()
    # A rejection keeps the row's original columns, byte for byte.
    for row in rejections:
        case = next(c for c in CORPUS if c.kind == row["kind"])
        assert (row["id"], row["question"], row["context"]) == (case.row_id, case.question, case.context)
    info = json.loads((out / "_run.json").read_text())
    counts = info["counts"]
    assert counts["rows_read"] == len(CORPUS) == counts["answered"] + counts["rejected"]
    assert (out / "COMPLETED").exists()
    return outcomes


PARQUET_SETTINGS = [f"featurize.max_context_chars={LIMIT}", "input.passthrough_columns=[kind]"]


@pytest.fixture(scope="module")
def predicted(corpus_file: Path, tiny_model: TorchRunner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bad_rows_predict") / "out"
    config = load_config([], PARQUET_SETTINGS)
    predict(config, str(corpus_file), str(out), progress=False, model=fakes.marker(tiny_model.tokenizer))
    return out


def test_predict_answers_or_rejects_every_row(predicted: Path) -> None:
    check_output(predicted)


def test_run_answers_or_rejects_every_row(
    corpus_file: Path, predicted: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    settings = [arg for s in PARQUET_SETTINGS for arg in ("--set", s)]
    argv = ["--input", str(corpus_file), "--output", str(out), "--model", str(tiny_model_dir), *settings]
    config = load_config([], [*PARQUET_SETTINGS, f"model.name_or_path={tiny_model_dir}"])
    run(argv, model_handler=fakes.FakeModelHandler(config, str(tiny_model_dir)))
    outcomes = check_output(out)
    assert outcomes == table_outcomes(predicted), "both engines end every row the same way"


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from qa_core.config import load_config
    from qa_core.engine.loop import QAEngine
    from qa_core.records import Answer
    from tests import fakes
    from tests.test_bad_rows import big_context

    model = fakes.marker(fakes.load_tokenizer(sys.argv[1]))
    engine = QAEngine(model, load_config([], []))
    list(engine.answer_rows([{"id": 0, "question": "what?", "context": big_context(2000)}]))  # warm up
    context = big_context(int(sys.argv[2]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (result,) = engine.answer_rows([{"id": 1, "question": "where?", "context": context}])
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert isinstance(result, Answer) and result.answer == "river museum church", result
    assert result.answer == context[result.start : result.end]
    print(f"{grown_mb:.0f} {engine.stats.windows}")
    """
)


def test_million_char_context_runs_in_bounded_memory(tiny_model_dir: Path) -> None:
    """A 1M-character context is answered through ~750 windows; the process grows by a bounded amount.

    Measured in a fresh process (peak RSS is process-wide): about 160 MB on CPython 3.11, linear in the
    context length (the tokenizer's window encodings). `featurize.max_context_chars` caps it.
    """
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tiny_model_dir), str(LIMIT)],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    grown_mb, windows = map(int, result.stdout.split()[-2:])
    assert windows > 700
    assert grown_mb < 600, f"answering a 1M-character context grew the process by {grown_mb} MB"
