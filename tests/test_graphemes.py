"""Answers start and end on extended grapheme cluster boundaries (UAX #29), against a brute-force reference.

The reference segments the whole text with `regex`'s `\\X` and picks the smallest covering span; the code
under test only looks at a few characters around each end.
"""

from __future__ import annotations

import bisect
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import regex

from qa_core.api import answer_rows, load_model
from qa_core.config import DEFAULT_MODEL, DecodeConfig, QAConfig, load_config
from qa_core.records import Answer, Record, WindowCandidates
from qa_core.runtime.runner import ModelRunner
from qa_core.stages import graphemes
from qa_core.stages.aggregate import aggregate
from qa_core.stages.graphemes import snap_span, snap_spans


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def boundaries(text: str) -> list[int]:
    return sorted({0} | {m.end() for m in regex.finditer(r"\X", text)})


def reference(text: str, start: int, end: int) -> tuple[int, int]:
    """The smallest span covering [start, end) whose ends are cluster boundaries of the whole text."""
    if start == end:
        return start, end
    bounds = boundaries(text)
    return bounds[bisect.bisect_right(bounds, start) - 1], bounds[bisect.bisect_left(bounds, end)]


# Each piece is whole clusters; several are one cluster of many code points.
PIECES = [
    nfd("José café Zoë"),
    "น้ำ",  # Thai: consonant + mark + SARA AM (a spacing mark)
    "ที่",
    "नमस्ते",  # Devanagari: a conjunct with a virama and a vowel sign
    "क्षत्रिय",
    "🇫🇷",  # flags are pairs of regional indicators
    "🇩🇪",
    "\U0001f1e6",  # a lone regional indicator shifts the pairing of what follows
    "👨\u200d👩\u200d👧",  # ZWJ family
    "❤\ufe0f",  # emoji + variation selector
    "👍🏽",  # skin-tone modifier
    nfd("한국어 말"),  # Hangul jamo: L V T
    "한",  # a precomposed syllable (LVT)
    "\r\n",
    "\r",
    "\n",
    " ",
    "a",
    "é",
    "\u0301",  # a stray combining mark (joins what precedes it)
    "\u200d",
    "\u0600",  # Arabic number sign: Prepend, joins what follows it
    "\u094d",  # Devanagari virama (InCB Linker)
    "\u0915",  # Devanagari KA (InCB Consonant)
    "\u1cf6",  # Vedic sign: InCB Linker but GCB Other
    "\u1100",
    "\u1161",
    "\u11a8",
    "\U0001f600",
]


@pytest.mark.parametrize(
    "text",
    [
        nfd("José café Zoë"),
        "น้ำ ที่ ดี",
        "नमस्ते क्षत्रिय",
        "🇫🇷🇩🇪🇫🇷 x",
        "x🇫🇷🇩🇪\U0001f1e6",
        "👨\u200d👩\u200d👧 a",
        "❤\ufe0f b",
        "👍🏽👍🏿 c",
        nfd("한국어 말"),
        "a\r\nb\r\n\r\n",
        "\u0600123 e\u0301\u0301x",
    ],
)
def test_every_span_of_hand_built_texts_matches_the_reference(text: str) -> None:
    for start in range(len(text) + 1):
        for end in range(start, len(text) + 1):
            assert snap_span(text, start, end) == reference(text, start, end), (text, start, end)


def test_known_answers_become_whole_characters() -> None:
    context = nfd("The owner of the small café in town is José.")
    for word in (nfd("café"), nfd("José")):
        start = context.index(word)
        # The tokenizer's offsets end before the combining accent (its normalizer strips it).
        assert context[start : start + len(word) - 1] == word[:-1]
        assert snap_span(context, start, start + len(word) - 1) == (start, start + len(word))
    assert snap_span("🇫🇷🇩🇪", 2, 3) == (2, 4)  # the second flag, not a cut one
    assert snap_span("🇫🇷🇩🇪", 1, 3) == (0, 4)
    family = "👨\u200d👩\u200d👧"
    assert snap_span(f"{family}!", 0, 1) == (0, len(family))
    assert snap_span("नमस्ते", 2, 3) == (2, 6)  # स्ते is one cluster (a conjunct + vowel sign)
    assert snap_span("न्यू", 3, 4) == (0, 4)  # a start inside the cluster moves back to its start
    assert snap_span("a\r\nb", 1, 2) == (1, 3)
    assert snap_span(nfd("José"), 4, 4) == (4, 4)  # empty spans stay as they are


