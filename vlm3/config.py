"""Config files: YAML validated into pydantic models, ``key=value`` overrides, one-line errors.

Every vlm3 config (training, benches, mixtures) is a pydantic model whose fields carry their
description; unknown keys are errors, so a typo never silently falls back to a default::

    cfg = load_yaml_model(Config, "vlm3/configs/tiny-cpu.yaml", ["train.max_steps=100"])

Errors are :class:`ConfigError` (a ``ValueError``) whose message names the file and the field, e.g.
``configs/x.yaml: train.learning_rate = 0: Input should be greater than 0``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from vlm3.settings import validation_message

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override that does not fit its schema (the message names file and field)."""


class ConfigModel(BaseModel):
    """Base of config sections: unknown keys are errors, numbers are accepted where text is expected,
    and every float field is finite (``.nan`` / ``.inf`` are errors; ranges are each field's ``Field``)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, allow_inf_nan=False)


def apply_overrides(data: dict[str, Any], items: Iterable[str], *, min_depth: int = 1) -> dict[str, Any]:
    """A copy of ``data`` with ``dotted.key=value`` items set (values parsed as YAML: ``3``, ``true``, ``[1, 2]``).

    ``min_depth`` is the least number of dotted parts a key must have (2 for ``section.field``).
    """
    out = copy.deepcopy(dict(data or {}))
    form = "section.field=value" if min_depth >= 2 else "field=value (field.sub=value for nested fields)"
    for item in items or []:
        key, eq, raw = str(item).partition("=")
        parts = key.strip().split(".")
        if not eq or len(parts) < min_depth or not all(parts):
            raise ConfigError(f"override {item!r} must look like {form}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: invalid YAML value ({yaml_problem(e)})") from None
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error on one line: what is wrong and where (line and column, 1-based)."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if not problem:
        return " ".join(str(error).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(error, "context", None)
    return f"{context + ': ' if context else ''}{problem}{where}"


def validate(cls: type[M], data: Any, where: str) -> M:
    """``cls`` validated from ``data``; a :class:`ConfigError` ``"WHERE: field = value: problem"``."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}: {validation_message(e)}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; ConfigError naming the file when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({yaml_problem(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields")
    return data


def load_yaml_model(cls: type[M], path: str | Path, overrides: Iterable[str] = (), *, min_depth: int = 1) -> M:
    """Read a YAML file, apply ``overrides`` (see :func:`apply_overrides`) and validate it into ``cls``."""
    return validate(cls, apply_overrides(read_yaml(path), overrides, min_depth=min_depth), str(path))


def field_rows(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted name, default, description)`` of every field of ``cls``, nested sections expanded."""
    rows = []
    for name, info in cls.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            rows += field_rows(kind, f"{prefix}{name}.")
            continue
        default = "(computed)" if info.default_factory is not None else repr(info.default)
        rows.append((f"{prefix}{name}", default, info.description or ""))
    return rows
