"""`docqa report`'s reviewer parts on a hand-built job: escaping, contexts and their fallbacks, the bounded
streaming of the tables, and figures whose tick labels do not overlap."""

from __future__ import annotations

import html
import itertools
import re
import shutil
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qa_core.io.schema import answer_schema, rejection_schema
from qa_core.tools.report import write_report
from qa_core.tools.report_figures import bars, render, short_count, stairs
from qa_core.tools.report_html import esc, highlight
from qa_core.tools.report_scan import EXAMPLES_PER_REASON, LOWEST_ROWS, SAMPLE_ROWS, scan_outputs
from tests.report_jobs import HOSTILE, IMG, NOTE_COLUMN, SCRIPT, write_hostile_job

PARTS = ('id="summary"', 'id="gold"', 'id="gold-scores"', 'id="samples"', 'id="lowest"', 'id="rejections"')


def test_every_piece_of_input_text_is_escaped(tmp_path: Path) -> None:
    job = write_hostile_job(tmp_path)
    source = write_report(str(job.output), str(job.gold)).read_text(encoding="utf-8")
    for part in (*PARTS, 'id="question-rates"', 'id="figures"', 'class="sample"', "<mark>"):
        assert part in source, part
    # No tag, attribute or entity of the data is live: each hostile string appears only escaped.
    for raw in ("<script", "<img src=x", "<pwned", "<b>note", "<b>c"):
        assert raw not in source, raw
    for hostile in (*HOSTILE, NOTE_COLUMN):
        assert html.escape(hostile, quote=True) in source, hostile
    assert f"<mark>{html.escape(SCRIPT)}</mark>" in source and f"<mark>{html.escape(IMG)}</mark>" in source
    assert source.count('class="rejection-example"') == 2 and "MISSING_ID" in source
    assert "Contexts: 12 contexts from the job&#x27;s input (1 file named in _run.json)" in source


def test_esc_is_the_one_rule() -> None:
    assert esc("<a href=\"x\">'&'</a>") == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;&#x27;&lt;/a&gt;"
    assert esc(None) == "n/a" and esc(1234567) == "1,234,567" and esc(float("nan")) == "n/a"
    marked = highlight("a <b> c", 2, 5, radius=1)
    assert marked == '<p class="context">\u2026 <mark>&lt;b&gt;</mark> \u2026</p>'
    assert esc(marked) == marked  # built markup is not escaped twice


def test_no_question_id_column_means_no_rates_section(tmp_path: Path) -> None:
    job = write_hostile_job(tmp_path)
    answers = job.output / "answers" / "part-00000.parquet"
    pq.write_table(pq.read_table(answers).drop_columns(["question_id"]), answers)
    source = write_report(str(job.output)).read_text(encoding="utf-8")
    assert 'id="question-rates"' not in source and 'id="gold"' not in source
    assert 'id="samples"' in source and "<mark>" in source


def test_rates_per_question_id(tmp_path: Path) -> None:
    job = write_hostile_job(tmp_path, n_answers=12)
    source = write_report(str(job.output)).read_text(encoding="utf-8")
    table = re.search(r'<table id="rates-table">(.*?)</table>', source, re.S)
    assert table is not None
    # 15 rows over 3 question ids (i % 3): 5 rows each; row 11 has no answer, rows 12-14 are rejected.
    cells = re.findall(r"<tr><td>qid(\d)-[^<]*</td>((?:<td>[^<]*</td>)+)</tr>", table[1])
    counts = {qid: re.findall(r"<td>([^<]*)</td>", rest) for qid, rest in cells}
    assert counts == {
        "2": ["5", "3", "1", "1", "0.600"],
        "0": ["5", "4", "0", "1", "0.800"],
        "1": ["5", "4", "0", "1", "0.800"],
    }


def test_contexts_fall_back_to_the_gold_data_then_to_none(tmp_path: Path) -> None:
    job = write_hostile_job(tmp_path)
    job.input.unlink()  # the job's input moved away after the run
    with_gold = write_report(str(job.output), str(job.gold)).read_text(encoding="utf-8")
    assert (
        "could not read the job&#x27;s input" in with_gold and "12 contexts from the gold data" in with_gold
    )
    assert "<mark>" in with_gold
    without = write_report(str(job.output)).read_text(encoding="utf-8")
    assert "<mark>" not in without and "contexts were found nowhere" in without
    assert "context not found" in without


