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

# Folder (or package) -> packages it must never import. Stages are pure functions over records; the
# engine may use stages and runtime, never jobs or io; nothing in qa_core knows Beam or the CLI.
FORBIDDEN = {
    "qa_core/stages": ("qa_core.engine", "qa_core.jobs", "qa_core.io", "qa_core.runtime", "qa_core.tools"),
    "qa_core/engine": ("qa_core.jobs", "qa_core.io", "qa_core.tools", "qa_core.train"),
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
    return names


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_import_only_downwards(folder: str) -> None:
    assert _violations(folder, FORBIDDEN[folder]) == []


def test_the_layering_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qa_core.jobs.predict import predict\n", encoding="utf-8")
    assert _imports(bad) == {"qa_core.jobs.predict"}
