"""The lock and CI's newest lane: what they compare, and how a failing release is named.

`scripts/lock.py` and `scripts/newest_lane.py` run outside the package (with the venv's or the system's
python); their pure parts are tested here. The lane's checks themselves run in `.ci/run`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def _load(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # newest_lane imports lock as its neighbour
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


lock = _load("lock")
lane = _load("newest_lane")


def test_the_lock_pins_every_package_once_and_no_cuda_build() -> None:
    lines = [line for line in lock.LOCK.read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", line) for line in lines), lines
    pins = lock.read_lock()
    assert len(pins) == len(lines)
    assert pins["torch"] == "2.13.0"  # no build label: a CUDA build of the version installed first fits
    assert not [name for name in pins if lock.CUDA_PACKAGES.match(name)]
    for name in ("apache-beam", "transformers", "tokenizers", "pyarrow", "pyspark", "pip", "pytest", "ruff"):
        assert name in pins


# Requirements whose lower bound stays below the lock on purpose (pyproject.toml says why).
WIDE_LOWER_BOUNDS = {"fsspec", "gcsfs", "s3fs"}


def test_every_range_of_pyproject_admits_the_lock_and_starts_there() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = lock.read_lock()
    for extra, requirements in [("", project["dependencies"]), *extras.items()]:
        for text in requirements:
            requirement = Requirement(text)
            name = lock.canonical(requirement.name)
            assert requirement.specifier.contains(pins[name]), (extra, text, pins[name])
            lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            if extra != "dev" and name not in WIDE_LOWER_BOUNDS:
                assert lower == [pins[name]], f"{text}: the lock has {pins[name]}"


def test_this_environment_matches_the_lock() -> None:
    assert lock.check(lock.read_lock(), lock.installed()) == []


def test_the_check_names_what_differs_or_is_missing() -> None:
    problems = lock.check(
        {"numpy": "2.4.6", "torch": "2.13.0"}, {"numpy": "2.4.7", "torch": "2.13.0", "x": "1"}
    )
    assert problems == [
        "numpy 2.4.7 is installed where requirements-lock.txt has 2.4.6",
        "x 1 is installed but not in requirements-lock.txt (a dependency added to pyproject.toml without "
        "`make lock`, or a package installed by hand)",
    ]


def test_differences_put_the_answering_libraries_first() -> None:
    newest = {"aaa": "2", "apache-beam": "2.79.0", "torch": "2.13.0+cpu", "zz": "1", "docqa-beam": "0.1.0"}
    locked = {"aaa": "1", "apache-beam": "2.78.0", "torch": "2.13.0", "zz": "1"}
    assert [str(d) for d in lane.differences(newest, locked)] == [
        "apache-beam 2.79.0 (lock: 2.78.0)",
        "aaa 2 (lock: 1)",
    ]


@pytest.mark.parametrize(
    ("breaking", "expected"),
    [("pyarrow", "pyarrow"), ("numpy", "numpy"), (None, None)],
)
def test_the_culprit_is_the_first_package_whose_locked_version_passes(
    breaking: str | None, expected: str | None
) -> None:
    diffs = [
        lane.Difference("apache-beam", "2.79.0", "2.78.0"),
        lane.Difference("new-dependency", "1.0", None),
        lane.Difference("pyarrow", "25.0.2", "25.0.1"),
        lane.Difference("numpy", "2.4.7", "2.4.6"),
    ]
    tried: list[str] = []

    def passes_with_locked(diff: lane.Difference) -> bool:
        tried.append(diff.name)
        return bool(diff.name == breaking)

    culprit = lane.find_culprit(diffs, passes_with_locked)
    assert (culprit.name if culprit else None) == expected
    assert "new-dependency" not in tried  # not in the lock: nothing to put back
    assert tried[0] == "apache-beam"
