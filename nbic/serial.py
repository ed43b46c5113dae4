"""Frozen dataclasses to and from JSON-ready data, driven by their type hints.

The host and the in-container agent exchange configuration and results as
JSON; this is the one codec for them, so no class keeps a hand-written list
of its fields. Supported field types: str, int, float, bool, None, enums,
tuples (`tuple[X, ...]`), dicts with str keys, nested dataclasses, optionals
of these, and Any (taken as it is). Standard library only (the agent imports it).

`strict=True` is for data a person wrote (a recipe) or may have damaged (a
lock): an unknown key, a missing one or a value of the wrong type is a
DecodeError naming the key, instead of being ignored or passed through.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any, TypeVar

from nbic.errors import NbicError

T = TypeVar("T")


class DecodeError(NbicError):
    """Strictly decoded data does not fit its dataclass; `key` says where
    (`boot.expect`, `entries[3].path`)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


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


def from_data(cls: type[T], data: Any, *, strict: bool = False) -> T:
    """The instance of dataclass `cls` that `to_data` turned into `data`."""
    return typing.cast(T, _decode(cls, data, strict, ""))


def dumps(value: Any) -> str:
    return json.dumps(to_data(value), sort_keys=True)


def loads(cls: type[T], text: str, *, strict: bool = False) -> T:
    return from_data(cls, json.loads(text), strict=strict)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _decode(hint: Any, data: Any, strict: bool, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if data is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                return _decode(option, data, strict, key)
    if origin is tuple:
        (item,) = {arg for arg in typing.get_args(hint) if arg is not Ellipsis}
        _expect(strict, isinstance(data, list | tuple), key, "a list")
        return tuple(_decode(item, element, strict, f"{key}[{index}]")
                     for index, element in enumerate(data))
    if origin is dict:
        _key, value = typing.get_args(hint)
        _expect(strict, isinstance(data, dict), key, "a table")
        return {name: _decode(value, element, strict, _join(key, name))
                for name, element in data.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(hint, data, strict, key)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(data)
        except ValueError:
            choices = ", ".join(repr(member.value) for member in hint)
            raise DecodeError(key, f"{data!r} is not one of {choices}") from None
    if strict and hint in _SCALARS:
        accepted = (int, float) if hint is float else (hint,)
        fits = isinstance(data, accepted) and (hint is bool or not isinstance(data, bool))
        _expect(strict, fits, key, _SCALARS[hint])
        return float(data) if hint is float else data
    return data


def _decode_dataclass(cls: type, data: Any, strict: bool, key: str) -> Any:
    hints = _hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    if not strict:
        return cls(**{name: _decode(hints[name], value, strict, key)
                      for name, value in data.items() if name in fields})
    _expect(strict, isinstance(data, dict), key, "a table")
    for name in data:
        if name not in fields:
            raise DecodeError(_join(key, name), "unknown key (known: "
                              f"{', '.join(sorted(fields))})")
    for name, field in fields.items():
        if name not in data and field.default is dataclasses.MISSING \
                and field.default_factory is dataclasses.MISSING:
            raise DecodeError(_join(key, name), "missing")
    return cls(**{name: _decode(hints[name], value, strict, _join(key, name))
                  for name, value in data.items()})


def _expect(strict: bool, fits: bool, key: str, what: str) -> None:
    if strict and not fits:
        raise DecodeError(key, f"must be {what}")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
