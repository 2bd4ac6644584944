"""`docqa report`: a self-contained HTML run report (`DIR/report.html` + `DIR/report/*.png`).

Reads the output layout (`answers/*.parquet`, `rejections/*.parquet`, `_run.json`), so it works for
`docqa predict`, `run` and `spark` alike, and for local or fsspec output folders. The page, top to bottom:
summary numbers; sample answers marked in their context; the lowest-confidence answers; a few rows of each
rejection reason; answer rates per `question_id` (only when the answers have that column); the figures in
a grid; with a SQuAD file of gold answers, EM / F1 of the job's own questions overall and by question type
and a reliability diagram; the run's details. Tables are streamed once (`report_scan`); contexts of the
shown answers are looked up by id (`report_context`); every value from the data is escaped
(`report_html.esc`); the page holds no script and loads nothing from the network.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from qa_core.errors import InputError
from qa_core.evaluation.squad import load_squad
from qa_core.io.schema import ANSWERS_DIR, COMPLETED_FILE, REPORT_FILE, RUN_INFO_FILE
from qa_core.io.storage import to_url, url_to_fs
from qa_core.tools.report_context import TableSource, lookup_pair_texts, lookup_texts
from qa_core.tools.report_figures import FigureFolder, bars, stairs
from qa_core.tools.report_gold import GoldFigures, gold_figures, gold_section, question_type
from qa_core.tools.report_html import (
    Html,
    count,
    figure_grid,
    key_value_table,
    note,
    page,
    section,
    stat_tiles,
    tag,
)
from qa_core.tools.report_scan import (
    MAX_WORDS,
    SCORE_BINS,
    AnswerStats,
    OutputFileSystem,
    Scan,
    scan_outputs,
)
from qa_core.tools.report_sections import (
    lowest_section,
    question_rates_section,
    rejections_section,
    samples_section,
)

logger = logging.getLogger(__name__)

__all__ = ["question_type", "try_write_report", "write_report"]


def _windows_per_row(counts: dict[str, Any]) -> float | None:
    """Mean windows per featurized row: windows / (answered + MODEL_ERROR rows)."""
    model_errors = (counts.get("rejected_by_reason") or {}).get("MODEL_ERROR", 0)
    featurized = (counts.get("answered") or 0) + model_errors
    windows = counts.get("windows")
    return windows / featurized if windows is not None and featurized else None


def _summary(info: dict[str, Any], stats: AnswerStats, gold: GoldFigures | None, finished: bool) -> Html:
    """The numbers a reader looks at first, as tiles."""
    counts, timings = info.get("counts", {}), info.get("timings", {})
    rows = stats.rows + stats.rejected
    tiles: list[tuple[str, str, object]] = [
        ("stat-rows", "rows in the outputs", rows),
        ("stat-answered", "answered with a span", stats.rows - stats.no_answer),
        (
            "stat-no-answer",
            "no-answer rate (of answered)",
            stats.no_answer / stats.rows if stats.rows else None,
        ),
        ("stat-rejected", "rejected", stats.rejected),
    ]
    if gold is not None and gold.questions:
        tiles += [
            ("stat-em", f"EM, the job's {gold.questions:,} gold questions", f"{gold.overall.exact:.2f}"),
            ("stat-f1", f"F1, the job's {gold.questions:,} gold questions", f"{gold.overall.f1:.2f}"),
        ]
    tiles += [
        ("stat-rows-per-second", "rows/s", timings.get("rows_per_second")),
        ("stat-wall", "wall seconds", timings.get("wall_seconds")),
    ]
    parts: list[Html] = [stat_tiles(tiles)]
    if not finished:
        parts.append(note(f"No {COMPLETED_FILE} marker: this run did not finish.", "warn"))
    if counts.get("rows_read") is not None and counts["rows_read"] != rows:
        parts.append(note(f"_run.json counts {counts['rows_read']:,} rows read; the tables hold {rows:,}."))
    if gold is not None:
        parts.append(
            note(f"Gold answers: {gold.gold_rows:,} of the job's {gold.job_rows:,} rows (see below).")
        )
    return section("summary", "Summary", parts)


def _figures(info: dict[str, Any], stats: AnswerStats, figures: FigureFolder) -> Html:
    """The run's figures, drawn into the report folder and laid out in a grid."""
    counts = info.get("counts", {})
    score_edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    length_edges = np.arange(0.5, MAX_WORDS + 1.0)
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
                f"answer length in words (last bar: {MAX_WORDS}+)",
                lambda ax: stairs(ax, stats.length_counts, length_edges, "words"),
            ),
            "answer length (non-empty answers)",
        ),
    ]
    outcome = {
        "answer": stats.rows - stats.no_answer,
        "no answer": stats.no_answer,
        "rejected": stats.rejected,
    }
    images.append(
        (figures.draw("outcomes", "rows by outcome", lambda ax: bars(ax, outcome)), "rows by outcome")
    )
    if stats.rejected_by_reason:
        reasons = stats.rejected_by_reason
        drawn = figures.draw("rejections", "rejections by reason", lambda ax: bars(ax, reasons))
        images.append((drawn, "rejections by reason"))
    histogram = counts.get("windows_per_row")  # optional per-row histogram {n_windows: rows}
    if isinstance(histogram, dict) and histogram:
        hist = {str(k): int(v) for k, v in sorted(histogram.items(), key=lambda kv: int(kv[0]))}
        drawn = figures.draw("windows", "rows by windows per row", lambda ax: bars(ax, hist))
        images.append((drawn, "windows per row"))
    real, padded = counts.get("real_tokens"), counts.get("padded_tokens")
    if real and padded:
        tokens = {"real": int(real), "padding": int(padded) - int(real)}
        title = f"padding efficiency {real / padded:.1%}"
        images.append(
            (figures.draw("tokens", title, lambda ax: bars(ax, tokens, "tokens")), "real vs. padding tokens")
        )
    return section("figures", "Figures", [figure_grid(images)])


