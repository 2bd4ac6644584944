"""`s3://` input and output against a local S3-compatible server (moto's server mode, on loopback).

The tests start the server themselves on a free 127.0.0.1 port and point the AWS clients at it through
the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which is also where
docqa takes credentials from. `docqa predict` reads and writes through fsspec (s3fs); `docqa run` reads
and writes through Beam's S3 file system (boto3) and fails fast where Beam cannot write `s3://`.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

pytest.importorskip("boto3")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import boto3  # noqa: E402
import fsspec  # noqa: E402
from moto.core.authorization import enable_iam_authentication  # noqa: E402

import pipelines.io  # noqa: E402
from docqa.cli import main  # noqa: E402
from tests.conftest import write_parquet  # noqa: E402

BUCKET = "docqa-test"
SECRET = "s3cr3t-Do-Not-Log-7f3a9c"  # a distinctive value to search the logs and outputs for
ROWS = [
    {"id": f"s{i}", "question": "what city?", "context": f"the city of tokyo is north of the river {i}"}
    for i in range(12)
] + [{"id": "blank", "question": "  ", "context": "the city"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback for this module, stopped at the end."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _clear_fs_caches() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Credentials and endpoint in the environment, a fresh bucket; yields an fsspec S3 file system."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "docqa-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _clear_fs_caches()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    yield fs
    for key in fs.find(BUCKET):
        fs.rm(key)
    client.delete_bucket(Bucket=BUCKET)
    _clear_fs_caches()


def upload_input(s3: Any, tmp_path: Path) -> str:
    """Two input files under `s3://BUCKET/in/`."""
    for part, rows in enumerate((ROWS[:7], ROWS[7:])):
        local = write_parquet(tmp_path / f"part{part}.parquet", rows)
        s3.put(str(local), f"{BUCKET}/in/part{part}.parquet")
    return f"s3://{BUCKET}/in/"


def read_s3_output(s3: Any, prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    s3.invalidate_cache()
    assert s3.exists(f"{prefix}/COMPLETED")
    tables = []
    for folder in ("answers", "rejections"):
        files = sorted(s3.glob(f"{prefix}/{folder}/*.parquet"))
        assert files and not s3.glob(f"{prefix}/{folder}/_*"), "only finished part files are left"
        rows: list[dict[str, Any]] = []
        for file in files:
            with s3.open(file, "rb") as handle:
                rows += pq.read_table(handle).to_pylist()
        tables.append(rows)
    info = json.loads(s3.cat_file(f"{prefix}/_run.json"))
    return tables[0], tables[1], info


def answer_keys(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["id"], r["answer"], r["start"], r["end"], round(r["score"], 6)) for r in rows)


def docqa(engine: str, source: str, out: str, model_dir: Path, *extra: str) -> int:
    argv = [engine, "--input", source, "--output", out, "--model", str(model_dir), *extra]
    return main([*argv, "--no-progress"] if engine == "predict" else argv)


@pytest.fixture(scope="module")
def local_answers(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> list[tuple[Any, ...]]:
    base = tmp_path_factory.mktemp("s3_local")
    source = write_parquet(base / "in.parquet", ROWS)
    assert docqa("predict", str(source), str(base / "out"), tiny_model_dir) == 0
    return answer_keys(pq.read_table(base / "out" / "answers").to_pylist())


@pytest.mark.parametrize("engine", ["predict", "run"])
def test_s3_input_and_output(
    engine: str,
    s3: Any,
    *,
    tmp_path: Path,
    tiny_model_dir: Path,
    local_answers: list[tuple[Any, ...]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # everything any library logs, botocore and s3fs included
    source = upload_input(s3, tmp_path)
    out = f"s3://{BUCKET}/out/{engine}"
    assert docqa(engine, source, out, tiny_model_dir) == 0
    answers, rejections, info = read_s3_output(s3, f"{BUCKET}/out/{engine}")
    assert answer_keys(answers) == local_answers, "the same answers as from local files"
    assert [(r["id"], r["reason"]) for r in rejections] == [("blank", "EMPTY_QUESTION")]
    assert info["inputs"] == [f"s3://{BUCKET}/in/part0.parquet", f"s3://{BUCKET}/in/part1.parquet"]
    assert info["counts"]["rows_read"] == len(ROWS)
    # No credential value is ever logged or written.
    captured = capsys.readouterr()
    assert caplog.records, "DEBUG logging was captured"
    for text in (
        caplog.text,
        captured.out,
        captured.err,
        s3.cat_file(f"{BUCKET}/out/{engine}/_run.json").decode(),
    ):
        assert SECRET not in text


def test_run_reads_s3_through_fsspec_without_beam_s3(
    s3: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Beam's S3 file system (no boto3 for Beam), `docqa run` still reads `s3://` via fsspec."""
    monkeypatch.setitem(pipelines.io._SCHEME_NEEDS, "s3", "docqa_no_such_module")
    source = upload_input(s3, tmp_path)
    out = tmp_path / "out"
    assert docqa("run", source, str(out), tiny_model_dir) == 0
    assert pq.read_table(out / "answers").num_rows == len(ROWS) - 1


def test_run_s3_output_without_beam_s3_fails_fast(
    s3: Any,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(pipelines.io._SCHEME_NEEDS, "s3", "docqa_no_such_module")
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    out = f"s3://{BUCKET}/out/nobeam"
    assert docqa("run", str(source), out, tiny_model_dir) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}" in err and "apache-beam[aws]" in err and "docqa predict" in err
    assert not s3.exists(f"{BUCKET}/out/nobeam")


@pytest.mark.parametrize("engine", ["predict", "run"])
@pytest.mark.parametrize("side", ["input", "output"])
def test_missing_bucket_is_named(
    engine: str,
    side: str,
    s3: Any,
    *,
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local = str(write_parquet(tmp_path / "in.parquet", ROWS))
    missing = "s3://docqa-no-such-bucket/some/prefix"
    source, out = (missing, str(tmp_path / "out")) if side == "input" else (local, missing)
    assert docqa(engine, source, out, tiny_model_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"docqa {engine}: error: cannot ")
    assert "bucket 'docqa-no-such-bucket' does not exist" in err[0]
    bucket_names = [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
    assert "docqa-no-such-bucket" not in bucket_names, "a missing bucket is never created"


@pytest.mark.parametrize("engine", ["predict", "run"])
@pytest.mark.parametrize("side", ["input", "output"])
def test_wrong_credentials_fail_fast_without_leaking_them(
    engine: str,
    side: str,
    s3: Any,
    *,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    local = str(write_parquet(tmp_path / "in.parquet", ROWS))
    source = upload_input(s3, tmp_path) if side == "input" else local
    out = str(tmp_path / "out") if side == "input" else f"s3://{BUCKET}/out/denied"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    _clear_fs_caches()
    with enable_iam_authentication():  # from here on the server checks every request's signature
        code = docqa(engine, source, out, tiny_model_dir)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert f"access denied to s3://{BUCKET}" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]
    assert SECRET not in err and SECRET not in caplog.text
    assert not (tmp_path / "out").exists()
