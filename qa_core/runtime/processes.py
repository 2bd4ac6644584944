"""Helpers shared by the spawned processes of `docqa predict --workers` (workers and the device server)."""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import pickle
import threading
import time
import traceback
from typing import Any

PARENT_POLL_SECONDS = 1.0  # how often a spawned process checks that its parent is still alive


def start_child(log_level: int) -> None:
    """A spawned process's first call: the parent's log level and format, and the parent watch."""
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
    )
    start_parent_watch()


def skip_final_collection() -> None:
    """Shortens the exit of a process whose work is done and written (`gc.freeze()`).

    A process that has imported torch and transformers (and loaded a model) spends most of its exit in
    Python's last garbage collection over every module's objects: a spawned worker's exit, which its parent
    waits for, and every `docqa` command's end (timings in benchmarks/RESULTS.md). Frozen objects are left
    out of it; the process ends normally otherwise (finalizers and atexit handlers run: ending with
    `os._exit` instead left multiprocessing's semaphores to the resource tracker, which warns). Call it
    once the process's outputs are closed: the workers, the device server and the `docqa` console script.
    """
    gc.freeze()


def report_error(messages: Any, part: int, where: str, err: BaseException) -> None:
    """Sends `("error", part, err)` to the parent, with this process's traceback as a note.

    Call it from the `except` block that caught `err` (the note is that block's traceback).
    """
    err.add_note(f"in {where}:\n{traceback.format_exc()}")
    messages.put(("error", part, picklable(err)))


def start_parent_watch() -> None:
    """Ends this spawned process when its parent is gone (killed), from a daemon thread.

    Its rows would be thrown away anyway, and a process left running would keep writing into a folder
    that the next run may be using (or keep holding the GPU).
    """
    threading.Thread(target=_exit_with_parent, name="docqa-parent-watch", daemon=True).start()


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    while parent is not None and parent.is_alive():
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


def picklable(err: BaseException) -> BaseException:
    """The error itself when it crosses a process boundary intact, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:  # any pickling failure: send the text instead
        return RuntimeError(f"{type(err).__name__}: {err}")
