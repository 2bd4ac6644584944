"""`docqa report`: a self-contained HTML run report (`DIR/report.html` + `DIR/report/*.png`).

Reads only the output layout (`answers/*.parquet`, `rejections/*.parquet`, `_run.json`), so it works for
`docqa predict` and `docqa run` alike, and for local or fsspec output folders. With a SQuAD file of gold
answers it adds exact match / F1 overall and by question type, and a reliability diagram of score vs. exact
match. The figures are drawn by `qa_core.tools.report_figures` (Agg canvas, no pyplot).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qa_core.errors import InputError
from qa_core.evaluation.evaluate import EvalResult, evaluate, load_predictions
from qa_core.evaluation.reliability import expected_calibration_error, is_correct, reliability_bins
from qa_core.evaluation.squad import SquadDataset, load_squad
from qa_core.io.schema import (
    ANSWERS_DIR,
    COMPLETED_FILE,
    REJECTIONS_DIR,
    REPORT_FILE,
    RUN_INFO_FILE,
)
from qa_core.tools.report_figures import FigureFolder, bars, img, reliability_plot, stairs

logger = logging.getLogger(__name__)

QUESTION_TYPES = ("what", "who", "when", "where", "why", "which", "how", "other")
_WORD = re.compile(r"[a-z]+")
SCORE_BINS = 20
MAX_WORDS = 30  # longer answers share the last bar of the answer-length figure


def question_type(question: str) -> str:
    """The first wh-word of a question (what/who/when/where/why/which/how), else "other"."""
    return next((w for w in _WORD.findall(question.lower()) if w in QUESTION_TYPES[:-1]), "other")


@dataclass(frozen=True)
class GoldFigures:
    """Scores against gold answers.

    Attributes:
        overall: The official EM / F1 over every question of the file.
        by_type: EM / F1 of the questions of each type (types with no question are left out).
        scores: Score of each answered row whose id is in the file.
        correct: Whether that row's answer is an exact match.
        ece: Expected calibration error of `scores` (10 equal-width bins).
    """

    overall: EvalResult
    by_type: dict[str, EvalResult]
    scores: list[float]
    correct: list[bool]
    ece: float


def _batches(fs: Any, root: str, folder: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The folder's Parquet files, one record batch at a time (memory bounded by a batch)."""
    for file in sorted(fs.glob(f"{root}/{folder}/*.parquet")):
        with fs.open(file, "rb") as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=65_536, columns=columns)


