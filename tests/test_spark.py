"""`docqa spark` on a real local Spark (`local[2]`, pyspark from PyPI, Java 17) against `docqa predict`.

The unit function is tested on its own (no JVM) against the engine; the whole job runs through the
CLI in this process, with several units (one task each), and must write what predict writes: the same
schemas, the same answers (text, start, end; scores within 1e-4), the same rejections, the same counts,
`_run.json` and `COMPLETED`. A model the executors cannot load fails the job with exit code 2 and one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from docqa.cli import main
from pipelines.spark_partition import StatsAccumulator, UnitJob, answer_units
from qa_core.config import load_config
from qa_core.engine.loop import QAEngine
from qa_core.engine.stats import EngineStats
from qa_core.errors import ConfigError
from qa_core.evaluation.squad import load_squad, squad_to_table
from qa_core.io.read import output_schemas, read_input_schema
from qa_core.io.sources import TableSource
from qa_core.io.write import prepare_output
from qa_core.jobs.parts import PartRange
from qa_core.jobs.predict import predict
from tests.conftest import SHARED_SQUAD, write_parquet

pyspark = pytest.importorskip("pyspark", reason="docqa spark needs the [spark] extra")
if shutil.which("java") is None:
    pytest.skip("no Java runtime (apt-get install -y openjdk-17-jre-headless)", allow_module_level=True)

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "questions.parquet"
SQUAD_DEV = SHARED_SQUAD / "dev-v1.1.json.zip"
BAD_ROWS: list[dict[str, Any]] = [
    {"id": None, "question": "what city?", "context": "the city of paris"},
    {"id": "no-context", "question": "what city?", "context": None},
    {"id": "blank", "question": "what?", "context": " \n "},
    {"id": "no-question", "question": None, "context": "the city"},
]


def _predict(config_args: list[str], source: Path, output: Path) -> None:
    config = load_config([], config_args)
    predict(config, str(source), str(output), progress=False, workers=1)


def _spark(source: Path, output: Path, *extra: str) -> int:
    return main(
        [
            "spark",
            "--input",
            str(source),
            "--output",
            str(output),
            "--master",
            "local[2]",
            "--no-report",
            *extra,
        ]
    )


def _by_id(folder: Path, table: str) -> dict[Any, dict[str, Any]]:
    rows = pq.read_table(folder / table).to_pylist()
    return {(row["id"], index): row for index, row in enumerate(sorted(rows, key=_order))}


def _order(row: dict[str, Any]) -> tuple[str, str, int]:
    return (str(row["id"]), str(row.get("answer")), row.get("start") or -1)


def _assert_same_output(spark_dir: Path, predict_dir: Path) -> dict[str, Any]:
    for table in ("answers", "rejections"):
        ours, theirs = pq.read_table(spark_dir / table), pq.read_table(predict_dir / table)
        assert ours.schema.remove_metadata().equals(theirs.schema.remove_metadata(), check_metadata=True)
    answers, expected = _by_id(spark_dir, "answers"), _by_id(predict_dir, "answers")
    assert answers.keys() == expected.keys() and answers
    for key, row in answers.items():
        want = expected[key]
        assert (row["answer"], row["start"], row["end"]) == (want["answer"], want["start"], want["end"]), key
        assert row["score"] == pytest.approx(want["score"], abs=1e-4)
    rejections = {(r["id"], r["reason"]) for r in pq.read_table(spark_dir / "rejections").to_pylist()}
    assert rejections == {
        (r["id"], r["reason"]) for r in pq.read_table(predict_dir / "rejections").to_pylist()
    }
    assert (spark_dir / "COMPLETED").exists()
    info = json.loads((spark_dir / "_run.json").read_text())
    theirs = json.loads((predict_dir / "_run.json").read_text())
    for key in ("rows_read", "answered", "rejected", "rejected_by_reason", "windows", "questions_cut"):
        assert info["counts"][key] == theirs["counts"][key], key
    assert info["counts"]["context_lookups"] == theirs["counts"]["context_lookups"]
    assert info["counts"]["contexts_tokenized"] >= theirs["counts"]["contexts_tokenized"]  # per task
    assert info["config_hash"] == theirs["config_hash"]
    assert info["model"]["revision"] == theirs["model"]["revision"]
    assert info["engine"] == "spark:local[2]"
    return info


def test_a_unit_is_answered_into_its_part_files_with_its_counters(
    tiny_model: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The mapPartitions function without Spark: its row range read, part files, footers, summary."""
    rows = [{"id": "before", "question": "x?", "context": "y"}, *BAD_ROWS]
    rows.append({"id": "ok", "question": "city?", "context": "the city"})
    source = write_parquet(tmp_path / "in.parquet", rows)
    config = load_config([], [f"model.name_or_path={tiny_model_dir}"])
    schemas = output_schemas(read_input_schema([str(source)], config.input), config)
    owner = prepare_output(str(tmp_path / "out"), overwrite=False)

    class Accumulator:  # Spark's accumulator, as the task sees it
        value = EngineStats().to_state()

        def add(self, state: dict[str, Any]) -> None:
            self.value = StatsAccumulator().addInPlace(self.value, state)

    accumulator = Accumulator()
    job = UnitJob(
        config,
        str(tmp_path / "out"),
        *schemas,
        owner,
        config.config_hash(),
        accumulator,
        source=TableSource.open(str(source), config.input),
    )
    import pipelines.spark_partition as partition_module

    partition_module._ENGINES[config.config_hash()] = QAEngine(tiny_model, config)
    (summary,) = list(answer_units(job, [PartRange(3, 1, 6)]))  # rows 1..5: the first row is not its
    counts = EngineStats.from_state(summary["counts"])
    assert (summary["unit"], summary["rows"], counts.answered, sum(counts.rejected.values())) == (3, 5, 1, 4)
    assert summary["pid"] > 0 and summary["executor"].endswith(f"/{os.getppid()}")
    assert EngineStats.from_state(accumulator.value).to_state() == counts.to_state()
    answers = pq.read_table(tmp_path / "out" / "answers" / "part-00003.parquet")
    rejections = pq.read_table(tmp_path / "out" / "rejections" / "part-00003.parquet")
    assert (answers.num_rows, rejections.num_rows) == (1, 4)
    assert answers.column("id").to_pylist() == ["ok"]
    part = json.loads(answers.schema.metadata[b"docqa.part"])
    assert (part["start"], part["stop"], part["config_hash"]) == (1, 6, config.config_hash())
    footer = pq.read_metadata(tmp_path / "out" / "rejections" / "part-00003.parquet").metadata
    assert json.loads(footer[b"docqa.part_counts"])["rows"] == 5


