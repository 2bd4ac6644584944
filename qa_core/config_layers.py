"""The generic machinery under `qa_core.config`: typed sections from plain data, layers, and the flags.

Nothing here knows docqa's sections: `build_section` checks any frozen dataclass of typed fields,
`deep_merge` layers plain data, `parse_override` reads one `--set section.key=value`, and
`add_config_arguments` / `overrides_from_arguments` are the `--config`/`--set`/`--model` flags every
command that runs a model shares.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from qa_core.errors import ConfigError

BUNDLED = "bundled"
"""`model.name_or_path: bundled` (configs/base.yaml) names the bundled model without spelling its path."""


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


_T = TypeVar("_T")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Checks (and lightly converts) a YAML value against a dataclass field annotation."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        _require(value in args, f"{where}: {value!r} is not one of {list(args)}")
        return value
    if type(None) in args:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        _require(isinstance(value, list | tuple), f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        _require(isinstance(value, bool), f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        _require(
            isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an int, got {value!r}"
        )
        return value
    if annotation is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string; a user means the number
        _require(
            isinstance(value, int | float) and not isinstance(value, bool),
            f"{where}: expected a number, got {value!r}",
        )
        return float(value)
    if annotation is str:
        _require(isinstance(value, str), f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def build_section(cls: type[_T], values: Mapping[str, Any], section: str) -> _T:
    """Builds one section's dataclass from plain data: unknown keys rejected, values type-checked.

    Args:
        cls: The section's frozen dataclass (every field typed with a supported annotation).
        values: `{field: value}`; missing fields take their defaults.
        section: The section's name, for messages.

    Raises:
        ConfigError: On an unknown key, a wrongly typed value or a failed check of the dataclass.
    """
    _require(isinstance(values, Mapping), f"config section '{section}' must be a mapping")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    _require(
        not unknown, f"unknown key(s) {sorted(unknown)} in section '{section}'; accepted: {sorted(known)}"
    )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, mappings key by key (later wins); neither is changed."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def parse_override(item: str) -> dict[str, Any]:
    """Turns `section.key=value` into `{section: {key: value}}` (the value is parsed as YAML)."""
    key, sep, raw = item.partition("=")
    _require(bool(sep) and "." in key, f"--set expects section.key=value, got {item!r}")
    section, _, name = key.strip().partition(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(err)})") from err
    return {section: {name: value}}


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line saying what is wrong where in a YAML text (PyYAML's own message spans several lines)."""
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = err.problem or err.context or type(err).__name__
        context = f" ({err.context})" if err.context and err.problem else ""
        return f"{problem}{context}{where}"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def add_config_arguments(parser: argparse.ArgumentParser, *, model: bool = True) -> None:
    """Adds `--config` and `--set` (and `--model`), shared by every command that runs a model."""
    if model:
        parser.add_argument(
            "--model", help=f"QA checkpoint directory or hub id (default: model.name_or_path, {BUNDLED})"
        )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file; repeat to layer (later wins)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        dest="overrides",
        help="override one config value, e.g. --set decode.top_k=3; repeatable",
    )


def overrides_from_arguments(args: argparse.Namespace, *extra: str) -> list[str]:
    """The `--set` items of parsed arguments, then `--model` as `model.name_or_path`, then `extra`."""
    overrides = list(args.overrides)
    if getattr(args, "model", None):
        overrides.append(f"model.name_or_path={json.dumps(args.model)}")
    return [*overrides, *extra]