def _run_details(info: dict[str, Any], stats: AnswerStats) -> Html:
    """Engine, model and every counter of `_run.json` the report knows."""
    counts = info.get("counts", {})
    timings = info.get("timings", {})
    model = info.get("model", {})
    rows: list[tuple[str, object]] = [
        ("engine", info.get("engine")),
        ("model", f"{model.get('id')} ({model.get('revision')})"),
        ("score temperature", info.get("config", {}).get("decode", {}).get("temperature")),
        ("rows read", counts.get("rows_read")),
        ("answered", counts.get("answered")),
        ("no-answer rate (of answered)", stats.no_answer / stats.rows if stats.rows else None),
        ("rejected", counts.get("rejected")),
        *((f"rejected {reason}", n) for reason, n in stats.rejected_by_reason.items()),
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
        rows += [
            ("start-up seconds (model load, output prepared)", timings["startup_seconds"]),
            ("rows/s after start-up", timings.get("answer_rows_per_second")),
        ]
    return section("run", "Run details", [key_value_table(rows, id="run-table")])


def _context_sources(
    info: dict[str, Any], scan: Scan, fs: OutputFileSystem, root: str, protocol: str
) -> list[TableSource]:
    """Where the shown answers' contexts can be read: the answers themselves, then the job's input."""
    columns = info.get("config", {}).get("input", {})
    id_column = str(columns.get("id_column", "id"))
    question, context = (
        str(columns.get("question_column", "question")),
        str(columns.get("context_column", "context")),
    )
    sources = []
    if context in scan.answer_columns:
        files = tuple(to_url(protocol, f) for f in sorted(fs.glob(f"{root}/{ANSWERS_DIR}/*.parquet")))
        sources.append(
            TableSource("the answers table (context passed through)", files, "id", question, context)
        )
    inputs = tuple(str(f) for f in info.get("inputs") or ())
    if inputs:
        name = f"the job's input ({count(len(inputs), 'file')} named in {RUN_INFO_FILE})"
        sources.append(TableSource(name, inputs, id_column, question, context))
    return sources


def _pair_keys(info: dict[str, Any]) -> tuple[str, str] | None:
    """A two-table job's doc_id and question_id columns (`_run.json`), or None for one table."""
    if "two_table" not in info:
        return None
    columns = info.get("config", {}).get("input", {})
    return str(columns.get("doc_id_column", "doc_id")), str(columns.get("question_id_column", "question_id"))


def _two_table_sources(info: dict[str, Any]) -> tuple[TableSource, TableSource] | None:
    """A two-table job's documents and questions, searched by their keys; None for one table."""
    keys = _pair_keys(info)
    if keys is None:
        return None
    columns = info.get("config", {}).get("input", {})
    question, context = (
        str(columns.get("question_column", "question")),
        str(columns.get("context_column", "context")),
    )
    files = info["two_table"].get("files", {})
    documents = tuple(str(f) for f in files.get("documents", ()))
    questions = tuple(str(f) for f in files.get("questions", ()))
    # Each table is searched for one text: the other text's column is named as absent ("").
    return (
        TableSource(f"the documents ({count(len(documents), 'file')})", documents, keys[0], "", context),
        TableSource(f"the questions ({count(len(questions), 'file')})", questions, keys[1], question, ""),
    )


def write_report(output_dir: str, data: str | None = None) -> Path:
    """Writes `output_dir/report.html` and its figures under `output_dir/report/`.

    Args:
        output_dir: A docqa output folder (local or fsspec URL) holding `_run.json`.
        data: A SQuAD file with gold answers: adds EM / F1 and reliability over the job's questions
            that are in it (never over the file's other questions), and the contexts of answers that
            neither the answers table nor the job's input give.

    Returns:
        The path of `report.html` (as a path within the output folder's file system).

    Raises:
        InputError: When the folder holds no `_run.json` (not a docqa output).
    """
    fs, root, protocol = url_to_fs(output_dir)
    root = root.rstrip("/")
    try:
        with fs.open(f"{root}/{RUN_INFO_FILE}", "r") as handle:
            info = json.load(handle)
    except (OSError, ValueError) as err:
        raise InputError(
            f"{output_dir} is not a docqa output folder (cannot read {RUN_INFO_FILE}: {err})"
        ) from err
    dataset = load_squad(data) if data is not None else None
    gold_index = {ex.id: ex for ex in dataset.examples} if dataset is not None else None
    scan = scan_outputs(fs, root, gold_index.keys() if gold_index is not None else None, _pair_keys(info))
    gold = None
    if dataset is not None and scan.gold is not None:
        gold = gold_figures(dataset, scan.gold, scan.stats.rows + scan.stats.rejected)
    two_table = _two_table_sources(info)
    if two_table is not None:
        pairs = [(row.id, row.keys) for row in (*scan.sample, *scan.lowest)]
        lookup = lookup_pair_texts(pairs, *two_table)
    else:
        shown = [row.id for row in (*scan.sample, *scan.lowest)]
        lookup = lookup_texts(shown, _context_sources(info, scan, fs, root, protocol), gold_index)
    figures = FigureFolder(fs, root)
    parts: list[Html] = [tag("h1", f"docqa run report: {output_dir}")]
    parts.append(_summary(info, scan.stats, gold, fs.exists(f"{root}/{COMPLETED_FILE}")))
    if gold is not None and data is not None:
        parts.append(gold_section(gold, Path(data).name, figures))
    parts += [samples_section(scan, lookup), lowest_section(scan, lookup), rejections_section(scan)]
    if scan.question_rates is not None:
        parts.append(question_rates_section(scan.question_rates))
    parts += [_figures(info, scan.stats, figures), _run_details(info, scan.stats)]
    with fs.open(f"{root}/{REPORT_FILE}", "w", encoding="utf-8") as handle:
        handle.write(page("docqa report", parts))
    logger.info("wrote %s/%s", output_dir.rstrip("/"), REPORT_FILE)
    return Path(root) / REPORT_FILE


def try_write_report(output_dir: str, data: str | None = None) -> Path | None:
    """`write_report` for the end of a finished job: a failure is logged, never raised."""
    try:
        return write_report(output_dir, data)
    except Exception as err:  # the run itself is complete; a broken report must not fail it
        logger.warning("could not write the run report of %s: %s", output_dir, err)
        return None
