"""Helpers of the report / calibrate / estimate tests: a hand-made SQuAD file, a parser for the commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from docqa.user_commands import register
from qa_core.jobs.guard import run_guarded

WORDS = (
    *("city", "river", "church", "team", "war", "school", "world", "music", "film", "people", "region"),
    *("country", "state", "government", "university", "north", "south", "east", "west", "history"),
    "season",
)
WH = ("what", "who", "when", "where", "why", "which", "how", "name")


def squad_document(n: int) -> dict[str, Any]:
    """`n` questions over contexts of 1 to 60 words (in the test vocabulary), one paragraph each.

    Question i starts with a rotating wh-word ("name ..." is type "other"); its gold answer is one word of
    the context. One-word contexts can only be answered right, so exact match is never all zero.
    """
    paragraphs = []
    for i in range(n):
        length = 1 if i % 4 == 0 else 5 + (i * 7) % 56
        words = [WORDS[(i * 3 + k * 5) % len(WORDS)] for k in range(length)]
        context = " ".join(words)
        pick = (i * 11) % length
        start = len(" ".join(words[:pick])) + (1 if pick else 0)
        paragraphs.append(
            {
                "context": context,
                "qas": [
                    {
                        "id": f"q{i:03d}",
                        "question": f"{WH[i % len(WH)]} is the {words[pick]} of the {WORDS[i % 5]}?",
                        "answers": [{"text": words[pick], "answer_start": start}],
                    }
                ],
            }
        )
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": paragraphs}]}


def write_squad(path: Path, n: int) -> Path:
    """Writes `squad_document(n)` as JSON."""
    path.write_text(json.dumps(squad_document(n)), encoding="utf-8")
    return path


def run_command(argv: list[str]) -> int:
    """Parses `argv` with only the user commands registered and runs it as `docqa` would."""
    parser = argparse.ArgumentParser(prog="docqa")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_guarded(args.command, lambda: args.func(args))
