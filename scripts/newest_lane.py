"""CI's newest lane: the newest releases inside pyproject.toml's ranges, the installed wheel, end to end.

    python3 scripts/newest_lane.py [--keep] [--locked-docqa .venv/bin/docqa]

The locked lane (`make test`) runs the tested set of `requirements-lock.txt`; this lane installs what a
user's `pip install docqa-beam[dev,spark]` resolves today into a fresh venv outside the tree (torch
stays the CPU build torch==2.13.0 of this machine's disk: the range's newest torch on PyPI is a CUDA
build of several GB), from the wheel of this tree, and from another folder runs:

    docqa --version; the packages import from the wheel, not the tree
    docqa predict on the bundled sample with the bundled model (against the locked lane's, if given)
    docqa run on the DirectRunner (in memory), multi-process, and the portable runner with an EXTERNAL
        worker pool (SDK workers started by worker_pool_main with the venv's python)
    docqa spark on local[2]
    each engine's answers and rejections against predict's (same rows, offsets, scores within 1e-4)
    tests/test_beam_types.py against the installed packages (every graph type-checked)

A failing check is rerun with one package at a time put back to its locked version (the answering
libraries first, then the other differences); the first that makes it pass is named with both versions.
Only the standard library is used here: the venv's own python does the comparisons. Exit 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lock import NOT_LOCKED, canonical, read_lock  # scripts/lock.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-lock.txt"
SAMPLE = ROOT / "samples" / "questions.parquet"
TORCH = "torch==2.13.0"
# Put back first when a check fails: the libraries whose releases change what docqa computes.
FIRST_SUSPECTS = ("apache-beam", "torch", "transformers", "tokenizers", "pyarrow", "pyspark", "numpy")
BISECT_SECONDS = 900
VERSION = "docqa --version, imports from the wheel"
PREDICT = "docqa predict (and the locked lane's predict, when given)"
MULTI_PROCESS = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")

COMPARE = r"""
import sys, pyarrow.parquet as pq
def table(folder, name):
    return pq.read_table(f"{folder}/{name}").to_pylist()
want, got = sys.argv[1], sys.argv[2]
a = {r["id"]: r for r in table(want, "answers")}
b = {r["id"]: r for r in table(got, "answers")}
assert a.keys() == b.keys(), f"answered ids differ: {sorted(a.keys() ^ b.keys(), key=str)[:5]}"
for key, row in a.items():
    other = b[key]
    assert (row["answer"], row["start"], row["end"]) == (other["answer"], other["start"], other["end"]), key
    assert abs(row["score"] - other["score"]) < 1e-4, (key, row["score"], other["score"])
rejected = lambda folder: sorted((str(r["id"]), r["reason"]) for r in table(folder, "rejections"))
assert rejected(want) == rejected(got), (rejected(want), rejected(got))
print(f"{len(a)} answers and {len(rejected(got))} rejections equal predict's")
"""


@dataclass(frozen=True)
class Difference:
    """A package whose newest version differs from the lock's (`locked` None: not in the lock)."""

    name: str
    newest: str
    locked: str | None

    def __str__(self) -> str:
        return f"{self.name} {self.newest} (lock: {self.locked or 'absent'})"


def differences(newest: dict[str, str], locked: dict[str, str]) -> list[Difference]:
    """Installed packages whose version differs from the lock, the first suspects first."""
    found = [
        Difference(name, version, locked.get(name))
        for name, version in newest.items()
        if locked.get(name) != version.split("+")[0] and name not in NOT_LOCKED
    ]
    rank = {name: i for i, name in enumerate(FIRST_SUSPECTS)}
    return sorted(found, key=lambda d: (rank.get(d.name, len(rank)), d.name))


def find_culprit(
    suspects: Sequence[Difference], passes_with_locked: Callable[[Difference], bool]
) -> Difference | None:
    """The first suspect whose locked version makes the failing check pass, if one does.

    `passes_with_locked(d)` puts `d` back to its locked version, reruns the check, and restores the
    newest version before returning. Suspects absent from the lock cannot be put back and are skipped.
    """
    for suspect in suspects:
        if suspect.locked is not None and passes_with_locked(suspect):
            return suspect
    return None


