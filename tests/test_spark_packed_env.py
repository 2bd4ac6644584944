"""`docqa spark --packed-env`: executors that have no docqa run the archive `make spark-env` builds.

The archive is built here as a user builds it (`scripts/pack_spark_env.py`: a fresh venv with this
checkout's docqa, not editable, through the lock, packed by venv-pack), then shipped to a standalone
cluster (`pipelines.spark_standalone`) whose workers' environment has neither the driver's venv nor this
checkout: no `VIRTUAL_ENV`, no venv on `PATH`, no `PYTHONPATH`. The job must answer the bundled sample
as `docqa predict` does, and every executor's Python must be the archive's, unpacked in the executor's
own working folder.

About two minutes to build and pack (a 545 MiB archive) and a minute for each executor to unpack it on
this project's 2-core machine: the slowest Spark test, and the only one that exercises a cluster whose
executors never saw the driver's files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark", reason="docqa spark needs the [spark] extra")
pytest.importorskip("venv_pack", reason="make spark-env needs venv-pack (the [spark] extra)")
if shutil.which("java") is None:
    pytest.skip("no Java runtime (apt-get install -y openjdk-17-jre-headless)", allow_module_level=True)

from pipelines.spark_standalone import standalone_cluster

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "questions.parquet"


def _bare_env() -> dict[str, str]:
    """This environment without any trace of the driver's venv or checkout."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYSPARK_PYTHON"}}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    return env


def test_executors_run_the_packed_environment(tmp_path: Path) -> None:
    archive = tmp_path / "docqa-spark-env.tar.gz"
    build = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pack_spark_env.py"), "--output", str(archive),
         "--build-dir", str(tmp_path / "spark-env")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    shutil.rmtree(tmp_path / "spark-env")  # the venv it was packed from is gone: only the archive remains

    reference = tmp_path / "predict"
    assert subprocess.run(
        [sys.executable, "-m", "docqa", "predict", "--input", str(SAMPLE), "--output", str(reference),
         "--no-report"],
        capture_output=True, timeout=300, check=False,
    ).returncode == 0  # fmt: skip

    output = tmp_path / "spark"
    with standalone_cluster(
        tmp_path / "cluster", workers=2, cores=1, memory="2g", env=_bare_env()
    ) as cluster:
        job = subprocess.run(
            [sys.executable, "-m", "docqa", "spark", "--master", cluster.master_url,
             "--packed-env", str(archive), "--input", str(SAMPLE), "--output", str(output), "--no-report"],
            capture_output=True, text=True, timeout=900, check=False, env=_bare_env(),
        )  # fmt: skip
    assert job.returncode == 0, job.stderr[-3000:]

    info = json.loads((output / "_run.json").read_text())
    pythons = info["spark"]["executor_python"]
    assert len(pythons) == 2  # both executors were probed
    for python in pythons.values():  # ".../work-K/app-.../N/docqa_env/bin/python (docqa X)"
        assert "/docqa_env/bin/python" in python and str(tmp_path / "cluster" / "work-") in python, python
        assert str(Path(sys.executable).parent) not in python
    assert (output / "COMPLETED").exists()
    columns = ["id", "answer", "start", "end"]
    got = pq.read_table(output / "answers", columns=columns).sort_by("id").to_pylist()
    want = pq.read_table(reference / "answers", columns=columns).sort_by("id").to_pylist()
    assert got == want
