"""Typed configuration: dataclasses with defaults, YAML files and dotted command-line overrides.

The generic loader, and the two sections every trainer shares with :mod:`clipdro.engine`: ``run``
(:class:`RunConfig`: folder, epochs, precision, checkpoints) and ``optim`` (:class:`OptimConfig`:
AdamW and its warm-up cosine schedule). Each trainer declares its own schema from these and its own
sections: the CLIP run's in :mod:`clipdro.train_config`, the LLM run's in :mod:`clipdro.llm.config`.

``load_config(TrainConfig, "configs/demo.yaml", ["optim.lr=1e-3", "loss.name=clip"])`` starts
from the dataclass defaults, applies the YAML file, then the overrides (values parsed as YAML,
so ``1e-3``, ``true``, ``null`` and ``[1, 2]`` work). Unknown keys and wrong types raise
:class:`UsageError` naming the dotted key. The resolved config is saved beside every run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from clipdro.errors import UsageError

T = TypeVar("T")


def _type_name(expected: Any) -> str:
    return getattr(expected, "__name__", str(expected))


def _coerce(value: Any, expected: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``expected``; convert int -> float where declared."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except UsageError as error:
                errors.append(str(error))
        raise UsageError(f"{key}: {value!r} is not {' or '.join(_type_name(o) for o in options)}")
    if origin is typing.Literal:
        if value not in typing.get_args(expected):
            raise UsageError(f"{key}: {value!r} is not one of {list(typing.get_args(expected))}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UsageError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(expected)
        return [_coerce(item, item_type, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(expected)
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(expected):
        if isinstance(value, expected):
            return value
        if not isinstance(value, dict):
            raise UsageError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(expected, value, prefix=f"{key}.")
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept any spelling float() accepts.
        try:
            return float(value)
        except ValueError:
            raise UsageError(f"{key}: expected float, got {value!r}") from None
    if expected is Any:
        return value
    if expected in (int, float) and isinstance(value, bool):
        raise UsageError(f"{key}: expected {expected.__name__}, got {value!r}")
    if not isinstance(value, expected):
        raise UsageError(f"{key}: expected {_type_name(expected)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a nested mapping, checking keys and types."""
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"unknown config key {prefix}{unknown[0]!s} (valid keys: {', '.join(sorted(names))})")
    values = {name: _coerce(value, hints[name], f"{prefix}{name}") for name, value in data.items()}
    try:
        instance = cls(**values)
    except TypeError as error:
        raise UsageError(f"{prefix or 'config'}: {error}") from None
    validate = getattr(instance, "validate", None)
    if validate is not None:
        validate()
    return instance


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def _set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    parts = dotted_key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"override {dotted_key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["optim.lr=1e-3", "data.train=[a, b]"]`` -> nested dict with YAML-parsed values."""
    tree: dict = {}
    for override in overrides:
        key, separator, raw_value = override.partition("=")
        if not separator or not key:
            raise UsageError(f"override {override!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw_value) if raw_value != "" else ""
        except yaml.YAMLError as error:
            raise UsageError(f"override {override!r}: {error}") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: the top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults <- YAML file <- dotted overrides, checked against ``cls``."""
    data = read_yaml(path) if path is not None else {}
    data = merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------------------
# The sections the shared run engine reads (clipdro.engine).


@dataclasses.dataclass
class OptimConfig:
    lr: float = 8e-4  # AdamW for the CLIP model
    weight_decay: float = 0.02  # not applied to biases, norms, logit_scale and other 1-D parameters
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr: float = 1e-5  # cosine schedule floor
    grad_clip_norm: float | None = None


@dataclasses.dataclass
class RunConfig:
    output_dir: str = "runs"
    name: str | None = None  # run folder output_dir/name; default: a timestamp
    epochs: int = 1
    precision: typing.Literal["fp32", "amp_bf16", "amp"] = "fp32"
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0: only at the end (and on SIGTERM)
    keep_last: int = 3
    max_nonfinite_steps: int = 5  # consecutive NaN/Inf losses before training stops
    stop_after: int | None = None  # end this invocation after this step (checkpoint written), as preemption would
