"""Writes `requirements-lock.txt`, the one tested set of every docqa install, or checks an install against it.

    python scripts/lock.py              # regenerate (make lock): resolve pyproject.toml's ranges, all extras
    python scripts/lock.py --check      # the running environment holds exactly the locked versions

Elsewhere than this machine (whose pip finds the CPU torch wheel on disk), set
PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build.

The lock is resolved by pip itself (`pip install --dry-run --report`), the installer that every docqa
install runs, so the set it writes is the set pip picks; pip-tools' resolver, tried first, swapped the CPU
torch build for PyPI's CUDA one (20 nvidia-* packages, about 3 GB) when another package moved.
Resolution pins torch to the CPU build (`torch==2.13.0+cpu`, from this machine's disk) and the lock writes
`torch==2.13.0` without the build label, so the same lock serves a CUDA build installed first; a lock that
would install any CUDA package is refused.

Pins are versions without hashes: the torch wheel differs by build (CPU, each CUDA version) and the
others by platform, and a hash would bind the lock to one of each. Every install (make setup, .ci/run,
the Dockerfile) uses the lock as pip constraints (`-c`), so each installs only what its extras need, at
the locked versions; `--check` then fails when anything installed is missing from the lock or differs
from it (a dependency added to pyproject.toml without `make lock`).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
# Every extra, so that one lock covers the worker image ([gcp]), S3 ([aws]), Spark and the dev tools.
EXTRAS = "dev,spark,gcp,aws"
TORCH_BUILD = "torch==2.13.0+cpu"
# What a CUDA torch drags in; none of it belongs in a lock that CPU installs read.
CUDA_PACKAGES = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
# Installed by venv itself, or the project itself: not dependencies. pip is locked at the version that
# resolved the lock (make setup installs it first).
NOT_LOCKED = {"setuptools", "wheel", "docqa-beam"}


def canonical(name: str) -> str:
    """A distribution name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve() -> dict[str, str]:
    """What pip would install for every extra of this tree, with the CPU torch: `{name: version}`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
            "--report", str(report), TORCH_BUILD, f"{ROOT}[{EXTRAS}]",
        ]  # fmt: skip
        subprocess.run(command, check=True)
        installs = json.loads(report.read_text())["install"]
    versions = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    cuda = sorted(name for name in versions if CUDA_PACKAGES.match(name))
    if cuda:
        raise SystemExit(f"lock: the resolution pulled CUDA packages ({', '.join(cuda)}); not written")
    versions["torch"] = versions["torch"].split("+")[0]  # any build of this version (CPU or CUDA)
    versions["pip"] = metadata.version("pip")
    return {name: versions[name] for name in sorted(versions) if name not in NOT_LOCKED}


def write_lock(versions: dict[str, str]) -> None:
    """Writes the lock file, with the command that regenerates it."""
    pip_version = metadata.version("pip")
    header = [
        "# The tested set of every docqa install: make setup, .ci/run and the Dockerfile install with",
        "# `pip install -c requirements-lock.txt ...`. Generated; do not edit. Regenerate with `make lock`",
        f"# (python scripts/lock.py: pip {pip_version}, Python {sys.version.split()[0]}, extras {EXTRAS},",
        f"# {datetime.now(UTC):%Y-%m-%d}). torch is any build of its version: install the build first.",
    ]
    LOCK.write_text("\n".join([*header, *(f"{n}=={v}" for n, v in versions.items())]) + "\n")
    print(f"lock: {len(versions)} packages -> {LOCK.relative_to(ROOT)}")


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """`{name: version}` of a lock file."""
    pins = {}
    for text in path.read_text().splitlines():
        line = text.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def installed() -> dict[str, str]:
    """`{name: version}` of the running environment's distributions (build labels dropped).

    A CUDA build of torch (`make setup TORCH_SPEC=...cu128`) brings its CUDA packages, which the lock
    leaves to the build: they are not compared.
    """
    found = {canonical(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions()}
    return {
        name: version
        for name, version in found.items()
        if name not in NOT_LOCKED and not CUDA_PACKAGES.match(name)
    }


def check(lock: dict[str, str], present: dict[str, str]) -> list[str]:
    """One line per installed package that the lock does not hold at that version."""
    problems = []
    for name, version in sorted(present.items()):
        if name not in lock:
            problems.append(
                f"{name} {version} is installed but not in {LOCK.name} (a dependency added to pyproject.toml "
                "without `make lock`, or a package installed by hand)"
            )
        elif lock[name] != version:
            problems.append(f"{name} {version} is installed where {LOCK.name} has {lock[name]}")
    return problems


def main() -> int:
    """Regenerates the lock, or with `--check` checks this environment against it (exit 1 on a mismatch)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check this environment against the lock")
    args = parser.parse_args()
    if args.check:
        problems = check(read_lock(), installed())
        for line in problems:
            print(f"lock check: {line}", file=sys.stderr)
        return 1 if problems else 0
    write_lock(resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
