"""The `train` section of a config file: `docqa train`'s hyperparameters, checked wherever a config loads.

A config file may hold a `train` section beside the inference sections (configs/base.yaml lists its
keys). `qa_core.config.config_from_dict` checks it on every load, so a bad `train` key fails
`docqa predict` as clearly as `docqa train`, yet keeps it out of `QAConfig`. It lives beside the other
sections, not in `qa_core.train`, so that the config loader imports it without importing the training
package: the dependency runs one way, `qa_core.train.config` -> `qa_core.config` -> this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qa_core.config_layers import build_section
from qa_core.config_sections import FeaturizeConfig
from qa_core.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and run settings of a fine-tuning run.

    Attributes:
        learning_rate: Peak AdamW learning rate.
        batch_size: Windows per forward pass (micro-batch).
        grad_accum: Micro-batches per optimizer step; the effective batch is `batch_size * grad_accum`.
        epochs: Passes over the training windows (fractions allowed); ignored when `max_steps` is set.
        max_steps: Optimizer steps of the whole run; the schedule decays to 0 at this step.
        warmup_ratio: Fraction of the steps with a linear warm-up from 0 to `learning_rate`.
        weight_decay: AdamW weight decay (not applied to biases and LayerNorm weights).
        max_grad_norm: Gradient clipping norm (0 disables clipping).
        seed: Seeds the head initialisation, dropout and the data order.
        checkpoint_every: Save a checkpoint every N optimizer steps (0: only at the end).
        keep_checkpoints: Checkpoints kept (the oldest are deleted).
        bf16: Use bfloat16 autocast (CPU with AVX512-BF16/AMX, or CUDA); weights stay fp32.
        threads: torch intra-op threads (None: torch's default).
        sort_chunk_batches: Batches per length-sorting chunk.
        pad_to_multiple_of: Padded length of a batch is its longest window rounded up to this.
        featurize: Window size and stride: the config's `featurize` section, as inference uses it (not a
            key of the `train` section).
        max_train_examples: Use only the first N training examples (smoke runs).
        drop_ambiguous: Skip answers listed in the ambiguous-offsets side file (kept by default).
        log_every: A log line every N optimizer steps.
        progress: Show a tqdm progress bar on stderr.
    """

    learning_rate: float = 1e-4
    batch_size: int = 32
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 42
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    bf16: bool = True
    threads: int | None = None
    sort_chunk_batches: int = 100
    pad_to_multiple_of: int = 8
    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    max_train_examples: int | None = None
    drop_ambiguous: bool = False
    log_every: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (self.epochs > 0, "epochs must be > 0"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay, max_grad_norm must be >= 0"),
            (self.checkpoint_every >= 0 and self.keep_checkpoints >= 1, "bad checkpoint settings"),
            (self.threads is None or self.threads >= 1, "threads must be >= 1"),
            (self.sort_chunk_batches >= 1 and self.pad_to_multiple_of >= 1, "bad batching settings"),
            (self.max_train_examples is None or self.max_train_examples >= 1, "max_train_examples < 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train: {message}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data."""
        return dataclasses.asdict(self)


def train_config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """The `TrainConfig` of plain config data: its `train` section, windows from its `featurize` section.

    Raises:
        ConfigError: On an unknown key, a wrongly typed value or a failed check.
    """
    values = data.get("train") or {}
    if not isinstance(values, Mapping):
        raise ConfigError("config section 'train' must be a mapping")
    if "featurize" in values:
        raise ConfigError(
            "train.featurize is not a key: training windows come from the featurize section "
            "(e.g. --set featurize.max_seq_len=384)"
        )
    featurize = build_section(FeaturizeConfig, data.get("featurize") or {}, "featurize")
    return dataclasses.replace(build_section(TrainConfig, values, "train"), featurize=featurize)