def test_a_context_that_does_not_hold_the_answer_is_not_highlighted(tmp_path: Path) -> None:
    job = write_hostile_job(tmp_path)
    table = pq.read_table(job.input)
    changed = pa.array([f"changed {c}" for c in table.column("context").to_pylist()])
    pq.write_table(table.set_column(2, "context", changed), job.input)
    source = write_report(str(job.output)).read_text(encoding="utf-8")
    assert "<mark>" not in source and "does not hold the answer" in source


def _answers(n: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": f"r{seed}-{i}", "answer": "x", "start": 0, "end": 1, "score": float(s), "logit_score": 0.0}
        | {"no_answer": False, "null_score_diff": None}
        for i, s in enumerate(rng.random(n))
    ]


def test_the_scan_keeps_only_what_the_page_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import qa_core.tools.report_scan as scan_module

    monkeypatch.setattr(scan_module, "BATCH_ROWS", 97)  # many batches per file
    monkeypatch.setattr(scan_module, "REJECTION_BATCH_ROWS", 5)
    (tmp_path / "answers").mkdir()
    (tmp_path / "rejections").mkdir()
    parts = [_answers(1000, seed) for seed in range(3)]
    for k, rows in enumerate(parts):
        pq.write_table(
            pa.Table.from_pylist(rows, schema=answer_schema(pa.string())), tmp_path / f"answers/p{k}.parquet"
        )
    fields = [pa.field("id", pa.string()), pa.field("context", pa.string())]
    rejected = [{"id": f"x{i}", "reason": f"R{i % 4}", "detail": "d", "context": str(i)} for i in range(40)]
    table = pa.Table.from_pylist(rejected, schema=rejection_schema(pa.string(), fields))
    pq.write_table(table, tmp_path / "rejections/p0.parquet")
    fs, root = fsspec.core.url_to_fs(str(tmp_path))
    scan = scan_outputs(fs, root)
    every = [row for rows in parts for row in rows]
    lowest = sorted(every, key=lambda r: float(str(r["score"])))[:LOWEST_ROWS]
    assert [r.id for r in scan.lowest] == [r["id"] for r in lowest]
    assert len(scan.sample) == SAMPLE_ROWS and scan.stats.rows == 3000
    assert scan.stats.rejected_by_reason == {f"R{k}": 10 for k in range(4)}
    assert {k: [r["context"] for r in v] for k, v in scan.rejection_examples.items()} == {
        f"R{k}": [str(k + 4 * j) for j in range(EXAMPLES_PER_REASON)] for k in range(4)
    }
    # The sample is chosen by id hash: the same rows whatever the order of the parts.
    shutil.move(tmp_path / "answers/p0.parquet", tmp_path / "answers/p9.parquet")
    assert [r.id for r in scan_outputs(fs, root).sample] == [r.id for r in scan.sample]


def _tick_gap(figure: object, axis_name: str) -> float:
    """The smallest gap in pixels between neighbouring tick labels of an axis (negative: overlap)."""
    axes = figure.axes[0]  # type: ignore[attr-defined]
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    axis = axes.xaxis if axis_name == "x" else axes.yaxis
    boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
    spans = sorted((b.x0, b.x1) if axis_name == "x" else (b.y0, b.y1) for b in boxes)
    return min((b[0] - a[1] for a, b in itertools.pairwise(spans)), default=float("inf"))


@pytest.mark.parametrize("scale", [1, 1_000, 298_797, 40_000_000])
def test_tick_labels_of_counts_keep_apart(scale: int) -> None:
    """Before: 298,797 tokens put '100000150000200000' on the axis, labels 1.5 px apart."""
    tokens = {"real": scale, "padding": max(1, scale // 30)}
    assert _tick_gap(render("tokens", lambda ax: bars(ax, tokens, "tokens")), "x") >= 8
    counts = tuple(int(scale * v) for v in np.linspace(0.1, 1.0, 20))
    histogram = render("scores", lambda ax: stairs(ax, counts, np.linspace(0, 1, 21), "score"))
    assert _tick_gap(histogram, "x") >= 8 and _tick_gap(histogram, "y") >= 4


def test_short_count() -> None:
    assert [short_count(v) for v in (0, 950, 1000, 12_500, 350_000, 1_200_000)] == [
        "0",
        "950",
        "1k",
        "12.5k",
        "350k",
        "1.2M",
    ]
