"""Typed, frozen configuration for every stage, loaded from layered YAML files and `key=value` overrides.

A config is a tree of frozen dataclasses, one per section: featurize, batch, decode, model, input,
runtime and output (`QAConfig`; the sections are defined in `qa_core.config_sections`), plus `train` for
`docqa train` (`qa_core.config_train`, checked on every load, not part of `QAConfig`).
configs/base.yaml lists every key with its default and meaning. Each YAML file is a mapping of section
name to a mapping of field to value; later files override earlier ones, `--set section.key=value`
overrides every file, and unknown sections or fields are rejected with the accepted names in the
message. Keys that moved to another section (`MOVED_KEYS`) are still accepted with a deprecation
warning. The resolved config and its hash are written beside every output (`_run.json`).

The modules import one way only: `config_layers` (generic machinery) <- `config_sections` (the data)
<- `config_train` <- this module (the whole config and its loading) <- `qa_core.train.config`. The
section names are re-exported here, so `from qa_core.config import FeaturizeConfig` keeps working.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import fsspec
import yaml

from qa_core.config_io import (
    ANSWER_COLUMNS,
    REJECTION_COLUMNS,
    RESERVED_OUTPUT_COLUMNS,
    InputConfig,
    OutputConfig,
)
from qa_core.config_layers import (
    BUNDLED,
    build_section,
    deep_merge,
    overrides_from_arguments,
    parse_override,
    yaml_problem,
)
from qa_core.config_sections import (
    DEFAULT_BATCH_TOKENS,
    DEFAULT_BATCH_WINDOWS,
    DEFAULT_MODEL,
    GPU_DEFAULT_BATCH_TOKENS,
    GPU_DEFAULT_BATCH_WINDOWS,
    TEMPERATURE_RANGE,
    BatchConfig,
    DecodeConfig,
    Device,
    Dtype,
    FeaturizeConfig,
    Implementation,
    ModelConfig,
    Quantize,
    RuntimeConfig,
    WorkerModels,
)
from qa_core.config_train import train_config_from_dict
from qa_core.errors import ConfigError

__all__ = [
    "ANSWER_COLUMNS",
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_BATCH_WINDOWS",
    "DEFAULT_MODEL",
    "GPU_DEFAULT_BATCH_TOKENS",
    "GPU_DEFAULT_BATCH_WINDOWS",
    "MOVED_KEYS",
    "OTHER_SECTIONS",
    "REJECTION_COLUMNS",
    "RESERVED_OUTPUT_COLUMNS",
    "TEMPERATURE_RANGE",
    "BatchConfig",
    "DecodeConfig",
    "Device",
    "Dtype",
    "FeaturizeConfig",
    "Implementation",
    "InputConfig",
    "ModelConfig",
    "OutputConfig",
    "QAConfig",
    "Quantize",
    "RuntimeConfig",
    "WorkerModels",
    "config_from_arguments",
    "config_from_dict",
    "load_config",
    "load_data",
]

logger = logging.getLogger(__name__)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class QAConfig:
    """The whole resolved configuration of a job, one frozen section per stage."""

    featurize: FeaturizeConfig = field(default_factory=FeaturizeConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        _require(
            self.model.quantize == "none" or self.runtime.device != "cuda",
            "model.quantize=int8 is a CPU fast path: set runtime.device=cpu (or auto on a CPU machine), "
            "or model.quantize=none",
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data."""
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """A short stable hash of the resolved config (sha256 of its canonical JSON).

        `runtime.host_tuning` is left out: it changes how a process allocates, never an answer, so a
        job resumed with it switched (or started before it existed) is the same job. So is
        `runtime.context_cache_mb` (how much tokenizing is reused) and `output.task_rows`: it sizes a
        cluster job's units, which `_job.json` records and a resume adopts.
        """
        document = self.to_dict()
        del document["runtime"]["host_tuning"]
        del document["runtime"]["context_cache_mb"]
        del document["output"]["task_rows"]
        if self.model.is_bundled:  # one hash for the bundled model wherever docqa is installed
            document["model"]["name_or_path"] = BUNDLED
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


MOVED_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("model", "device"): ("runtime", "device"),
    ("model", "require_gpu"): ("runtime", "require_gpu"),
    ("model", "worker_models"): ("runtime", "worker_models"),
    ("batch", "prefetch_buffers"): ("runtime", "prefetch_buffers"),
}
"""Keys of earlier releases, still accepted (with a deprecation warning) under their old section."""

