"""The sections of `docqa report` a reviewer reads first, built from one `report_scan.Scan`.

Answers marked in their context, the lowest scores, examples of each rejection reason, and answer rates
per question of a two-table job.

Every value from the tables goes through `report_html.esc` (the helpers here build `Html` only from
escaped parts). Each section is a `<section>` with a stable id (`samples`, `lowest`, `rejections`,
`question-rates`) that readers and tests find it by.
"""

from __future__ import annotations

from qa_core.tools.report_context import RowText, TextLookup, answer_in_context
from qa_core.tools.report_html import (
    CONTEXT_RADIUS,
    ELLIPSIS,
    Html,
    count,
    fmt,
    highlight,
    join,
    note,
    section,
    table,
    tag,
)
from qa_core.tools.report_scan import EXAMPLES_PER_REASON, MAX_QUESTION_IDS, AnswerRow, QuestionRates, Scan

MAX_RATE_ROWS = 50
"""The per-question table shows the ids with the lowest answer rates, this many at most."""


def answer_in_page(row: AnswerRow, text: RowText | None, radius: int = CONTEXT_RADIUS) -> Html:
    """An answer shown in its context: the span marked, or the reason it cannot be.

    Args:
        row: The answer.
        text: Its question and context when found (`report_context.lookup_texts`).
        radius: Characters of context either side of the span.
    """
    context = text.context if text is not None else None
    if row.no_answer or row.start is None or row.end is None:
        if context is None:
            return note("no answer (context not found)")
        excerpt = context[: 2 * radius] + (ELLIPSIS if len(context) > 2 * radius else "")
        return join([note("no answer; the context begins:"), tag("p", excerpt, class_="context")])
    if answer_in_context(context, row.start, row.end, row.answer) and context is not None:
        return highlight(context, row.start, row.end, radius)
    if context is not None:
        return note(
            f"the context found for this id does not hold the answer at {row.start}-{row.end} "
            "(the id repeats with another context, or the input changed since the run)",
            "warn",
        )
    return note("context not found (see the sources above)")


def _answer_text(row: AnswerRow) -> str:
    return "(no answer)" if row.no_answer else row.answer


def _sources(lookup: TextLookup) -> Html:
    line = "; ".join(lookup.notes) if lookup.notes else "no context needed"
    return tag("p", f"Contexts: {line}.", class_="note context-sources")


def samples_section(scan: Scan, lookup: TextLookup) -> Html:
    """Sampled answers (smallest id hash), each with its question and the answer marked in its context."""
    if not scan.sample:
        return section("samples", "Sample answers", [note("No answers.")])
    cards = []
    for row in scan.sample:
        text = lookup.texts.get(row.id)
        question = text.question if text is not None and text.question is not None else "(question not found)"
        cards.append(
            tag(
                "div",
                join(
                    [
                        tag("p", f"id {fmt(row.id)} · score {row.score:.3f}", class_="meta"),
                        tag("p", join([tag("b", "Q: "), question]), class_="question"),
                        tag("p", join([tag("b", "A: "), _answer_text(row)]), class_="answer"),
                        answer_in_page(row, text),
                    ]
                ),
                class_="sample",
            )
        )
    intro = note(
        f"{len(scan.sample)} answers chosen by the smallest CRC-32 of their id (the same rows on every "
        "rerun), the answer marked in its context."
    )
    return section(
        "samples", "Sample answers", [intro, _sources(lookup), tag("div", join(cards), class_="samples")]
    )


def lowest_section(scan: Scan, lookup: TextLookup) -> Html:
    """The lowest-scored answers, lowest first, with their questions and contexts."""
    if not scan.lowest:
        return section("lowest", "Lowest-confidence answers", [note("No answers.")])
    rows = []
    for row in scan.lowest:
        text = lookup.texts.get(row.id)
        question = text.question if text is not None else None
        rows.append([row.id, f"{row.score:.4f}", question, _answer_text(row), answer_in_page(row, text, 80)])
    return section(
        "lowest",
        "Lowest-confidence answers",
        [
            note(f"The {len(rows)} answers with the lowest score."),
            table(["id", "score", "question", "answer", "in context"], rows, id="lowest-table"),
        ],
    )


def rejections_section(scan: Scan) -> Html:
    """A few rows of each rejection reason: detail and the row's input columns, every value escaped."""
    by_reason = scan.stats.rejected_by_reason
    if not by_reason:
        return section("rejections", "Rejection examples", [note("No rejected rows.")])
    parts = [
        note(f"The first {EXAMPLES_PER_REASON} rows of each reason, as the rejections table holds them.")
    ]
    for reason, examples in scan.rejection_examples.items():
        columns = [name for name in (examples[0] if examples else {}) if name != "reason"]
        body = table(columns, ([row.get(name) for name in columns] for row in examples))
        heading = tag("h3", f"{reason} ({count(by_reason.get(reason, 0), 'row')})")
        parts.append(tag("div", join([heading, body]), class_="rejection-example", data_reason=reason))
    return section("rejections", "Rejection examples", parts)


def question_rates_section(rates: QuestionRates) -> Html:
    """Answer rate per `question_id` (two-table jobs), the lowest rates first."""
    ordered = sorted(rates.counts.items(), key=lambda item: (_rate(item[1]), -sum(item[1]), fmt(item[0])))
    rows = [
        [qid, sum(counts), counts[0], counts[1], counts[2], _rate(counts)]
        for qid, counts in ordered[:MAX_RATE_ROWS]
    ]
    parts = [
        note(
            f"{len(rates.counts):,} question ids; answer rate = rows answered with a span / all rows of the "
            f"question (rejected included); the {len(rows)} lowest shown."
        ),
        table(
            ["question_id", "rows", "answered", "no answer", "rejected", "answer rate"],
            rows,
            id="rates-table",
        ),
    ]
    if rates.truncated:
        parts.append(
            note(
                f"More than {MAX_QUESTION_IDS:,} question ids: the rows of later ids are not counted.", "warn"
            )
        )
    return section("question-rates", "Answer rate per question", parts)


def _rate(counts: tuple[int, int, int]) -> float:
    total = sum(counts)
    return counts[0] / total if total else 0.0
