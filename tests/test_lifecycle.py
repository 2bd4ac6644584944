"""One job lifecycle, every engine: the same cases through `docqa predict`, `docqa run` and `docqa spark`.

Each engine supplies only how it answers a plan (`qa_core.jobs.lifecycle`); these cases check that the
checks before the job and its ending behave the same whichever engine answers: an empty input, an
existing output, a model that does not fit the config, output counts that do not add up, and a job that
dies before `COMPLETED`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from qa_core.jobs import lifecycle
from tests.conftest import write_parquet

ROWS: list[dict[str, Any]] = [
    {"id": "a", "question": "what city?", "context": "the city of paris is large"},
    {"id": "b", "question": "what river?", "context": "the river seine runs through the city"},
    {"id": None, "question": "no id?", "context": "a context"},
]
SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("context", pa.string())])


def _engines() -> list[Any]:
    spark_ready = shutil.which("java") is not None
    try:
        import pyspark  # noqa: F401
    except ImportError:
        spark_ready = False
    spark = pytest.param("spark", marks=pytest.mark.skipif(not spark_ready, reason="needs pyspark and Java"))
    return ["predict", "run", spark]


ENGINE_FLAGS = {"predict": ["--no-progress"], "run": ["--no-progress"], "spark": ["--master", "local[2]"]}


@pytest.fixture(params=_engines())
def job(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Callable[..., int]:
    """Runs the engine's command on an input and output, with the tiny model and no report."""
    engine = request.param

    def run(source: Path, output: Path, *extra: str) -> int:
        argv = [engine, "--input", str(source), "--output", str(output), "--model", str(tiny_model_dir)]
        return main([*argv, "--no-report", *ENGINE_FLAGS[engine], *extra])

    return run


def _answers(output: Path) -> list[tuple[Any, ...]]:
    rows = pq.read_table(output / "answers").to_pylist()
    return sorted((r["id"], r["answer"], r["start"], r["end"]) for r in rows)


def test_an_empty_input_completes_with_empty_tables(job: Callable[..., int], tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "empty.parquet", [], schema=SCHEMA)
    assert job(source, tmp_path / "out") == 0
    info = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert (info["counts"]["rows_read"], info["counts"]["answered"], info["counts"]["rejected"]) == (0, 0, 0)
    assert pq.read_table(tmp_path / "out" / "answers").num_rows == 0
    assert pq.read_table(tmp_path / "out" / "rejections").num_rows == 0
    assert (tmp_path / "out" / "COMPLETED").exists()


def test_an_existing_output_needs_overwrite_and_is_left_intact(
    job: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    output = tmp_path / "out"
    assert job(source, output) == 0
    before = sorted(p.relative_to(output) for p in output.rglob("*"))
    capsys.readouterr()
    assert job(source, output) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "Traceback" not in err[0]
    assert sorted(p.relative_to(output) for p in output.rglob("*")) == before
    assert job(source, output, "--overwrite") == 0


def test_a_model_that_does_not_fit_fails_before_the_output_is_touched(
    job: Callable[..., int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    # The tiny model has 512 positions: windows of 1,024 tokens cannot run on it.
    code = job(
        source, tmp_path / "out", "--set", "featurize.max_seq_len=1024", "--set", "featurize.doc_stride=128"
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "max_seq_len" in err[0], err
    assert not (tmp_path / "out").exists()


def test_counts_that_do_not_add_up_leave_the_run_unfinished(
    job: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer's file in the output between answering and the commit: no `COMPLETED`."""
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    output = tmp_path / "out"
    checked = lifecycle.checked_counts

    def with_a_stray_part(output_dir: str, rows_read: int, answered: lifecycle.Answered) -> dict[str, Any]:
        # The largest part (a unit may have no answers at all).
        stray = max((pq.read_table(p) for p in (output / "answers").glob("*.parquet")), key=len)
        pq.write_table(stray, output / "answers" / "part-99999-stray.parquet")
        return checked(output_dir, rows_read, answered)

    monkeypatch.setattr(lifecycle, "checked_counts", with_a_stray_part)
    assert job(source, output) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rows read" in err[0] and "not marked COMPLETED" in err[0], err
    assert not (output / "COMPLETED").exists() and not (output / "_run.json").exists()


class _Killed(BaseException):
    """Stands in for the process dying: nothing of docqa catches it."""


def test_a_job_killed_before_completed_is_unfinished_and_reruns_with_overwrite(
    job: Callable[..., int],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    clean, output = tmp_path / "clean", tmp_path / "out"
    assert job(source, clean) == 0

    def die(*_: Any, **__: Any) -> None:
        raise _Killed

    with monkeypatch.context() as patch:
        patch.setattr(lifecycle, "mark_completed", die)
        with pytest.raises(_Killed):
            job(source, output)
    assert (output / "answers").exists() and not (output / "COMPLETED").exists()
    capsys.readouterr()
    assert job(source, output) == 2  # an unfinished run is still a run: it needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert job(source, output, "--overwrite") == 0
    assert (output / "COMPLETED").exists()
    assert _answers(output) == _answers(clean)
    ran = json.loads((output / "_run.json").read_text())
    assert ran["config_hash"] == json.loads((clean / "_run.json").read_text())["config_hash"]