def test_spark_answers_the_sample_as_predict_does(tmp_path: Path) -> None:
    _predict([], SAMPLE, tmp_path / "predict")
    assert _spark(SAMPLE, tmp_path / "spark") == 0
    _assert_same_output(tmp_path / "spark", tmp_path / "predict")


def test_a_large_untuned_local_job_probes_on_the_driver_as_its_tasks_run(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver probes with `spark.task.cpus` threads (the tasks' key); the executors then use it."""
    monkeypatch.setattr("qa_core.runtime.shape_probe.PROBE_SECONDS", 0.0)
    settings = ["--set", "batch.probe_min_rows=1", "--model", str(tiny_model_dir)]
    assert _spark(SAMPLE, tmp_path / "spark", *settings) == 0
    assert json.loads((tmp_path / "spark" / "_run.json").read_text())["batch_shape"]["source"] == "probed"
    entries = json.loads((Path(os.environ["DOCQA_CACHE_DIR"]) / "batch_shapes.json").read_text())
    tiny = [e for e in entries.values() if e["origin"] == "probe" and e["key"]["threads"] == 1]
    assert tiny, entries


@pytest.mark.skipif(not SQUAD_DEV.exists(), reason="needs ../shared/data/squad")
def test_a_one_row_group_file_runs_as_several_units_as_predict_answers_and_resumes(tmp_path: Path) -> None:
    """About 300 SQuAD rows in ONE row group (Spark's reader would make one task): units by rows."""
    table = squad_to_table(load_squad(str(SQUAD_DEV))).select(["id", "question", "context"])
    rows = table.take(list(range(0, table.num_rows, 35))).to_pylist() + BAD_ROWS  # about 300 rows
    source = tmp_path / "squad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=len(rows))
    assert pq.read_metadata(source).num_row_groups == 1
    _predict([], source, tmp_path / "predict")
    assert _spark(source, tmp_path / "spark", "--set", "output.task_rows=100") == 0
    info = _assert_same_output(tmp_path / "spark", tmp_path / "predict")
    units = info["counts"]["partitions"]
    assert units >= 4 and info["spark"]["plan"] == {"cores": 2, "task_rows": 100, "units": units}
    # local[2]: two Python workers at most, each loading the model once for all its units.
    figures = info["spark"]
    assert figures["model_loads"] == figures["python_workers"] <= 2
    assert sum(e["rows"] for e in figures["executors"].values()) == len(rows)
    assert len(list((tmp_path / "spark" / "answers").glob("part-*.parquet"))) == units
    assert info["timings"]["spark_start_seconds"] > 0
    # A run killed after all but one unit: that unit is answered again, the others are kept.
    (tmp_path / "spark" / "COMPLETED").unlink()
    for table_name in ("answers", "rejections"):
        (tmp_path / "spark" / table_name / "part-00001.parquet").unlink()
    assert _spark(source, tmp_path / "spark", "--set", "output.task_rows=100", "--resume") == 0
    resumed = _assert_same_output(tmp_path / "spark", tmp_path / "predict")
    assert resumed["counts"]["reused_parts"] == units - 1
    assert (
        resumed["spark"]["executors"] and sum(e["tasks"] for e in resumed["spark"]["executors"].values()) == 1
    )


def test_resume_refuses_another_engines_folder(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _predict([], SAMPLE, tmp_path / "out")
    (tmp_path / "out" / "COMPLETED").unlink()
    assert _spark(SAMPLE, tmp_path / "out", "--resume") == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if "docqa spark: error:" in line]
    assert len(errors) == 1 and "docqa predict" in errors[0], errors


def test_a_model_that_does_not_load_exits_2_with_one_line(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert _spark(SAMPLE, tmp_path / "out", "--model", str(broken)) == 2
    captured = capfd.readouterr()  # the JVM's stderr too
    errors = [line for line in captured.err.splitlines() if line.startswith("docqa spark: error:")]
    assert len(errors) == 1 and "ModelLoadError: cannot load QA model" in errors[0], errors
    assert "Traceback" not in captured.err and "\tat org.apache" not in captured.err, captured.err[-2000:]
    assert not (tmp_path / "out" / "COMPLETED").exists()


def test_spark_settings_take_conf_items_and_keep_the_users_over_docqas() -> None:
    from pipelines.spark_job import default_master, spark_settings

    settings = spark_settings("local[2]", ["spark.log.level=INFO", "spark.sql.shuffle.partitions=4"])
    assert settings["spark.log.level"] == "INFO" and settings["spark.sql.shuffle.partitions"] == "4"
    assert settings["spark.driver.host"] == "127.0.0.1"
    assert "spark.driver.host" not in spark_settings("spark://h:7077", [])
    assert spark_settings("local[2]", [], debug=True)["spark.log.level"] == "WARN"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        spark_settings(None, ["spark.executor.memory"])
    assert default_master("yarn") == "yarn"


def test_an_empty_input_gives_empty_tables_and_completed(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.string()), ("question", pa.string()), ("context", pa.string())])
    source = tmp_path / "empty.parquet"
    pq.write_table(schema.empty_table(), source)
    _predict([], source, tmp_path / "predict")
    assert _spark(source, tmp_path / "spark") == 0
    for table in ("answers", "rejections"):
        ours, theirs = pq.read_table(tmp_path / "spark" / table), pq.read_table(tmp_path / "predict" / table)
        assert ours.num_rows == 0 and ours.schema.remove_metadata().equals(theirs.schema.remove_metadata())
    assert json.loads((tmp_path / "spark" / "_run.json").read_text())["counts"]["rows_read"] == 0
    assert (tmp_path / "spark" / "COMPLETED").exists()


def test_spark_submit_runs_the_job_module(tmp_path: Path) -> None:
    """`spark-submit pipelines/spark_job.py` (the cluster path): spark-submit's master and Python."""
    import pipelines.spark_job

    submit = Path(sys.executable).parent / "spark-submit"
    if not submit.exists():
        pytest.skip("pyspark's spark-submit is not beside this interpreter")
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    command = [str(submit), "--master", "local[2]", "--conf", "spark.log.level=ERROR"]
    command += [pipelines.spark_job.__file__, "--input", str(SAMPLE), "--output", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert (
        info["engine"] == "spark:local[2]"
        and info["counts"]["rows_read"] == pq.read_metadata(SAMPLE).num_rows
    )
    assert (tmp_path / "out" / "COMPLETED").exists()
