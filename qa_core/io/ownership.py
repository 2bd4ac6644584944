"""Who owns an output folder, and whether its footers add up: the checks before `COMPLETED`.

Preparing a folder (`qa_core.io.write.prepare_output`) writes `_job.json` with a fresh owner token and the
job's plan (config hash, inputs, part ranges: what `docqa predict --resume` checks). The token is read
again before each part file is put in place and before `COMPLETED`, so of two jobs started on one folder
the later one owns it and the earlier one stops with one line instead of mixing its files into the
other's. Object stores offer no portable lock, hence a token checked at each step rather than a lock.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Any

import fsspec

from qa_core.errors import OutputError
from qa_core.io.read import count_rows
from qa_core.io.schema import ANSWERS_DIR, REJECTIONS_DIR
from qa_core.io.storage import storage_errors, to_url, url_to_fs

JOB_FILE = "_job.json"
"""The owner token and plan of the job writing a folder (hidden from readers by its `_`)."""


def claim_output(output_dir: str, plan: dict[str, Any]) -> str:
    """Writes `_job.json` with a new owner token and `plan`: from now on the folder is this job's.

    Returns:
        The owner token, to pass to `check_owner`.

    Raises:
        OutputError: When the storage refuses the write.
    """
    token = uuid.uuid4().hex
    document = {
        **plan,
        "owner": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_text(output_dir, JOB_FILE, json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    return token


def read_job_file(output_dir: str) -> dict[str, Any] | None:
    """The `_job.json` of the folder, or None when it has none.

    Raises:
        OutputError: When it cannot be read or is not a JSON object.
    """
    fs, root = fsspec.core.url_to_fs(output_dir)
    path = f"{root.rstrip('/')}/{JOB_FILE}"
    with storage_errors(OutputError, "cannot read the output", output_dir):
        fs.invalidate_cache()  # another process may have replaced it behind this file system's cache
        if not fs.exists(path):
            return None
        text = fs.cat_file(path)
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise OutputError(
            f"{output_dir}/{JOB_FILE} is not valid JSON ({err}); rerun with --overwrite"
        ) from err
    if not isinstance(document, dict):
        raise OutputError(f"{output_dir}/{JOB_FILE} is not a JSON object; rerun with --overwrite")
    return document


def check_owner(output_dir: str, token: str) -> None:
    """Fails when another job has claimed `output_dir` since this one did (its `_job.json` changed).

    Raises:
        OutputError: Naming the other job, so that this one writes no further file and no `COMPLETED`.
    """
    document = read_job_file(output_dir) or {}
    if document.get("owner") == token:
        return
    other = (
        f"a job on {document.get('host')} (pid {document.get('pid')}, started {document.get('started')})"
        if document
        else "another job (its _job.json is gone)"
    )
    raise OutputError(
        f"output {output_dir} was taken over by {other} while this job ran; this job stops without "
        "marking it COMPLETED (run one job per output folder)"
    )


def output_files(output_dir: str, folder: str) -> list[str]:
    """The finished part files of `folder` (answers or rejections) of an output, in name order (URLs)."""
    fs, root, protocol = url_to_fs(output_dir)
    fs.invalidate_cache()  # other processes (workers, a runner) wrote these behind this cache's back
    return [to_url(protocol, f) for f in sorted(fs.glob(f"{root.rstrip('/')}/{folder}/*.parquet"))]


def verify_output_rows(output_dir: str, rows_read: int) -> tuple[int, int]:
    """The answers and rejections in the output's footers, once they add up to the rows read.

    Raises:
        OutputError: When answers + rejections written differ from the rows read (the run must not be
            marked COMPLETED).
    """
    with storage_errors(OutputError, "cannot check the output", output_dir):
        answered = count_rows(output_files(output_dir, ANSWERS_DIR))
        rejected = count_rows(output_files(output_dir, REJECTIONS_DIR))
    if rows_read != answered + rejected:
        raise OutputError(
            f"rows read ({rows_read}) != answers ({answered}) + rejections ({rejected}) in {output_dir}; "
            "the run is not marked COMPLETED: rerun with --overwrite (docqa predict: or --resume)"
        )
    return answered, rejected


def _write_text(output_dir: str, name: str, text: str) -> None:
    fs, root = fsspec.core.url_to_fs(output_dir)
    with (
        storage_errors(OutputError, "cannot write the output", output_dir),
        fs.open(f"{root.rstrip('/')}/{name}", "w") as handle,
    ):
        handle.write(text)
