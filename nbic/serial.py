"""Frozen dataclasses to and from JSON-ready data, driven by their type hints.

The host and the in-container agent exchange configuration and results as
JSON; this is the one codec for them, so no class keeps a hand-written list
of its fields. Supported field types: str, int, float, bool, None, enums,
tuples (`tuple[X, ...]`), dicts with str keys, nested dataclasses, and
optionals of these. Standard library only (the agent imports it).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_data(value: Any) -> Any:
    """`value` as JSON-ready data: dataclasses become dicts, enums their values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_data(getattr(value, field.name))
                for field in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_data(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_data(item) for key, item in value.items()}
    return value


def from_data(cls: type[T], data: Any) -> T:
    """The instance of dataclass `cls` that `to_data` turned into `data`."""
    return typing.cast(T, _decode(cls, data))


def dumps(value: Any) -> str:
    return json.dumps(to_data(value), sort_keys=True)


def loads(cls: type[T], text: str) -> T:
    return from_data(cls, json.loads(text))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                return _decode(option, data)
    if origin is tuple:
        (item,) = {arg for arg in typing.get_args(hint) if arg is not Ellipsis}
        return tuple(_decode(item, element) for element in data)
    if origin is dict:
        _key, value = typing.get_args(hint)
        return {key: _decode(value, element) for key, element in data.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        known = {field.name for field in dataclasses.fields(hint) if field.init}
        return hint(**{name: _decode(hints[name], value) for name, value in data.items()
                       if name in known})
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(data)
    return data
