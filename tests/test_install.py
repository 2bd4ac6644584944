"""docqa as users install it: a wheel in a fresh venv, and the Dockerfile's file set.

The wheel test builds the wheel from this tree, installs it with its dependencies into a new virtual
environment (torch pinned first, as the setup step does), and runs `docqa predict` and `docqa run` on the
bundled sample from a temporary folder, with the default (bundled) model: nothing of the source tree is
on the path. The Dockerfile test stages exactly the files the Dockerfile's COPY lines take before its
`pip install`, installs them the way the image does (without the extras' dependencies, which the image
downloads), and answers the sample with that installation (the image itself needs a Docker engine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "questions.parquet"
# The CPU build on this machine's disk (Makefile TORCH_SPEC); a plain `torch` would pull a CUDA build.
TORCH_PIN = f"torch=={torch.__version__.split('+')[0]}"
LOCK = ROOT / "requirements-lock.txt"


def _run(
    command: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd, env=env
    )
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def _clean_env(path_first: Path, **extra: str) -> dict[str, str]:
    """The environment of an installed docqa: its bin first on PATH, no source tree, nothing downloaded."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=f"{path_first}{os.pathsep}{env.get('PATH', '')}", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )
    env.update(extra)
    return env


# What a source tree holds beside the package's files: never build from them (a stale build/lib would
# put removed modules in the wheel).
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "out",
    "runs",
    "vendor",
    "__pycache__",
    "*.pyc",
    ".*_cache",
)


def _build_wheel(source: Path, into: Path) -> Path:
    """The wheel of a copy of `source` (pip builds in place, leaving build/ behind)."""
    copy = into / "source"
    shutil.copytree(source, copy, ignore=NOT_SOURCES)
    source = copy
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(into),
            str(source),
        ],
        timeout=300,
    )
    (wheel,) = into.glob("docqa_beam-*.whl")
    return wheel


def _answers(folder: Path) -> dict[str, tuple[str, int, int]]:
    table = pq.read_table(folder / "answers").to_pylist()
    return {row["id"]: (row["answer"], row["start"], row["end"]) for row in table}


def _check_output(folder: Path, rows: int) -> None:
    assert (folder / "COMPLETED").exists()
    counts = json.loads((folder / "_run.json").read_text())["counts"]
    assert counts["rows_read"] == rows == counts["answered"] + counts["rejected"]
    assert counts["answered"] > 0


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel of this tree installed (dependencies from the package index)."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(ROOT, base / "dist")
    venv = base / "venv"
    _run([sys._base_executable, "-m", "venv", str(venv)], timeout=120)  # not this venv's packages
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, TORCH_PIN], timeout=600)
    _run([*pip, "-c", str(LOCK), str(wheel)], timeout=900)  # the tested set (the newest lane: unlocked)
    return venv


def test_the_wheel_holds_the_model_and_answers_from_any_folder(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(SAMPLE, work / "questions.parquet")
    env = _clean_env(installed / "bin", DOCQA_CACHE_DIR=str(tmp_path / "cache"))
    where = _run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import qa_core.config as c; print(c.__file__); print(c.DEFAULT_MODEL)",
        ],
        timeout=60,
        cwd=work,
        env=env,
    ).stdout.split()
    site = str(installed / "lib")
    assert where[0].startswith(site) and where[1].startswith(site), where  # not the source tree
    rows = pq.read_metadata(SAMPLE).num_rows
    docqa = str(installed / "bin" / "docqa")
    _run(
        [docqa, "predict", "--input", "questions.parquet", "--output", "out-predict"],
        timeout=300,
        cwd=work,
        env=env,
    )
    _run(
        [docqa, "run", "--input", "questions.parquet", "--output", "out-run", "--no-progress"],
        timeout=300,
        cwd=work,
        env=env,
    )
    for name in ("out-predict", "out-run"):
        _check_output(work / name, rows)
    assert (work / "out-predict" / "report.html").exists()
    assert _answers(work / "out-predict") == _answers(work / "out-run")


def _dockerfile_copies(dockerfile: Path) -> tuple[list[str], str]:
    """The sources of the COPY lines before the image's `pip install` of the package, and that command."""
    sources: list[str] = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            sources.extend(words[1:-1])
        elif words[:1] == ["RUN"] and re.search(r"pip install\b.*\s'?\.(\[|'|\s|$)", line):
            return sources, line
    raise AssertionError("the Dockerfile installs no '.' package")


def test_the_dockerfile_file_set_installs_and_answers(tmp_path: Path) -> None:
    sources, install = _dockerfile_copies(ROOT / "Dockerfile")
    assert "qa_core" in sources and "pyproject.toml" in sources, sources
    staged = tmp_path / "image"
    staged.mkdir()
    for source in sources:
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, staged / source, ignore=NOT_SOURCES)
        else:
            shutil.copy(path, staged / source)
    # The image's install, without downloading the extras' dependencies: a new venv whose only other
    # packages are this venv's files (a path line, so this venv's editable finder, which would map the
    # source tree's packages, is not active there).
    venv = tmp_path / "venv"
    _run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], timeout=120)
    (site,) = venv.glob("lib/python*/site-packages")
    (here,) = (p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "dependencies.pth").write_text(here + "\n")
    wheel = _build_wheel(staged, tmp_path / "dist")
    _run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        timeout=300,
    )
    assert "[gcp]" in install and "gcp" in (staged / "pyproject.toml").read_text()  # the image's extra
    assert "-c requirements-lock.txt" in install and "requirements-lock.txt" in sources  # through the lock
    work = tmp_path / "work"
    work.mkdir()
    python = str(venv / "bin" / "python")
    env = _clean_env(venv / "bin", DOCQA_CACHE_DIR=str(tmp_path / "cache"))
    where = _run(
        [python, "-c", "import qa_core.config as c, docqa.bench, pipelines.run\nprint(c.DEFAULT_MODEL)"],
        timeout=120,
        cwd=work,
        env=env,
    ).stdout.strip()
    assert where.startswith(str(site)) and Path(where, "model.safetensors").exists(), where
    command = ["predict", "--input", str(SAMPLE), "--output", "out", "--no-report", "--no-progress"]
    _run([python, "-m", "docqa", *command], timeout=300, cwd=work, env=env)
    _check_output(work / "out", pq.read_metadata(SAMPLE).num_rows)


def test_the_dockerfile_base_image_runs_the_locked_beam() -> None:
    """The SDK harness of the base image and the Beam that the lock installs over it are one version."""
    (tag,) = re.findall(r"^FROM apache/beam_python3\.11_sdk:(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    (locked,) = re.findall(r"^apache-beam==(\S+)$", LOCK.read_text(), re.M)
    assert tag == locked
