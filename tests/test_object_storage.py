"""`s3://` input and output against a local S3-compatible server (moto's server mode, on loopback).

The tests start the server themselves on a free 127.0.0.1 port and point the AWS clients at it through
the environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which is also where
docqa takes credentials from. `docqa predict` reads and writes through fsspec (s3fs); `docqa run` reads
and writes its part files through fsspec, as `docqa predict` does.

A silent endpoint (a loopback socket that accepts connections and never answers) checks that storage
timeouts end a job with one line instead of hanging it (`qa_core.io.storage`, `DOCQA_STORAGE_*`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
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
from qa_core.errors import ConfigError, InputError, OutputError  # noqa: E402
from qa_core.io.storage import (  # noqa: E402
    StorageLimits,
    describe_storage_error,
    is_storage_timeout,
    merge_s3_options,
    storage_errors,
)
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


def test_run_writes_an_s3_output_through_fsspec_without_beam_s3(
    s3: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`docqa run` writes its part files with qa_core's writer (fsspec), as predict does."""
    monkeypatch.setitem(pipelines.io._SCHEME_NEEDS, "s3", "docqa_no_such_module")
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    out = f"s3://{BUCKET}/out/nobeam"
    assert docqa("run", str(source), out, tiny_model_dir) == 0
    assert s3.exists(f"{BUCKET}/out/nobeam/COMPLETED")
    assert s3.ls(f"{BUCKET}/out/nobeam/answers")


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


# --- an endpoint that accepts connections and never answers ----------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SILENT_LIMITS = {
    "DOCQA_STORAGE_CONNECT_TIMEOUT": "1",
    "DOCQA_STORAGE_READ_TIMEOUT": "1",
    "DOCQA_STORAGE_RETRIES": "1",
}
HANG_LIMIT_S = 90  # a job still running then hangs (s3fs's and botocore's own defaults: many minutes)
BOUND_S = 30  # the job must have failed by then (2 attempts of 1 s, plus the start of the command)