def test_clusters_longer_than_the_margin() -> None:
    marks = "a" + "\u0301" * 500 + " b"
    assert snap_span(marks, 0, 1) == (0, 501)
    assert snap_span(marks, 250, 251) == (0, 501)
    assert snap_span(marks, 501, 503) == (501, 503)
    flags = "x" + "🇫🇷" * 300 + "\U0001f1e6 y"
    for start, end in [(1, 2), (300, 301), (301, 302), (599, 601), (600, 602), (2, 604)]:
        assert snap_span(flags, start, end) == reference(flags, start, end), (start, end)
    conjuncts = "\u0915\u094d" * 200 + "\u0915 x"
    assert snap_span(conjuncts, 200, 201) == (0, 401)


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 14)):
        piece = rng.choice(PIECES)
        # Runs (of marks, regional indicators, linkers) make clusters longer than the search windows.
        parts.append(piece * rng.randint(2, 12) if rng.random() < 0.15 else piece)
    return "".join(parts)


@pytest.mark.parametrize(("scan", "margin"), [(16, 32), (1, 1), (3, 2)])
def test_random_spans_match_the_reference(monkeypatch: pytest.MonkeyPatch, scan: int, margin: int) -> None:
    # Tiny search windows send every position through the slower paths (the growing slices).
    monkeypatch.setattr(graphemes, "_SCAN", scan)
    monkeypatch.setattr(graphemes, "_MARGIN", margin)
    rng = random.Random(scan * 1000 + margin)
    for _ in range(1500):
        text = random_text(rng)
        start = rng.randint(0, len(text))
        end = rng.randint(start, len(text))
        snapped = snap_span(text, start, end)
        assert snapped == reference(text, start, end), (text, start, end)
        assert snap_span(text, *snapped) == snapped  # idempotent
        assert snapped[0] <= start and snapped[1] >= end  # only widens
        bounds = set(boundaries(text))
        # The shortcut never calls a position a boundary that is not one.
        assert all(p in bounds for p in range(len(text) + 1) if graphemes._certain_boundary(text, p))


def test_snap_spans_is_snap_span_on_each() -> None:
    rng = random.Random(5)
    for _ in range(300):
        text = random_text(rng)
        starts = [rng.randint(0, len(text)) for _ in range(rng.randint(0, 8))]
        ends = [rng.randint(s, len(text)) for s in starts]
        expected = [snap_span(text, s, e) for s, e in zip(starts, ends, strict=True)]
        got_starts, got_ends = snap_spans(text, starts, ends)
        assert list(zip(got_starts, got_ends, strict=True)) == expected
    # The ASCII shortcut still sees CR LF.
    assert snap_spans("a\r\nb", [0, 1], [2, 4]) == ([0, 1], [3, 4])
    with pytest.raises(ValueError, match="not inside"):
        snap_spans("abc", [0], [4])
    with pytest.raises(ValueError, match="not inside"):
        snap_span("abc", 2, 1)


def test_texts_of_the_boundary_everywhere_blocks_need_no_snapping() -> None:
    """Every character of `_BOUNDARY_EVERYWHERE` is GCB Other, Control or LF per `regex` (what `\\X` uses),
    so every position of a text of them is a boundary; and snap_spans' scan still snaps what can join."""
    joinless = regex.compile(r"[\p{GCB=Other}\p{GCB=Control}\p{GCB=LF}]")
    inside = [c for c in range(0x110000) if graphemes._MAY_JOIN.match(chr(c)) is None]
    assert len(inside) > 25_000 and 0x0D not in inside
    assert [hex(c) for c in inside if not joinless.match(chr(c))] == []
    rng = random.Random(9)
    pool = [chr(c) for c in inside[::37]] + list("ab \n\u2013\u201c\u00e9")
    for _ in range(200):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 40)))
        assert boundaries(text) == list(range(len(text) + 1))
    # A joiner anywhere in the text: the offsets are looked at again (a combining mark, a ZWJ, a CR LF).
    for text, span, snapped in [
        ("caf\u00e9 \u2013 Jose\u0301!", (5, 11), (5, 12)),
        ("\u201ca\u200d\U0001f600\u201d", (1, 2), (1, 3)),  # the ZWJ joins the a
        ("\u00e9\r\nb", (1, 2), (1, 3)),
    ]:
        assert snap_spans(text, [span[0]], [span[1]]) == ([snapped[0]], [snapped[1]])


