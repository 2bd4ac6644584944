"""`docqa report` in a real headless browser: the parts render and no injected script runs.

Debian's chromium loads the report of a job whose every piece of input text is hostile HTML
(`tests/report_jobs.py`) and dumps the DOM after its scripts and image errors would have run
(`--virtual-time-budget`). A control page holding the same strings unescaped is loaded the same way first,
so the test proves that this browser, with these flags, would show a script that ran. Skipped only when
no chromium binary is found (`apt-get install chromium`; CI installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from qa_core.tools.report import write_report
from tests.report_jobs import HOSTILE, IMG, NOTE_COLUMN, SCRIPT, write_hostile_job

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 60  # a browser that hangs fails the test instead of the suite


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


BROWSER = _browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason=f"no headless browser found ({', '.join(BROWSERS)})")


class _Dom(HTMLParser):
    """The dumped DOM's elements (tag, attributes), ids, classes, text, title and `<mark>` texts."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.marks: list[str] = []
        self.title = ""
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._open.append(tag)
        if tag == "mark":
            self.marks.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if "title" in self._open:
            self.title += data
        if "mark" in self._open:
            self.marks[-1] += data

    def ids(self) -> set[str]:
        return {str(attrs["id"]) for _, attrs in self.elements if attrs.get("id")}

    def count(self, css_class: str) -> int:
        return sum(css_class in str(attrs.get("class") or "").split() for _, attrs in self.elements)

    def tags(self) -> set[str]:
        return {tag for tag, _ in self.elements}


def _dump(page: Path, profile: Path) -> _Dom:
    """The DOM chromium holds after loading `page` and running what it would run."""
    assert BROWSER is not None
    command = [
        BROWSER,
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",  # CI containers run as root, where chromium's sandbox cannot start
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",  # lets image errors and their handlers fire before the dump
        "--dump-dom",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0 and "</html>" in done.stdout, done.stderr[-2000:]
    dom = _Dom()
    dom.feed(done.stdout)
    return dom


def _ran(dom: _Dom) -> list[str]:
    """The marks an injected script or handler leaves, if any ran."""
    marks = []
    if dom.title == "PWNED":
        marks.append("title changed")
    if any("data-pwned" in attrs for _, attrs in dom.elements):
        marks.append("data-pwned attribute set")
    if "pwned-marker" in dom.tags():
        marks.append("<pwned-marker> element added")
    return marks


def test_the_control_page_shows_a_script_that_ran(tmp_path: Path) -> None:
    """Unescaped, the same strings do run here: the detection below can fail."""
    control = tmp_path / "control.html"
    control.write_text(f"<!doctype html><html><head><title>t</title></head><body>{SCRIPT}{IMG}</body></html>")
    assert set(_ran(_dump(control, tmp_path / "profile"))) == {
        "title changed",
        "data-pwned attribute set",
        "<pwned-marker> element added",
    }


def test_the_report_of_a_hostile_job_renders_and_runs_nothing(tmp_path: Path) -> None:
    job = write_hostile_job(tmp_path)
    dom = _dump(write_report(str(job.output), str(job.gold)), tmp_path / "profile")
    assert _ran(dom) == [] and dom.title == "docqa report"
    # The data's markup became text: no script element, no image but the report's own, no handler.
    assert "script" not in dom.tags() and "pwned-marker" not in dom.tags()
    images = [attrs for tag, attrs in dom.elements if tag == "img"]
    assert images and all(str(a.get("src")).startswith("report/") for a in images)
    assert not [a for _, attrs in dom.elements for a in attrs if a.startswith("on")]
    # Every part of the page is there.
    parts = {
        "summary",
        "stat-em",
        "gold",
        "gold-coverage",
        "gold-scores",
        "samples",
        "lowest",
        "lowest-table",
    }
    parts |= {"rejections", "question-rates", "rates-table", "figures", "run"}
    assert parts <= dom.ids(), parts - dom.ids()
    assert dom.count("sample") == 8 and dom.count("rejection-example") == 2 and dom.count("figure-grid") >= 2
    # The hostile strings are shown as text, the answers marked in their contexts.
    text = "".join(dom.text)
    for hostile in (*HOSTILE, NOTE_COLUMN, f"model {SCRIPT}"):
        assert hostile in text, hostile
    assert SCRIPT in dom.marks and IMG in dom.marks
