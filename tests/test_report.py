"""`docqa report`: the HTML renders, every image is a PNG in the folder, the run's numbers appear, gold
scores cover only the job's questions, and the real engine's hostile rows reach the page as text."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from docqa.cli import main
from qa_core.evaluation.evaluate import evaluate, load_predictions
from qa_core.evaluation.squad import SquadDataset, load_squad
from qa_core.tools.report import question_type, write_report
from tests.report_jobs import HOSTILE, IMG, SCRIPT
from tests.user_commands_data import run_command, write_squad

SMALL_WINDOWS = [
    "--set",
    "featurize.max_seq_len=32",
    "--set",
    "featurize.doc_stride=8",
    "--set",
    "featurize.min_context_tokens=12",
    "--set",
    "featurize.max_question_len=12",
]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("report")
    data = write_squad(tmp / "squad.json", 24)
    table = tmp / "in.parquet"
    assert main(["convert-squad", "--data", str(data), "--output", str(table)]) == 0
    out = tmp / "out"
    argv = ["predict", "--input", str(table), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*argv, "--no-progress", *SMALL_WINDOWS]) == 0
    return out, data


def _parse(report: Path) -> _Page:
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    for src in page.images:
        image_path = report.parent / src
        assert not Path(src).is_absolute() and image_path.is_file(), src
        with Image.open(image_path) as image:
            assert image.format == "PNG" and image.size[0] > 100
            image.verify()
    return page


def test_report_with_gold_answers(run_dir: tuple[Path, Path]) -> None:
    out, data = run_dir
    assert run_command(["report", str(out), "--data", str(data)]) == 0
    page = _parse(out / "report.html")
    text = " ".join(page.text)
    names = {Path(src).name for src in page.images}
    assert {"score.png", "answer_length.png", "outcomes.png", "tokens.png", "reliability.png"} <= names
    info = json.loads((out / "_run.json").read_text())
    counts = info["counts"]
    assert f"{counts['rows_read']:,}" in text and f"{counts['windows']:,}" in text
    eval_out = out.parent / "eval.json"
    assert main(["eval", "--data", str(data), "--predictions", str(out), "--json", str(eval_out)]) == 0
    scores = json.loads(eval_out.read_text())
    assert f"{scores['exact']:.2f}" in text and f"{scores['f1']:.2f}" in text
    assert "ECE" in text and "which" in text and "other" in text
    windows_per_row = counts["windows"] / counts["answered"]
    assert windows_per_row > 1 and f"{windows_per_row:,.3f}" in text


def test_report_without_data_and_with_rejections(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tests.conftest import write_parquet

    rows: list[dict[str, object]] = [
        {"id": "a", "question": "what city?", "context": "the city by the river"},
        {"id": "b", "question": "", "context": "the city"},
        {"id": None, "question": "who?", "context": "the team"},
    ]
    source = write_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*argv, "--no-progress"]) == 0
    assert write_report(str(out)) == out / "report.html"
    page = _parse(out / "report.html")
    assert "rejections.png" in {Path(src).name for src in page.images}
    text = " ".join(page.text)
    assert "reliability" not in text.lower() and "EMPTY_QUESTION" in text and "MISSING_ID" in text
    # An optional per-row histogram in _run.json (counts.windows_per_row) adds its figure.
    info = json.loads((out / "_run.json").read_text())
    info["counts"]["windows_per_row"] = {"1": 1, "2": 0}
    (out / "_run.json").write_text(json.dumps(info))
    names = {Path(src).name for src in _parse(write_report(str(out))).images}
    assert "windows.png" in names
    assert {p.name for p in (out / "report").iterdir()} == names


def test_report_of_a_non_run_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a docqa output folder" in err and "Traceback" not in err


def _gold_row(page_source: str, name: str) -> tuple[int, str, str]:
    """(n, EM, F1) of one row of the report's gold-scores table."""
    table = re.search(r'<table id="gold-scores">(.*?)</table>', page_source, re.S)
    assert table is not None, "no gold-scores table"
    row = re.search(rf"<tr><td>{name}</td><td>([\d,]+)</td><td>([\d.]+)</td><td>([\d.]+)</td></tr>", table[1])
    assert row is not None, f"no {name} row"
    return int(row[1].replace(",", "")), row[2], row[3]


def test_report_scores_only_the_jobs_questions(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A job over 8 of a file's 24 questions (and one row the file lacks) is scored over those 8."""
    data = write_squad(tmp_path / "squad.json", 24)
    full = tmp_path / "full.parquet"
    assert main(["convert-squad", "--data", str(data), "--output", str(full)]) == 0
    rows = pq.read_table(full).slice(4, 8).to_pylist()
    rows.append({**rows[0], "id": "not-in-gold"})
    subset = tmp_path / "subset.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(full)), subset)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(subset), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*argv, "--no-progress", "--no-report", *SMALL_WINDOWS]) == 0
    assert run_command(["report", str(out), "--data", str(data)]) == 0
    source = (out / "report.html").read_text(encoding="utf-8")
    dataset = load_squad(str(data))
    asked = {str(r["id"]) for r in rows}
    predictions = load_predictions(str(out))
    mine = evaluate(SquadDataset("1.1", tuple(e for e in dataset.examples if e.id in asked)), predictions)
    whole = evaluate(dataset, predictions)
    assert mine.total == 8 and whole.total == 24
    assert _gold_row(source, "all") == (8, f"{mine.exact:.2f}", f"{mine.f1:.2f}")
    text = " ".join(_parse(out / "report.html").text)
    assert "8 of the job's 9 rows have gold answers in squad.json" in text
    assert "1 row of the job not in the gold data" in text and "16 questions the job was not given" in text
    # The tiles at the top carry the same numbers.
    assert re.search(rf'id="stat-em"><span class="value">{mine.exact:.2f}<', source)
    if (whole.exact, whole.f1) != (mine.exact, mine.f1):
        assert f"<td>{whole.exact:.2f}</td><td>{whole.f1:.2f}</td>" not in source


def test_real_job_with_hostile_rows_reaches_the_page_as_text(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Ids, questions, contexts, answers, details and pass-through values of hostile rows are escaped."""
    from tests.conftest import write_parquet

    context = f"the city {SCRIPT} by the river {IMG} and the team & \"co\" 'x'"
    rows: list[dict[str, object]] = [
        {"id": f"a{i}{SCRIPT}", "question": f"what city {IMG}?", "context": context, "note": SCRIPT}
        for i in range(4)
    ]
    rows.append({"id": f"b{IMG}", "question": "", "context": context, "note": IMG})
    source = write_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / "out"
    argv = ["predict", "--input", str(source), "--output", str(out), "--model", str(tiny_model_dir)]
    assert main([*argv, "--no-progress", "--set", "input.passthrough_columns=[note]"]) == 0
    page_source = (out / "report.html").read_text(encoding="utf-8")
    for raw in ("<script", "<img src=x", "<pwned", 'onerror="document'):
        assert raw not in page_source, raw
    for hostile in HOSTILE[:2]:
        assert html.escape(hostile, quote=True) in page_source
    text = " ".join(_parse(out / "report.html").text)
    assert "EMPTY_QUESTION" in text and SCRIPT in text and IMG in text


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("What is it?", "what"),
        ("In which year did who win?", "which"),
        ("Name the river.", "other"),
        ("How many?", "how"),
    ],
)
def test_question_type(question: str, kind: str) -> None:
    assert question_type(question) == kind