OTHER_SECTIONS = ("train",)
"""Sections that only other commands use (`docqa train`): checked on load, not part of `QAConfig`."""


def _move_deprecated_keys(layer: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One layer (a file, or all `--set` items) with the keys of `MOVED_KEYS` under their new section.

    Raises:
        ConfigError: When the layer gives a setting under both names with different values.
    """
    data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in layer.items()}
    for (old_section, key), (new_section, new_key) in MOVED_KEYS.items():
        section = data.get(old_section)
        if not isinstance(section, dict) or key not in section:
            continue
        value = section.pop(key)
        logger.warning("%s: %s.%s is deprecated; use %s.%s", where, old_section, key, new_section, new_key)
        if data.get(new_section) is None:
            data[new_section] = {}
        target = data[new_section]
        if not isinstance(target, dict):
            continue  # reported by `build_section`
        _require(
            new_key not in target or target[new_key] == value,
            f"{where}: {old_section}.{key}={value!r} (deprecated) contradicts "
            f"{new_section}.{new_key}={target.get(new_key)!r}; keep only {new_section}.{new_key}",
        )
        target[new_key] = value
    return data


def config_from_dict(data: Mapping[str, Any]) -> QAConfig:
    """Builds a `QAConfig` from nested plain data, rejecting unknown sections and keys.

    Args:
        data: `{section: {field: value}}`; missing sections and fields take their defaults. Deprecated
            keys (`MOVED_KEYS`) are moved to their new section; `OTHER_SECTIONS` are checked, not kept.

    Raises:
        ConfigError: On an unknown key, a wrongly typed value or a failed check.
    """
    data = _move_deprecated_keys(data, "config")
    hints = get_type_hints(QAConfig)
    sections = [f.name for f in fields(QAConfig)]
    unknown = set(data) - set(sections) - set(OTHER_SECTIONS)
    _require(
        not unknown,
        f"unknown config section(s) {sorted(unknown)}; accepted: {sorted([*sections, *OTHER_SECTIONS])}",
    )
    if "train" in data:
        train_config_from_dict(data)  # checked here, so a bad train key fails every command alike
    return QAConfig(**{name: build_section(hints[name], data.get(name) or {}, name) for name in sections})


def load_data(
    paths: Iterable[str] = (),
    overrides: Iterable[str] = (),
    layers: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The layered plain data of YAML files, `section.key=value` overrides and `layers`, not yet checked.

    Each file, then all the overrides together, then each of `layers` (a command's own flags, as
    `{section: {field: value}}`) is one layer: deprecated keys are moved to their new section within the
    layer (a contradiction inside one layer is an error), then later layers win.

    Raises:
        ConfigError: When a file cannot be read or parsed, or a layer contradicts itself.
    """
    data: dict[str, Any] = {}
    for path in paths:
        try:
            with fsspec.open(path, "r", encoding="utf-8") as handle:
                loaded = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(err)}") from err
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
        _require(isinstance(loaded, Mapping), f"config file {path} must hold a mapping of sections")
        data = deep_merge(data, _move_deprecated_keys(loaded, f"config file {path}"))
    layer: dict[str, Any] = {}
    for item in overrides:
        layer = deep_merge(layer, parse_override(item))
    data = deep_merge(data, _move_deprecated_keys(layer, "--set"))
    for flags in layers:
        data = deep_merge(data, _move_deprecated_keys(flags, "command-line flags"))
    return data


def load_config(paths: Iterable[str] = (), overrides: Iterable[str] = ()) -> QAConfig:
    """Loads YAML config files in order, then applies `section.key=value` overrides.

    Args:
        paths: YAML files (local or fsspec URLs); later files override earlier ones.
        overrides: Items such as `decode.top_k=3`; they override every file.

    Raises:
        ConfigError: When a file cannot be read or parsed, or a value is invalid.
    """
    return config_from_dict(load_data(paths, overrides))


def config_from_arguments(args: argparse.Namespace, *extra: str) -> QAConfig:
    """The config from parsed `--config`/`--set`/`--model` arguments, then `extra` overrides."""
    return load_config(args.config, overrides_from_arguments(args, *extra))
