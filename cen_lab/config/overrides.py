"""Changing a config by dotted keys (``{"train.lam": 1e-3}``): the command line's ``--set key=value``, the notebooks'
parameters and ``ExperimentConfig.override`` all go through ``apply_overrides``, which parses strings as typed on
a command line according to the field's type."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping

from ..errors import ConfigError
from .validation import _field_names, _unknown_key


def dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword overrides with ``__`` for dots (``train__lam=1e-3``, as the benchmarks' config makers take them) as
    dotted keys (``{"train.lam": 1e-3}``)."""
    return {k.replace("__", "."): v for k, v in overrides.items()}


def apply_overrides(d: dict[str, Any], cls: type, updates: Mapping[str, Any]) -> dict[str, Any]:
    """``d`` (a config's ``to_dict``, changed in place and returned) with the dotted keys of ``updates`` replaced.

    ``cls`` is the dataclass ``d`` describes; a key that is not one of its fields (or a section given a value)
    is a ``ConfigError`` naming the closest valid key. String values are parsed for the field's type
    (``"1e-3"``, ``"[1, 2]"``, ``"true"``); other values are kept as given (``from_dict`` checks them).
    """
    for key, value in updates.items():
        parts = key.split(".")
        node: dict[str, Any] = d
        section = cls
        for i, part in enumerate(parts):
            names = {f.name: f for f in dataclasses.fields(section)}
            if part not in names:
                raise ConfigError(_unknown_key(".".join(parts[: i + 1]), names, ".".join(parts[:i])))
            hint = typing.get_type_hints(section)[part]
            if i == len(parts) - 1:
                if dataclasses.is_dataclass(hint):
                    raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.{next(iter(_field_names(hint)))}")
                node[part] = _parse_cli(value, hint, key) if isinstance(value, str) else value
            else:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is a value, not a section (in key {key!r})")
                node = node[part]
                section = hint
    return d


def _parse_cli(text: str, tp: Any, key: str) -> Any:
    """Parse a command-line string for a field of type ``tp`` (JSON literals; bare words for strings)."""
    stripped = text.strip()
    if tp is str:
        return stripped
    if stripped.lower() in ("none", "null"):
        return None
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp):  # str | None
        return stripped
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        pass
    if typing.get_origin(tp) is tuple or tuple in typing.get_args(tp) or any(
        typing.get_origin(a) is tuple for a in typing.get_args(tp)
    ):
        items = [s for s in stripped.strip("()[]").split(",") if s.strip()]
        try:
            return [json.loads(s) if s.strip()[:1] in "-0123456789" else s.strip() for s in items]
        except json.JSONDecodeError:
            pass
    raise ConfigError(f"cannot parse {text!r} for {key}")
