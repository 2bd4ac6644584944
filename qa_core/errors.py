"""docqa's job-level errors: a job that cannot run as configured, reported as one line saying what to change.

Every command catches `JobError` (and only it) at the top, prints its message and exits with code 2
(`qa_core.jobs.guard.run_guarded`). Anything else that escapes a command is a bug and keeps its traceback.
A bad *row* is never a `JobError`: it becomes a rejection with a reason code (`qa_core.records.Reason`).
"""

from __future__ import annotations


class JobError(Exception):
    """Base of the errors that fail a whole job; the message says what to change."""


class ConfigError(JobError, ValueError):
    """A configuration value or file is invalid."""


class InputError(JobError, RuntimeError):
    """The job's input cannot be used; the message names the file."""


class OutputError(JobError, RuntimeError):
    """The output location cannot be used, or the written output does not add up."""


class ModelLoadError(JobError, RuntimeError):
    """The model cannot be loaded as configured (missing, unsafe, no fast tokenizer, GPU absent)."""


class DeviceFailedError(JobError, RuntimeError):
    """The device, or the process that runs the model, can run no more batches: the job fails.

    A batch that merely fails (out of memory, a bad window) is split and only windows that fail alone
    reject their rows; this error is for what no split can fix: a CUDA error that leaves the context
    unusable, a device server that is out of step. Rejecting every later row instead would mark a broken
    run COMPLETED.
    """


class WorkerError(JobError, RuntimeError):
    """A worker process died without reporting (killed, out of memory); the job has no `COMPLETED`."""
