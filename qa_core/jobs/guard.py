"""The top of every command: a job-level error becomes one line on stderr and exit code 2.

Only docqa's own errors (`qa_core.errors.JobError` and its subclasses) are job errors: they say what to
change. Anything else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from qa_core.errors import JobError

JOB_ERROR_EXIT_CODE = 2


def run_guarded(command: str, job: Callable[[], Any], debug: bool = False) -> int:
    """Runs a command's job; a `JobError` is printed as `docqa COMMAND: error: MESSAGE`.

    Args:
        command: The command's name, for the message (`predict`, `run`, ...).
        job: The command itself; an int result is the exit code, anything else means 0.
        debug: Re-raise job errors, with their tracebacks, instead of printing one line.

    Returns:
        The job's exit code, or 2 after a job error.
    """
    try:
        result = job()
    except JobError as err:
        if debug:
            raise
        print(f"docqa {command}: error: {err}", file=sys.stderr)
        return JOB_ERROR_EXIT_CODE
    return result if isinstance(result, int) else 0
