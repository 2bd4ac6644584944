"""The `_run.json` document every job writes beside its output (predict, its workers, the Beam job)."""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch

from qa_core.config import QAConfig
from qa_core.io.storage import redact_url
from qa_core.runtime.cpu import probe_cpu
from qa_core.runtime.loaders import model_implementation
from qa_core.versions import DOCQA_VERSION, package_versions


def run_info(
    config: QAConfig,
    *,
    model_id: str,
    revision: str,
    device: str,
    engine: str,
    inputs: list[str],
    counts: dict[str, Any],
    wall_seconds: float,
    answering: tuple[float, float] | None = None,
    answered_rows: int | None = None,
    batch_shape: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `_run.json` document: config and hash, model, inputs, counts, timings, environment.

    Args:
        config: The resolved config (stored whole, with its hash).
        model_id: The checkpoint's id or path.
        revision: Its revision (a content hash for a local directory).
        device: Where it ran.
        engine: `predict`, or `beam:<runner class>`.
        inputs: The input files (URLs redacted here).
        counts: The engine's counters.
        wall_seconds: The whole job's seconds.
        answering: Seconds from the job's start to the first and to the end of answering, when the
            engine knows them (`docqa predict`). Before it: reading the footers, loading the model (every
            worker's, or the device server's) and preparing the output; after it: closing the files and
            waiting for worker processes to exit. The timings then give start-up and the answering's own
            rate, which a longer input approaches (start-up is paid once per job: on a GPU with
            `--workers`, tens of seconds).
        answered_rows: Rows this job answered, when fewer than it read (`--resume` keeps finished
            parts): the rates count these.
        batch_shape: The batch caps the engine ran with and why (`qa_core.runtime.shapes.BatchShape`).
    """
    rows = counts.get("rows_read", 0) if answered_rows is None else answered_rows
    timings: dict[str, Any] = {
        "wall_seconds": round(wall_seconds, 3),
        "rows_per_second": round(rows / wall_seconds, 3) if wall_seconds > 0 else None,
    }
    if answering is not None:
        startup_seconds, answered_at = answering
        answer_seconds = answered_at - startup_seconds
        timings["startup_seconds"] = round(startup_seconds, 3)
        timings["answer_seconds"] = round(answer_seconds, 3)
        timings["answer_rows_per_second"] = round(rows / answer_seconds, 3) if answer_seconds > 0 else None
    return {
        "docqa_version": DOCQA_VERSION,
        "engine": engine,
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "model": {
            "id": model_id,
            "revision": revision,
            "device": device,
            "dtype": config.model.dtype,
            "implementation": model_implementation(config.model),
        },
        "inputs": [redact_url(f) for f in inputs],
        "batch_shape": batch_shape,
        "counts": counts,
        "timings": timings,
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            # The launcher's: workers of a remote runner run their image's (the Dockerfile's lock).
            "packages": package_versions(),
            "platform": platform.platform(),
            "cpu": probe_cpu().to_dict(),
        },
    }
