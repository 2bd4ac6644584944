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

# The layers above the config, the nouns and the errors (everything of qa_core but those and `versions`).
_UPPER = (
    "qa_core.stages",
    "qa_core.engine",
    "qa_core.runtime",
    "qa_core.io",
    "qa_core.jobs",
    "qa_core.train",
    "qa_core.evaluation",
    "qa_core.tools",
    "qa_core.api",
)
# The process tuning of the command-line jobs: the engine and the stages never change their process.
HOST_TUNING = ("qa_core.runtime.heap", "qa_core.runtime.host_tuning")

# Folder, package or module -> what it must never import (docs/ARCHITECTURE.md, "The folders of
# qa_core"). The config, the nouns and the errors import only each other; stages are pure functions
# over records; the engine may use stages and runtime (not its host tuning), never jobs or io; io is
# storage and tables over the config and the records (no model, no job); jobs run the engine but never
# a user command (tools); nothing in qa_core knows Beam or the CLI.
FORBIDDEN = {
    "qa_core/config.py": _UPPER,
    "qa_core/config_layers.py": _UPPER,
    "qa_core/config_sections.py": _UPPER,
    "qa_core/config_io.py": _UPPER,
    "qa_core/config_train.py": _UPPER,
    "qa_core/records.py": _UPPER,
    "qa_core/errors.py": _UPPER,
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
    "qa_core/io": tuple(name for name in _UPPER if name != "qa_core.io"),
    "qa_core/jobs": ("qa_core.tools", "qa_core.train", "qa_core.api"),
    "qa_core/tools": ("qa_core.jobs", "qa_core.train", "qa_core.api"),
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
    base = root / folder
    for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
        for name in sorted(_imports(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_no_module_of_qa_core_imports_its_package_root() -> None:
    """`qa_core/__init__.py` is the user's lazy entry point; inside the package, names come from modules."""
    found = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "qa_core").rglob("*.py"))
        if path != ROOT / "qa_core" / "__init__.py" and "qa_core" in _imports(path)
    ]
    assert found == []


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layers_import_only_downwards(folder: str) -> None:
    assert _violations(folder, FORBIDDEN[folder]) == []


def test_the_layering_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qa_core.jobs.predict import predict\n", encoding="utf-8")
    assert _imports(bad) == {"qa_core.jobs.predict", "qa_core.jobs.predict.predict"}


PROJECT_PACKAGES = ("qa_core", "pipelines", "docqa")


def _module_name(path: Path, base: Path) -> str:
    """`qa_core/runtime/shapes.py` -> `qa_core.runtime.shapes`; a package's `__init__.py` is the package."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(base: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports, from every import statement (top level or nested).

    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg` (a name
    defined in the package); relative imports are resolved against the importing module's package.
    Imports of modules outside `packages` are left out.
    """
    paths = {
        _module_name(path, base): path
        for package in packages
        for path in sorted((base / package).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                parent = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join([*parent, *([node.module] if node.module else [])])
                for alias in node.names:
                    targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in paths else source)
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


def test_no_import_cycles_among_the_project_modules() -> None:
    graph = _import_graph(ROOT, PROJECT_PACKAGES)
    assert "qa_core.config" in graph["qa_core.train.config"]  # the graph sees the project's imports
    assert _import_cycles(graph) == []


def test_the_cycle_check_can_fail(tmp_path: Path) -> None:
    package = tmp_path / "loop"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "inner" / "__init__.py").write_text("", encoding="utf-8")
    (package / "a.py").write_text("from loop.inner import b\n", encoding="utf-8")  # `from pkg import module`
    (package / "inner" / "b.py").write_text("def f():\n    from .. import c\n", encoding="utf-8")  # nested
    (package / "c.py").write_text("import loop.a\n", encoding="utf-8")
    (package / "d.py").write_text("from loop.a import VALUE\n", encoding="utf-8")  # into the cycle, not in it
    graph = _import_graph(tmp_path, ("loop",))
    assert graph["loop.d"] == {"loop.a"}
    assert _import_cycles(graph) == [["loop.a", "loop.c", "loop.inner.b"]]


def test_the_engine_may_not_import_the_host_tuning(tmp_path: Path) -> None:
    engine = tmp_path / "qa_core" / "engine"
    engine.mkdir(parents=True)
    (engine / "a.py").write_text("from qa_core.runtime import heap\n", encoding="utf-8")
    (engine / "b.py").write_text("import qa_core.runtime.host_tuning\n", encoding="utf-8")
    assert _violations("qa_core/engine", FORBIDDEN["qa_core/engine"], root=tmp_path) == [
        "qa_core/engine/a.py imports qa_core.runtime.heap",
        "qa_core/engine/b.py imports qa_core.runtime.host_tuning",
    ]