def _window(starts: list[int], ends: list[int], logits: list[float]) -> WindowCandidates:
    return WindowCandidates(
        "k", 0, 1, np.array(starts, np.int64), np.array(ends, np.int64), np.array(logits), None
    )


def test_aggregate_answers_whole_clusters_and_merges_spans_that_snap_together() -> None:
    context = nfd("The owner of the small café in town is José.")
    jose = context.index("J")  # "Jose" + U+0301: the token ends before the accent
    record = Record("k", 1, "q", context)
    # One window, ranked and distinct as decode returns them: the fast path must still snap and merge.
    # (jose, jose+4) and (jose, jose+5) are the same characters once snapped; the max logit is kept.
    window = _window([jose, jose, 0], [jose + 4, jose + 5, 3], [5.0, 4.0, 1.0])
    answer = aggregate(record, [window], DecodeConfig(top_k=5))
    assert isinstance(answer, Answer)
    assert answer.answer == nfd("José") == context[answer.start : answer.end]
    assert (answer.start, answer.end) == (jose, jose + 5)
    assert [(s.start, s.end, s.logit_score) for s in answer.top_k] == [(jose, jose + 5, 5.0), (0, 3, 1.0)]
    assert answer.score == pytest.approx(1 / (1 + np.exp(1.0 - 5.0)))  # the softmax over the 2 left
    # Spans of two windows that snap to the same characters are one candidate too.
    cafe = context.index("caf")
    first = WindowCandidates("k", 0, 2, np.array([cafe]), np.array([cafe + 4]), np.array([2.0]), None)
    second = WindowCandidates("k", 1, 2, np.array([cafe]), np.array([cafe + 5]), np.array([3.0]), None)
    answer = aggregate(record, [first, second], DecodeConfig(top_k=5))
    assert answer.answer == nfd("café") == context[answer.start : answer.end]
    assert [(s.start, s.end, s.logit_score) for s in answer.top_k] == [(cafe, cafe + 5, 3.0)]
    # A start inside a cluster moves back to the cluster's start.
    hindi = Record("k", 1, "q", "नमस्ते")
    answer = aggregate(hindi, [_window([3], [4], [1.0])], DecodeConfig())
    assert (answer.start, answer.end, answer.answer) == (2, 6, "स्ते")


@pytest.fixture(scope="module")
def bundled() -> tuple[ModelRunner, QAConfig]:
    assert (Path(DEFAULT_MODEL) / "model.safetensors").is_file(), DEFAULT_MODEL
    config = load_config(overrides=["model.dtype=fp32"])
    return load_model(config), config


@pytest.mark.parametrize(
    ("context", "question", "expected"),
    [
        ("The owner of the small café in town is José.", "Who owns the café?", "José"),
        ("The prize went to Zoë after the final round.", "Who won the prize?", "Zoë"),
    ],
)
def test_bundled_model_answers_whole_characters_in_nfd_text(
    bundled: tuple[ModelRunner, QAConfig], context: str, question: str, expected: str
) -> None:
    model, config = bundled
    context, question = nfd(context), nfd(question)
    rows = [{"id": "q", "question": question, "context": context}]
    (answer,) = list(answer_rows(model, config, rows))
    assert isinstance(answer, Answer)
    assert answer.start is not None and answer.end is not None
    assert answer.answer == context[answer.start : answer.end]
    assert answer.answer == nfd(expected)  # ends with the combining mark
    assert {answer.start, answer.end} <= set(boundaries(context))
