"""qa_core must stay usable from plain Python: importing all of it never imports Apache Beam."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

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
