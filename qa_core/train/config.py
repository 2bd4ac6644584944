"""Configuration and result records of `docqa train` (see `qa_core.train.trainer`).

The hyperparameters are the `train` section of the same YAML / `--set` machinery as inference
(`qa_core.config`); the windows come from its `featurize` section, so a model is trained on the windows
inference cuts. `TrainConfig` and `train_config_from_dict` are defined in `qa_core.config_train`, beside
the other sections, so that every config load checks the `train` section without the config importing
this package; they are re-exported here, where `docqa train` reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qa_core.config import QAConfig, config_from_dict, load_data
from qa_core.config_train import TrainConfig, train_config_from_dict

__all__ = [
    "RESUME_FREE_FIELDS",
    "TrainConfig",
    "TrainResult",
    "load_train_config",
    "train_config_from_dict",
]

# Fields that may change between a run and its resumption without changing the run.
RESUME_FREE_FIELDS = frozenset({"threads", "checkpoint_every", "keep_checkpoints", "log_every", "progress"})


def load_train_config(
    paths: Iterable[str] = (),
    overrides: Iterable[str] = (),
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[QAConfig, TrainConfig]:
    """The inference config and the training config of YAML files, `--set` items and flags.

    Args:
        paths: YAML files, later ones winning (`qa_core.config.load_config`).
        overrides: `section.key=value` items, over every file.
        flags: `{section: {field: value}}` of `docqa train`'s own flags, over everything else.

    Raises:
        ConfigError: On an unreadable file, an unknown key or a bad value in any section.
    """
    data = load_data(paths, overrides, [flags] if flags else [])
    return config_from_dict(data), train_config_from_dict(data)


@dataclass(frozen=True)
class TrainResult:
    """What a run produced.

    Attributes:
        output_dir: Where the model was written.
        steps: Optimizer steps done; `total_steps` of the schedule.
        tokens: Real (unpadded) tokens trained on.
        seconds: Training wall time, summed over resumptions.
        final_loss: Mean loss of the last logged interval.
        data_digest: A digest of the data order consumed (equal for equal runs).
        finished: False when `stop_after_steps` stopped the run early.
        data_stats: Counts of the training windows.
        eval: Scores of `--eval` (EvalResult.to_dict()), or None.
    """

    output_dir: str
    steps: int
    total_steps: int
    tokens: int
    seconds: float
    final_loss: float
    data_digest: str
    finished: bool
    data_stats: dict[str, Any]
    eval: dict[str, Any] | None = None
