"""`docqa report --data`: the job's questions scored against gold answers.

Only the job's questions are scored: the gold questions whose id (as a string) the job answered or
rejected. A rejected one counts as a missing prediction under the dataset version's official rule (0 in
v1.1, skipped in v2.0); the gold file's other questions are left out, so a job over part of a dev set
scores that part, and the page says how many of the job's rows had a gold answer and how many had none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qa_core.evaluation.evaluate import EvalResult, evaluate
from qa_core.evaluation.reliability import expected_calibration_error, is_correct, reliability_bins
from qa_core.evaluation.squad import SquadDataset
from qa_core.tools.report_figures import FigureFolder, reliability_plot
from qa_core.tools.report_html import Html, count, figure_grid, note, section, table, tag
from qa_core.tools.report_scan import GoldRows

QUESTION_TYPES = ("what", "who", "when", "where", "why", "which", "how", "other")
_WORD = re.compile(r"[a-z]+")


def question_type(question: str) -> str:
    """The first wh-word of a question (what/who/when/where/why/which/how), else "other"."""
    return next((w for w in _WORD.findall(question.lower()) if w in QUESTION_TYPES[:-1]), "other")


@dataclass(frozen=True)
class GoldFigures:
    """Scores of the job's questions against gold answers.

    Attributes:
        overall: The official EM / F1 over the job's gold questions.
        by_type: EM / F1 of those questions by type (types with no question are left out).
        job_rows: The job's rows (answered and rejected).
        gold_rows: Those of them whose id is in the gold data.
        questions: Distinct gold questions among them (the questions scored).
        gold_total: Questions in the gold file.
        repeated: Gold ids answered more than once (the first answer is scored).
        scores: Score of each answered row whose id is in the gold data.
        correct: Whether that row's answer is an exact match.
        ece: Expected calibration error of `scores` (10 equal-width bins).
    """

    overall: EvalResult
    by_type: dict[str, EvalResult]
    job_rows: int
    gold_rows: int
    questions: int
    gold_total: int
    repeated: int
    scores: list[float]
    correct: list[bool]
    ece: float


def gold_figures(dataset: SquadDataset, rows: GoldRows, job_rows: int) -> GoldFigures:
    """EM / F1 over the job's gold questions, overall and by question type, and per-row exact match.

    Args:
        dataset: The gold data.
        rows: The job's rows with a gold id (`scan_outputs` with the dataset's ids).
        job_rows: All of the job's rows, answered and rejected.
    """
    predictions: dict[str, str] = {}
    repeated: set[str] = set()
    for qid, answer, _ in rows.answered:
        if qid in predictions:
            repeated.add(qid)
        else:
            predictions[qid] = answer
    asked = predictions.keys() | rows.rejected_ids
    subset = SquadDataset(dataset.version, tuple(ex for ex in dataset.examples if ex.id in asked))
    by_type: dict[str, EvalResult] = {}
    for kind in QUESTION_TYPES:
        examples = tuple(ex for ex in subset.examples if question_type(ex.question) == kind)
        if examples:
            by_type[kind] = evaluate(SquadDataset(dataset.version, examples), predictions)
    gold = {ex.id: ex for ex in subset.examples}
    v2 = dataset.version.startswith("2")
    scores = [score for _, _, score in rows.answered]
    correct = [is_correct(answer, gold[qid], v2) for qid, answer, _ in rows.answered]
    return GoldFigures(
        overall=evaluate(subset, predictions),
        by_type=by_type,
        job_rows=job_rows,
        gold_rows=rows.rows,
        questions=len(subset.examples),
        gold_total=len(dataset.examples),
        repeated=len(repeated),
        scores=scores,
        correct=correct,
        ece=expected_calibration_error(scores, correct),
    )


def coverage_line(gold: GoldFigures, data_name: str) -> str:
    """The sentence that says which questions were scored: the job's, never the whole gold file."""
    outside = gold.job_rows - gold.gold_rows
    other = gold.gold_total - gold.questions
    text = (
        f"{gold.gold_rows:,} of the job's {gold.job_rows:,} rows have gold answers in {data_name}: "
        f"EM / F1 are over those {count(gold.questions, 'question')} only. Not scored: "
        f"{count(outside, 'row')} of the job not in the gold data, and the gold file's "
        f"{count(other, 'question')} the job was not given."
    )
    if gold.repeated:
        text += f" {count(gold.repeated, 'gold id')} answered more than once: the first answer is scored."
    return text


def gold_section(gold: GoldFigures, data_name: str, figures: FigureFolder) -> Html:
    """The "against gold answers" section: coverage, EM / F1 by question type, reliability."""
    version = gold.overall.version
    rule = "score 0 (the official v1.1 rule)" if version == "1.1" else "are skipped (the official v2.0 rule)"
    parts: list[Html] = [
        tag("p", coverage_line(gold, data_name), id="gold-coverage"),
    ]
    if not gold.questions:
        parts.append(note("None of the job's rows is a gold question: nothing to score.", "warn"))
        return section("gold", f"Against gold answers (SQuAD v{version})", parts)
    rejected = gold.overall.missing
    parts.append(note(f"{count(rejected, 'gold question')} the job rejected or did not answer {rule}."))
    rows = [("all", gold.overall), *gold.by_type.items()]
    parts.append(
        table(
            ["questions", "n", "EM", "F1"],
            ([name, r.total, f"{r.exact:.2f}", f"{r.f1:.2f}"] for name, r in rows),
            id="gold-scores",
        )
    )
    bins = reliability_bins(gold.scores, gold.correct)
    parts.append(tag("h3", f"Reliability (ECE {gold.ece:.4f}, {len(gold.scores):,} answered rows)"))
    parts.append(
        table(
            ["score bin", "rows", "mean score", "exact-match rate"],
            ([f"{b.lower:.1f}-{b.upper:.1f}", b.count, b.mean_score, b.accuracy] for b in bins),
            id="reliability-table",
        )
    )
    title = f"score vs. exact match, ECE {gold.ece:.4f}"
    image = (figures.draw("reliability", title, reliability_plot(bins)), "reliability diagram")
    parts.append(figure_grid([image]))
    return section("gold", f"Against gold answers (SQuAD v{version})", parts)
