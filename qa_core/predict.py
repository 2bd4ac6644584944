"""`docqa predict`: the in-process job, Parquet in, the output layout out, no Beam."""

from __future__ import annotations

import logging
import platform
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from qa_core import __version__
from qa_core.calibration import apply_model_calibration
from qa_core.config import QAConfig
from qa_core.engine import QAEngine
from qa_core.model import QAModel, load_qa_model
from qa_core.read import count_rows, iter_rows, read_input_schema, resolve_inputs
from qa_core.schema import answer_schema, rejection_schema
from qa_core.storage import redact_url
from qa_core.write import OutputWriter, check_output

logger = logging.getLogger(__name__)


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
) -> dict[str, Any]:
    """The `_run.json` document shared by both engines."""
    rows = counts.get("rows_read", 0)
    return {
        "docqa_version": __version__,
        "engine": engine,
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "model": {
            "id": model_id,
            "revision": revision,
            "device": device,
            "dtype": config.model.dtype,
        },
        "inputs": [redact_url(f) for f in inputs],
        "counts": counts,
        "timings": {
            "wall_seconds": round(wall_seconds, 3),
            "rows_per_second": round(rows / wall_seconds, 3) if wall_seconds > 0 else None,
        },
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }


def predict(
    config: QAConfig,
    input_pattern: str,
    output_dir: str,
    *,
    overwrite: bool = False,
    progress: bool = True,
    model: QAModel | None = None,
) -> dict[str, Any]:
    """Answers every row of the input Parquet files and writes the output layout.

    Args:
        config: The resolved config.
        input_pattern: A Parquet file, directory or glob (local or fsspec URL).
        output_dir: Output folder (local or fsspec URL).
        overwrite: Replace an existing output.
        progress: Show a progress bar with rows/s on stderr.
        model: An already loaded model (tests, benchmarks); loaded from `config.model` when None.

    Returns:
        The `_run.json` document.

    Raises:
        InputError, OutputError, ModelLoadError: Job-level problems, before any row is processed.
    """
    started = time.perf_counter()
    config = apply_model_calibration(config)
    files = resolve_inputs(input_pattern)
    schema = read_input_schema(files, config.input)
    check_output(output_dir, overwrite=overwrite)  # before the (slow) model load; changes nothing
    qa_model = model if model is not None else load_qa_model(config.model)
    passthrough = [schema.field(c) for c in config.input.passthrough_columns]
    writer = OutputWriter(
        output_dir,
        answer_schema(schema.id_field.type, passthrough, config.decode.top_k),
        rejection_schema(schema.id_field.type, schema.fields),
        config.decode.top_k,
        overwrite=overwrite,
    )
    engine = QAEngine(qa_model, config)
    total = count_rows(files) if progress else None  # footers only: gives the bar its ETA
    with tqdm(desc="rows", unit="row", total=total, disable=not progress, file=sys.stderr) as bar:
        for result in engine.answer_rows(iter_rows(files, config.input)):
            writer.write(result)
            bar.update(1)
    counts = engine.stats.to_dict()
    info = run_info(
        config,
        model_id=qa_model.model_id,
        revision=qa_model.revision,
        device=str(qa_model.device),
        engine="predict",
        inputs=files,
        counts=counts,
        wall_seconds=time.perf_counter() - started,
    )
    writer.close(info)
    logger.info(
        "rows %d: answered %d, rejected %d", counts["rows_read"], counts["answered"], counts["rejected"]
    )
    return info
