"""A model's score calibration: a softmax temperature stored beside its weights, applied by default.

`docqa calibrate` fits the temperature on labelled data and writes `MODEL_DIR/calibration.json`;
every job whose `decode.calibration` is `auto` (the default) then scores with it. The applied value is
part of the resolved config, so `_run.json` shows it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from qa_core.config import QAConfig
from qa_core.errors import ConfigError

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"


def read_calibration(model_dir: str) -> dict[str, Any] | None:
    """The calibration document of a local model directory, or None when it has none.

    Raises:
        ConfigError: When the file exists but is not valid.
    """
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        temperature = float(document["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"invalid calibration file {path}: {err}; refit it with docqa calibrate") from err
    if temperature <= 0:
        raise ConfigError(f"invalid calibration file {path}: temperature must be > 0")
    return dict(document)


def write_calibration(model_dir: str, document: dict[str, Any]) -> Path:
    """Writes `calibration.json` (must hold a positive `temperature`) into a model directory."""
    path = Path(model_dir) / CALIBRATION_FILE
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def apply_model_calibration(config: QAConfig) -> QAConfig:
    """`config` with the model's fitted temperature when `decode.calibration` is `auto` and one exists."""
    if config.decode.calibration != "auto":
        return config
    document = read_calibration(config.model.name_or_path)
    if document is None:
        return config
    temperature = float(document["temperature"])
    logger.info("scores calibrated with temperature %.4f from %s", temperature, config.model.name_or_path)
    return dataclasses.replace(config, decode=dataclasses.replace(config.decode, temperature=temperature))
