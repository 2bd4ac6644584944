"""`docqa report`: the HTML renders, every image is a PNG in the folder, and the run's numbers appear."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from docqa.cli import main
from qa_core.tools.report import question_type, write_report
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