class Lane:
    """The venv of the newest releases and the checks run with it, from a folder outside the tree."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.venv = work / "venv"
        self.bin = self.venv / "bin"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env.update(
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",  # worker pools start this python
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            DOCQA_CACHE_DIR=str(work / "cache"),
        )

    def sh(self, *command: str, timeout: float = 900, quiet: bool = False) -> str:
        """Runs a command in the work folder and returns its output; raises `CheckError` when it fails.

        The command runs in its own process group, killed whole on a timeout (a Beam job's SDK worker
        processes and a Spark JVM included).
        """
        process = subprocess.Popen(
            command,
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise CheckError(
                f"{' '.join(command)} ran over {timeout:.0f} s:\n{(out + err)[-4000:]}"
            ) from None
        if process.returncode != 0:
            raise CheckError(f"{' '.join(command)} exited {process.returncode}:\n{(out + err)[-4000:]}")
        if not quiet and out.strip():
            print(out.strip(), flush=True)
        return out

    def pip(self, *args: str) -> None:
        """Runs the venv's pip, quietly."""
        self.sh(
            str(self.bin / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet", *args, quiet=True
        )

    def install(self) -> None:
        """A fresh venv: pip, the CPU torch, then this tree's wheel with the newest of everything else."""
        self.sh(sys.executable, "-m", "venv", str(self.venv))
        self.pip("install", "--upgrade", "pip")
        self.pip("install", TORCH)
        source = self.work / "source"
        # The tree's files as git sees them (tracked, and untracked but not ignored): no stale build/.
        listing = ["git", "ls-files", "-co", "--exclude-standard"]
        for name in subprocess.run(
            listing, cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines():
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
        self.pip("wheel", "--no-deps", "-w", str(self.work / "dist"), str(source))
        (wheel,) = (self.work / "dist").glob("docqa_beam-*.whl")
        constraints = self.work / "torch.txt"
        constraints.write_text(TORCH + "\n")
        newest = ["--upgrade", "--upgrade-strategy", "eager", "-c", str(constraints)]
        self.pip("install", *newest, f"{wheel}[dev,spark]")

    def installed(self) -> dict[str, str]:
        """`{name: version}` of the venv."""
        listed = self.sh(str(self.bin / "python"), "-m", "pip", "list", "--format=json", quiet=True)
        return {canonical(p["name"]): p["version"] for p in json.loads(listed)}

    def docqa(self, command: str, *args: str) -> None:
        """Runs a docqa command of the venv, without its progress bar and report."""
        quiet = ["--no-report"] if command == "spark" else ["--no-report", "--no-progress"]
        self.sh(str(self.bin / "docqa"), command, *args, *quiet, timeout=600, quiet=True)

    def compare(self, engine_output: str, reference: str = "out/predict") -> None:
        """Fails unless an engine's answers and rejections equal the reference's (this lane's predict)."""
        self.sh(str(self.bin / "python"), "-c", COMPARE, reference, engine_output)

    @contextmanager
    def worker_pool(self) -> Iterator[int]:
        """A Beam worker pool on a free loopback port, stopped (with its SDK workers) afterwards."""
        with socket.socket() as probe:
            probe.bind(("localhost", 0))
            port = probe.getsockname()[1]
        log = (self.work / f"pool-{port}.log").open("wb")
        command = [str(self.bin / "python"), "-m", "apache_beam.runners.worker.worker_pool_main"]
        pool = subprocess.Popen(
            [*command, f"--service_port={port}"],
            cwd=self.work,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_port(port, pool, self.work / f"pool-{port}.log")
            yield port
        finally:
            os.killpg(pool.pid, signal.SIGTERM)
            try:
                pool.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(pool.pid, signal.SIGKILL)
                pool.wait()
            log.close()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    """Returns once `process` listens on `port`; raises `CheckError` (with its log) if it dies first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckError(f"the worker pool exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("localhost", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise CheckError(f"the worker pool did not listen on port {port} in {seconds:.0f} s")


class CheckError(RuntimeError):
    """A check of the lane failed; the message holds the command's output."""


def checks(lane: Lane, locked_docqa: Path | None = None) -> list[tuple[str, Callable[[], None]]]:
    """The lane's checks, in order; the first engine is predict, whose output the later ones compare with.

    With `locked_docqa` (the locked lane's `docqa`), predict's answers are compared with the locked
    set's too, so a release that changes every engine's answers alike does not pass unseen.
    """
    sample = str(SAMPLE)

    def version() -> None:
        lane.sh(str(lane.bin / "docqa"), "--version")
        where = lane.sh(
            str(lane.bin / "python"),
            "-c",
            "import qa_core, pipelines; print(qa_core.__file__, pipelines.__file__)",
        )
        if not all(path.startswith(str(lane.venv)) for path in where.split()):
            raise CheckError(f"docqa imports from outside the wheel's venv: {where}")

    def portable() -> None:
        with lane.worker_pool() as port:
            portable_flags = [
                "--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{port}",
            ]  # fmt: skip
            lane.docqa("run", "--input", sample, "--output", "out/portable", "--overwrite", *portable_flags)
        lane.compare("out/portable")

    def engine(name: str, command: str, *flags: str) -> Callable[[], None]:
        def run() -> None:
            lane.docqa(command, "--input", sample, "--output", f"out/{name}", "--overwrite", *flags)
            if name != "predict":  # the reference
                lane.compare(f"out/{name}")

        return run

    def predict() -> None:
        engine("predict", "predict")()
        if locked_docqa is not None:
            if not (lane.work / "out" / "locked" / "COMPLETED").exists():
                lane.sh(str(locked_docqa), "predict", "--input", sample, "--output", "out/locked",
                        "--overwrite", "--no-progress", "--no-report", quiet=True)  # fmt: skip
            lane.compare("out/predict", reference="out/locked")

    def beam_types() -> None:
        (lane.work / "pytest.ini").write_text("[pytest]\n")
        lane.sh(
            str(lane.bin / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
            "--import-mode=importlib", "-c", str(lane.work / "pytest.ini"), "--rootdir", str(lane.work),
            str(ROOT / "tests" / "test_beam_types.py"),
        )  # fmt: skip

    return [
        (VERSION, version),
        (PREDICT, predict),
        ("docqa run, DirectRunner", engine("direct", "run")),
        ("docqa run, multi-process", engine("multi", "run", *MULTI_PROCESS)),
        ("docqa run, portable runner with an EXTERNAL worker pool", portable),
        ("docqa spark, local[2]", engine("spark", "spark", "--master", "local[2]")),
        ("Beam graphs type-checked (tests/test_beam_types.py)", beam_types),
    ]


def passes(check: Callable[[], None]) -> bool:
    """Whether a check passes now."""
    try:
        check()
    except CheckError:
        return False
    return True


def explain(lane: Lane, name: str, rerun: Callable[[], None], diffs: list[Difference]) -> str:
    """Which package's newest release makes a check fail, found by putting each back to its locked version.

    `rerun` repeats the failing check, after predict where the check compares with predict's output
    (a release may change the reference rather than the engine).
    """
    if not diffs:
        return f"newest lane: '{name}' fails with exactly the locked versions: not a new release"
    deadline = time.monotonic() + BISECT_SECONDS
    untried: list[Difference] = []

    def with_locked(diff: Difference) -> bool:
        if time.monotonic() > deadline:
            untried.append(diff)
            return False
        print(f"  rerunning '{name}' with {diff.name}=={diff.locked} ...", flush=True)
        try:
            lane.pip("install", "--no-deps", f"{diff.name}=={diff.locked}")
            return passes(rerun)
        except CheckError as err:  # the locked version does not install beside the others
            print(
                f"  {diff.name}=={diff.locked} could not be put back: {str(err).splitlines()[0]}", flush=True
            )
            return False
        finally:
            try:
                lane.pip("install", "--no-deps", f"{diff.name}=={diff.newest}")
            except CheckError as err:
                print(f"  {diff.name}=={diff.newest} could not be restored: {err}", flush=True)

    culprit = find_culprit(diffs, with_locked)
    if culprit is not None:
        return (
            f"newest lane: '{name}' fails with {culprit.name} {culprit.newest} and passes with the lock's "
            f"{culprit.locked}: fix docqa for {culprit.name} {culprit.newest}, or cap its range below it"
        )
    skipped = f"; not tried in {BISECT_SECONDS} s: {', '.join(map(str, untried))}" if untried else ""
    return (
        f"newest lane: '{name}' fails, and no single package put back to the lock fixes it; newer than the "
        f"lock: {', '.join(map(str, diffs))}{skipped}"
    )


def main() -> int:
    """Installs the newest releases, runs the checks; on a failure names the release that caused it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the lane's folder (venv, outputs)")
    locked_help = "the locked lane's docqa: predict is compared with it"
    parser.add_argument("--locked-docqa", type=Path, metavar="PATH", help=locked_help)
    args = parser.parse_args()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="docqa-newest-"))
    lane = Lane(work)
    print(f"newest lane in {work}", flush=True)
    lane.install()
    diffs = differences(lane.installed(), read_lock(LOCK))
    print(f"newest lane: installed in {time.monotonic() - started:.0f} s; differs from the lock in: "
          f"{', '.join(map(str, diffs)) or 'nothing'}", flush=True)  # fmt: skip
    lane_checks = checks(lane, args.locked_docqa.resolve() if args.locked_docqa else None)
    predict = dict(lane_checks)[PREDICT]
    for name, check in lane_checks:
        began = time.monotonic()
        try:
            check()
        except CheckError as err:
            print(f"FAILED {name}:\n{err}", flush=True)

            def rerun(check: Callable[[], None] = check, name: str = name) -> None:
                if name not in (PREDICT, VERSION):
                    predict()
                check()

            print(explain(lane, name, rerun, diffs), file=sys.stderr, flush=True)
            print(f"newest lane: kept {work}", file=sys.stderr)
            return 1
        print(f"ok {name} ({time.monotonic() - began:.0f} s)", flush=True)
    print(f"newest lane: passed in {time.monotonic() - started:.0f} s", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