@dataclass(frozen=True)
class AnswerStats:
    """Histograms of the answers table, accumulated batch by batch.

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


def answer_stats(fs: Any, root: str) -> AnswerStats:
    """Streams `answers/` and `rejections/` of an output folder into `AnswerStats`."""
    rows = no_answer = 0
    scores = np.zeros(SCORE_BINS, dtype=np.int64)
    lengths = np.zeros(MAX_WORDS, dtype=np.int64)
    for batch in _batches(fs, root, ANSWERS_DIR, ["answer", "score", "no_answer"]):
        null = batch.column("no_answer")
        rows += batch.num_rows
        no_answer += int(pc.sum(null).as_py() or 0)
        score = batch.column("score").to_numpy(zero_copy_only=False)
        bins = np.clip((score * SCORE_BINS).astype(np.int64), 0, SCORE_BINS - 1)
        scores += np.bincount(bins, minlength=SCORE_BINS)
        spans = pc.filter(batch.column("answer"), pc.invert(null))
        words = pc.list_value_length(pc.utf8_split_whitespace(spans)).to_numpy(zero_copy_only=False)
        words = np.clip(words[words > 0], 1, MAX_WORDS) - 1
        lengths += np.bincount(words.astype(np.int64), minlength=MAX_WORDS)
    reasons: Counter[str] = Counter()
    for batch in _batches(fs, root, REJECTIONS_DIR, ["reason"]):
        reasons.update(batch.column("reason").to_pylist())
    return AnswerStats(
        rows, no_answer, tuple(scores.tolist()), tuple(lengths.tolist()), dict(sorted(reasons.items()))
    )


def gold_figures(dataset: SquadDataset, output_dir: str) -> GoldFigures:
    """EM / F1 overall and by question type, and per-row (score, exact match) for the answered rows.

    Reads the answers' id, answer and score columns whole (evaluation-sized data).
    """
    predictions = load_predictions(output_dir)
    fs, root = fsspec.core.url_to_fs(output_dir)
    batches = list(_batches(fs, root.rstrip("/"), ANSWERS_DIR, ["id", "answer", "score"]))
    schema = pa.schema([("id", pa.string()), ("answer", pa.string()), ("score", pa.float64())])
    answers = pa.Table.from_batches(batches) if batches else schema.empty_table()
    v2 = dataset.version.startswith("2")
    by_type: dict[str, EvalResult] = {}
    for kind in QUESTION_TYPES:
        subset = tuple(ex for ex in dataset.examples if question_type(ex.question) == kind)
        if subset:
            by_type[kind] = evaluate(SquadDataset(dataset.version, subset), predictions)
    examples = {ex.id: ex for ex in dataset.examples}
    scores: list[float] = []
    correct: list[bool] = []
    for qid, text, score in zip(
        answers.column("id").to_pylist(),
        answers.column("answer").to_pylist(),
        answers.column("score").to_pylist(),
        strict=True,
    ):
        example = examples.get(str(qid))
        if example is not None:
            scores.append(float(score))
            correct.append(is_correct(text or "", example, v2))
    return GoldFigures(
        overall=evaluate(dataset, predictions),
        by_type=by_type,
        scores=scores,
        correct=correct,
        ece=expected_calibration_error(scores, correct),
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _windows_per_row(counts: dict[str, Any]) -> float | None:
    """Mean windows per featurized row: windows / (answered + MODEL_ERROR rows)."""
    model_errors = (counts.get("rejected_by_reason") or {}).get("MODEL_ERROR", 0)
    featurized = (counts.get("answered") or 0) + model_errors
    windows = counts.get("windows")
    return windows / featurized if windows is not None and featurized else None


def _run_section(info: dict[str, Any], stats: AnswerStats, figures: FigureFolder) -> list[str]:
    counts = info.get("counts", {})
    timings = info.get("timings", {})
    model = info.get("model", {})
    rejected = counts.get("rejected")
    summary = [
        ("engine", info.get("engine")),
        ("model", f"{model.get('id')} ({model.get('revision')})"),
        ("score temperature", info.get("config", {}).get("decode", {}).get("temperature")),
        ("rows read", counts.get("rows_read")),
        ("answered", counts.get("answered")),
        ("no-answer rate (of answered)", stats.no_answer / stats.rows if stats.rows else None),
        ("rejected", rejected),
        ("questions cut to fit a window", counts.get("questions_cut")),
        ("windows", counts.get("windows")),
        ("windows per row (mean)", _windows_per_row(counts)),
        ("real tokens", counts.get("real_tokens")),
        ("padded tokens", counts.get("padded_tokens")),
        ("padding efficiency", counts.get("padding_efficiency")),
        ("wall seconds", timings.get("wall_seconds")),
        ("rows/s", timings.get("rows_per_second")),
    ]
    if "startup_seconds" in timings:  # `docqa predict` only: Beam's runners load models on their workers
        summary += [
            ("start-up seconds (model load, output prepared)", timings["startup_seconds"]),
            ("rows/s after start-up", timings.get("answer_rows_per_second")),
        ]
    parts = ["<h2>Run</h2>", _table(summary)]
    score_edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    images = [
        (
            figures.draw(
                "score",
                f"score of {stats.rows:,} answers",
                lambda ax: stairs(ax, stats.score_counts, score_edges, "score"),
            ),
            "score distribution",
        ),
        (
            figures.draw(
                "answer_length",
                f"answer length (non-empty answers; last bar: {MAX_WORDS}+)",
                lambda ax: stairs(ax, stats.length_counts, np.arange(0.5, MAX_WORDS + 1.0), "words"),
            ),
            "answer length",
        ),
    ]
    outcome = {
        "answer": stats.rows - stats.no_answer,
        "no answer": stats.no_answer,
        "rejected": rejected if rejected is not None else sum(stats.rejected_by_reason.values()),
    }
    images.append(
        (figures.draw("outcomes", "rows by outcome", lambda ax: bars(ax, outcome)), "no-answer rate")
    )
    if stats.rejected_by_reason:
        reasons = stats.rejected_by_reason
        parts.append(_table([(f"rejected {reason}", n) for reason, n in reasons.items()]))
        images.append(
            (figures.draw("rejections", "rejections by reason", lambda ax: bars(ax, reasons)), "rejections")
        )
    else:
        parts.append("<p>No rejected rows.</p>")
    histogram = counts.get("windows_per_row")  # optional per-row histogram {n_windows: rows}
    if isinstance(histogram, dict) and histogram:
        hist = {str(k): int(v) for k, v in sorted(histogram.items(), key=lambda kv: int(kv[0]))}
        images.append(
            (figures.draw("windows", "rows by windows per row", lambda ax: bars(ax, hist)), "windows")
        )
    real, padded = counts.get("real_tokens"), counts.get("padded_tokens")
    if real and padded:
        tokens = {"real": int(real), "padding": int(padded) - int(real)}
        title = f"padding efficiency {real / padded:.1%}"
        images.append((figures.draw("tokens", title, lambda ax: bars(ax, tokens, "tokens")), "padding"))
    parts += [img(path, alt) for path, alt in images]
    return parts


def _gold_section(gold: GoldFigures, figures: FigureFolder) -> list[str]:
    head = "<tr><th>questions</th><th>n</th><th>EM</th><th>F1</th></tr>"
    rows = [("all", gold.overall), *gold.by_type.items()]
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{r.total}</td><td>{r.exact:.2f}</td><td>{r.f1:.2f}</td></tr>"
        for name, r in rows
    )
    bins = reliability_bins(gold.scores, gold.correct)

    bin_rows = "".join(
        f"<tr><td>{b.lower:.1f}-{b.upper:.1f}</td><td>{b.count}</td>"
        f"<td>{_fmt(b.mean_score)}</td><td>{_fmt(b.accuracy)}</td></tr>"
        for b in bins
    )
    return [
        f"<h2>Against gold answers (SQuAD v{gold.overall.version})</h2>",
        f"<p>Missing predictions (rejected or absent): {gold.overall.missing}</p>",
        f"<table>{head}{body}</table>",
        f"<h3>Reliability (ECE {gold.ece:.4f}, {len(gold.scores):,} answered rows)</h3>",
        img(
            figures.draw("reliability", f"score vs. exact match, ECE {gold.ece:.4f}", reliability_plot(bins)),
            "reliability diagram",
        ),
        "<table><tr><th>score bin</th><th>rows</th><th>mean score</th><th>exact-match rate</th></tr>"
        f"{bin_rows}</table>",
    ]


_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
    "figure{display:inline-block;margin:.5em}.warn{color:#a00}"
)


def write_report(output_dir: str, data: str | None = None) -> Path:
    """Writes `output_dir/report.html` and its figures under `output_dir/report/`.

    Args:
        output_dir: A docqa output folder (local or fsspec URL) holding `_run.json`.
        data: A SQuAD file with gold answers for the same questions; adds EM / F1 and reliability.

    Returns:
        The path of `report.html` (as a path within the output folder's file system).

    Raises:
        InputError: When the folder holds no `_run.json` (not a docqa output).
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    root = root.rstrip("/")
    try:
        with fs.open(f"{root}/{RUN_INFO_FILE}", "r") as handle:
            info = json.load(handle)
    except (OSError, ValueError) as err:
        raise InputError(
            f"{output_dir} is not a docqa output folder (cannot read {RUN_INFO_FILE}: {err})"
        ) from err
    figures = FigureFolder(fs, root)
    parts = [f"<h1>docqa run report: {html.escape(output_dir)}</h1>"]
    if not fs.exists(f"{root}/{COMPLETED_FILE}"):
        parts.append(f'<p class="warn">No {COMPLETED_FILE} marker: this run did not finish.</p>')
    parts += _run_section(info, answer_stats(fs, root), figures)
    if data is not None:
        parts += _gold_section(gold_figures(load_squad(data), output_dir), figures)
    document = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>docqa report</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    with fs.open(f"{root}/{REPORT_FILE}", "w", encoding="utf-8") as handle:
        handle.write(document)
    logger.info("wrote %s/%s", output_dir.rstrip("/"), REPORT_FILE)
    return Path(root) / REPORT_FILE


def try_write_report(output_dir: str, data: str | None = None) -> Path | None:
    """`write_report` for the end of a finished job: a failure is logged, never raised."""
    try:
        return write_report(output_dir, data)
    except Exception as err:  # the run itself is complete; a broken report must not fail it
        logger.warning("could not write the run report of %s: %s", output_dir, err)
        return None
