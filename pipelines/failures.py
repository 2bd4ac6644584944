"""A failed distributed job in one line: Beam's runners and Spark report a worker's error in their own types.

Shared by `docqa run` (Beam) and `docqa spark`; imports neither framework.
"""

from __future__ import annotations

import re

from qa_core.errors import JobError


class PipelineError(JobError, RuntimeError):
    """The pipeline itself failed (on the runner or a worker); the message is the cause in one line."""


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$")


def summarize_failure(err: BaseException) -> str:
    """One line saying why a pipeline failed.

    Runners report worker failures in their own exception types, often with the worker's traceback in
    the message; the root cause is the last `SomeError: message` line of it, else the first line.
    """
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    found = [m for m in map(_ERROR_LINE.match, lines) if m]
    if found:
        name, message = found[-1].group(1).rsplit(".", 1)[-1], found[-1].group(2)
    else:
        name, message = type(err).__name__, lines[0] if lines else ""
    message = re.sub(r"\s*\[while running '[^']*'\]\s*$", "", message)
    if "Channel closed prematurely" in message or "Worker subprocess exited" in message:
        message = f"a worker process died ({message})"
    return f"{name}: {message}" if message else name
