"""Layering: qa_core never imports Apache Beam, and each folder imports only the layers below it."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import qa_core


def test_qa_core_imports_no_beam() -> None:
    modules = [m.name for m in pkgutil.walk_packages(qa_core.__path__, "qa_core.")]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'apache_beam' or m.startswith('apache_beam.'))\n"
        "print(len(sys.modules)); sys.exit(1 if leaked else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"qa_core imported apache_beam: {result.stdout} {result.stderr}"
    assert len(modules) >= 10


ROOT = Path(__file__).resolve().parent.parent

# The process tuning of the command-line jobs: the engine and the stages never change their process.
HOST_TUNING = ("qa_core.runtime.heap", "qa_core.runtime.host_tuning")

# Folder (or package) -> packages it must never import. Stages are pure functions over records; the
# engine may use stages and runtime, never jobs or io; nothing in qa_core knows Beam or the CLI.
FORBIDDEN = {
    "qa_core/stages": (
        "qa_core.engine",
        "qa_core.jobs",
        "qa_core.io",
        "qa_core.runtime",
        "qa_core.tools",
        *HOST_TUNING,
    ),
    "qa_core/engine": ("qa_core.jobs", "qa_core.io", "qa_core.tools", "qa_core.train", *HOST_TUNING),
    "qa_core/runtime": ("qa_core.jobs", "qa_core.io", "qa_core.tools", "qa_core.train"),
    "qa_core": ("apache_beam", "pyspark", "pipelines", "docqa"),
    "pipelines": ("docqa",),
}


def _imports(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` statement of the file names (top level or nested)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from qa_core.runtime import heap` imports the module qa_core.runtime.heap (names that are
            # not modules only add a longer name under one already listed).
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _violations(folder: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted((root / folder).rglob("*.py")):
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_import_only_downwards(folder: str) -> None:
    assert _violations(folder, FORBIDDEN[folder]) == []


def test_the_layering_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qa_core.jobs.predict import predict\n", encoding="utf-8")
    assert _imports(bad) == {"qa_core.jobs.predict", "qa_core.jobs.predict.predict"}


def test_the_engine_may_not_import_the_host_tuning(tmp_path: Path) -> None:
    engine = tmp_path / "qa_core" / "engine"
    engine.mkdir(parents=True)
    (engine / "a.py").write_text("from qa_core.runtime import heap\n", encoding="utf-8")
    (engine / "b.py").write_text("import qa_core.runtime.host_tuning\n", encoding="utf-8")
    assert _violations("qa_core/engine", FORBIDDEN["qa_core/engine"], root=tmp_path) == [
        "qa_core/engine/a.py imports qa_core.runtime.heap",
        "qa_core/engine/b.py imports qa_core.runtime.host_tuning",
    ]