class SilentEndpoint:
    """A TCP server on 127.0.0.1 that accepts every connection, reads what comes, and never replies."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.received: list[bytes] = []
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._connections.append(connection)
                self.received.append(b"")
                index = len(self.received) - 1
            reader = threading.Thread(target=self._read, args=(connection, index), daemon=True)
            self._threads.append(reader)
            reader.start()

    def _read(self, connection: socket.socket, index: int) -> None:
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.received[index] += data

    def request_lines(self) -> list[str]:
        """The first line of every request received (`PUT /bucket/key HTTP/1.1`)."""
        with self._lock:
            return [head.split(b"\r\n", 1)[0].decode("latin-1") for head in self.received if head]

    def close(self) -> None:
        """Stops the server: `shutdown` wakes the threads blocked in `accept` and `recv`."""
        with self._lock:
            sockets = [self._server, *self._connections]
        for sock in sockets:
            with contextlib.suppress(OSError):  # not connected (any more)
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
            assert not thread.is_alive(), "the silent endpoint's threads end"


@pytest.fixture
def silent_endpoint() -> Iterator[SilentEndpoint]:
    endpoint = SilentEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


def docqa_child(argv: list[str], endpoint: str) -> tuple[int, str, float]:
    """`python -m docqa ARGV` against `endpoint` with small storage limits: exit code, stderr, seconds.

    A child process, so that a job that hangs fails the test (after `HANG_LIMIT_S`) instead of hanging
    it, and so that the limits apply as they do for a user (read from the environment in a fresh process).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "DOCQA_STORAGE_"))}
    env.update(
        SILENT_LIMITS,
        AWS_ACCESS_KEY_ID="docqa-test-key",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
        AWS_EC2_METADATA_DISABLED="true",
        FSSPEC_CONFIG_DIR="/nonexistent/fsspec",
    )
    started = time.monotonic()
    try:
        child = subprocess.run(
            [sys.executable, "-m", "docqa", "--log-level", "WARNING", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_LIMIT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"docqa {' '.join(argv)} still ran after {HANG_LIMIT_S} s against a silent endpoint")
    return child.returncode, child.stderr, time.monotonic() - started


def error_line(stderr: str, command: str) -> str:
    """The one `docqa COMMAND: error:` line of stderr (Beam's import logs a warning of its own)."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(("WARNING", "2"))]
    assert len(lines) == 1 and lines[0].startswith(f"docqa {command}: error: "), stderr
    assert "Traceback" not in stderr and SECRET not in stderr
    return lines[0]


@pytest.mark.parametrize("engine", ["predict", "run"])
def test_silent_endpoint_input_fails_in_one_line(
    engine: str, silent_endpoint: SilentEndpoint, tmp_path: Path, tiny_model_dir: Path
) -> None:
    source = f"s3://{BUCKET}/in/"
    out = tmp_path / "out"
    argv = [engine, "--input", source, "--output", str(out), "--model", str(tiny_model_dir)]
    code, stderr, seconds = docqa_child(
        [*argv, "--no-progress"] if engine == "predict" else argv, silent_endpoint.url
    )
    assert code == 2, stderr
    assert seconds < BOUND_S, f"took {seconds:.1f} s"
    line = error_line(stderr, engine)
    if engine == "predict":
        assert stderr.strip() == line, "nothing else on stderr"
    assert line == (
        f"docqa {engine}: error: cannot read input: the storage endpoint for {source} did not answer "
        "within 1 s (2 attempts); check AWS_ENDPOINT_URL / the network, or raise the limits with "
        "DOCQA_STORAGE_READ_TIMEOUT / DOCQA_STORAGE_RETRIES"
    )
    assert len(silent_endpoint.request_lines()) == 2, "one request, tried twice (DOCQA_STORAGE_RETRIES=1)"
    assert not out.exists()


def test_silent_endpoint_output_fails_without_completed(
    silent_endpoint: SilentEndpoint, tmp_path: Path, tiny_model_dir: Path
) -> None:
    source = write_parquet(tmp_path / "in.parquet", ROWS)
    out = f"s3://{BUCKET}/out/silent"
    argv = ["predict", "--input", str(source), "--output", out, "--model", str(tiny_model_dir)]
    code, stderr, seconds = docqa_child([*argv, "--no-progress"], silent_endpoint.url)
    assert code == 2, stderr
    assert seconds < BOUND_S, f"took {seconds:.1f} s"
    line = error_line(stderr, "predict")
    assert stderr.strip() == line
    assert line.startswith(
        f"docqa predict: error: cannot write output: the storage endpoint for {out} did not answer within 1 s"
    )
    requests = silent_endpoint.request_lines()
    assert requests, "the endpoint was asked"
    assert not [r for r in requests if "COMPLETED" in r or r.startswith("PUT")], requests


def test_s3_limits_fill_in_only_what_the_user_left_unset() -> None:
    limits = StorageLimits(connect_timeout=3, read_timeout=4, retries=5)
    section: dict[str, object] = {}
    merge_s3_options(section, limits)
    assert section == {
        "config_kwargs": {
            "connect_timeout": 3,
            "read_timeout": 4,
            "retries": {"mode": "standard", "total_max_attempts": 6},
        }
    }
    # The user's fsspec config (FSSPEC_S3, ~/.config/fsspec) keeps its values; the rest is filled in.
    section = {"anon": False, "config_kwargs": {"read_timeout": 60, "retries": {"max_attempts": 9}}}
    merge_s3_options(section, limits)
    assert section == {
        "anon": False,
        "config_kwargs": {
            "read_timeout": 60,
            "connect_timeout": 3,
            "retries": {"max_attempts": 9, "mode": "standard"},
        },
    }
    # botocore's own AWS_MAX_ATTEMPTS / AWS_RETRY_MODE (or the profile's) stay in charge.
    section = {}
    merge_s3_options(section, limits, {"max_attempts": "4", "retry_mode": "adaptive"})
    assert section == {"config_kwargs": {"connect_timeout": 3, "read_timeout": 4, "retries": {}}}
    section = {"config_kwargs": "from an INI file"}
    merge_s3_options(section, limits)
    assert section == {"config_kwargs": "from an INI file"}


def test_storage_limits_from_the_environment() -> None:
    assert StorageLimits.from_env({}) == StorageLimits(connect_timeout=10, read_timeout=15, retries=2)
    env = {
        "DOCQA_STORAGE_CONNECT_TIMEOUT": "2.5",
        "DOCQA_STORAGE_READ_TIMEOUT": "40",
        "DOCQA_STORAGE_RETRIES": "0",
    }
    assert StorageLimits.from_env(env) == StorageLimits(connect_timeout=2.5, read_timeout=40, retries=0)
    for name, value in [
        ("DOCQA_STORAGE_READ_TIMEOUT", "10s"),
        ("DOCQA_STORAGE_READ_TIMEOUT", "0"),
        ("DOCQA_STORAGE_CONNECT_TIMEOUT", "inf"),
        ("DOCQA_STORAGE_RETRIES", "-1"),
        ("DOCQA_STORAGE_RETRIES", "2.5"),
    ]:
        with pytest.raises(ConfigError, match=name):
            StorageLimits.from_env({name: value})


def test_s3_file_systems_get_the_limits() -> None:
    """Whoever builds the file system (here fsspec directly), s3fs's class is tuned and the limits apply."""
    import s3fs

    assert fsspec.get_filesystem_class("s3") is s3fs.S3FileSystem, "s3fs's own class, not a subclass"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert s3fs.S3FileSystem.retries == 1, "s3fs's loop does not repeat botocore's retries"
    assert {"connect_timeout", "read_timeout", "retries"} <= fs.config_kwargs.keys()


def _timeouts() -> list[BaseException]:
    import aiohttp
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError
    from fsspec.exceptions import FSTimeoutError

    wrapped = OSError("the read failed")
    wrapped.__cause__ = ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b")
    return [
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9/b"),
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
        TimeoutError("timed out"),  # socket.timeout and asyncio.TimeoutError are this builtin
        FSTimeoutError(),
        wrapped,
    ]


@pytest.mark.parametrize("err", _timeouts(), ids=lambda e: type(e).__name__)
def test_timeouts_are_described_with_the_url_and_the_limit(err: BaseException) -> None:
    assert is_storage_timeout(err)
    text = describe_storage_error(err, "s3://user:pass@bkt/in/")
    assert text.startswith("the storage endpoint for s3://***@bkt/in/ did ")
    assert "pass" not in text and "\n" not in text
    connect = type(err).__name__ == "ConnectTimeoutError"
    assert ("DOCQA_STORAGE_CONNECT_TIMEOUT" in text) == connect
    assert " within " in text and "s (" in text


def test_storage_errors_become_one_line_of_the_jobs_error() -> None:
    with (
        pytest.raises(OutputError) as raised,
        storage_errors(OutputError, "cannot write the output", "s3://k:s@b/o"),
    ):
        raise PermissionError("Forbidden")
    assert str(raised.value).startswith("cannot write the output: access denied to s3://***@b/o (Forbidden)")
    assert isinstance(raised.value.__cause__, PermissionError)
    with pytest.raises(ValueError, match="a bug"), storage_errors(OutputError, "x", "/tmp/o", catch=OSError):
        raise ValueError("a bug")  # narrowed to OSError: anything else is not storage and keeps its type
    with storage_errors(InputError, "cannot read input", "/tmp/i"):
        pass  # nothing raised, nothing changed


def test_other_errors_are_no_timeouts() -> None:
    from botocore.exceptions import EndpointConnectionError

    for err in (ValueError("x"), FileNotFoundError("x"), EndpointConnectionError(endpoint_url="http://h")):
        assert not is_storage_timeout(err)
    assert "did not answer" in describe_storage_error(TimeoutError(), "memory://x/y")


def test_a_timeout_while_reading_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that stops answering mid-job (footers, row counts, rows): the job's one-line InputError."""
    from botocore.exceptions import ReadTimeoutError

    from qa_core.config import InputConfig
    from qa_core.errors import InputError
    from qa_core.io import read

    def silent_open(*args: object, **kwargs: object) -> Any:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/in/part0.parquet")

    monkeypatch.setattr(read.fsspec, "open", silent_open)
    file = f"s3://{BUCKET}/in/part0.parquet"
    expected = f"cannot read input: the storage endpoint for {file} did not answer within "
    for call in (
        lambda: read.read_input_schema([file], InputConfig()),
        lambda: read.file_row_counts([file]),
        lambda: list(read.iter_rows([file], InputConfig())),
    ):
        with pytest.raises(InputError) as raised:
            call()
        assert str(raised.value).startswith(expected), raised.value


def test_s3_resume_keeps_finished_parts(s3: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    """`--resume` on an object store: a folder holding only `_job.json` (killed before its first part:
    an object store has no empty folders), then one with a part lost."""
    source = upload_input(s3, tmp_path)
    out = f"s3://{BUCKET}/out/resume"
    settings = ["--set", "output.part_rows=2"]
    assert docqa("predict", source, out, tiny_model_dir, *settings) == 0
    clean = answer_keys(read_s3_output(s3, f"{BUCKET}/out/resume")[0])
    for name in s3.ls(f"{BUCKET}/out/resume/answers") + s3.ls(f"{BUCKET}/out/resume/rejections"):
        s3.rm(name)
    s3.rm(f"{BUCKET}/out/resume/COMPLETED")
    assert docqa("predict", source, out, tiny_model_dir, *settings, "--resume") == 0
    answers, _, info = read_s3_output(s3, f"{BUCKET}/out/resume")
    assert answer_keys(answers) == clean and info["counts"]["reused_rows"] == 0

    s3.rm(f"{BUCKET}/out/resume/COMPLETED")
    s3.rm(f"{BUCKET}/out/resume/rejections/part-00001.parquet")
    assert docqa("predict", source, out, tiny_model_dir, *settings, "--resume") == 0
    answers, _, info = read_s3_output(s3, f"{BUCKET}/out/resume")
    assert answer_keys(answers) == clean
    assert info["counts"]["reused_parts"] == info["counts"]["parts"] - 1
