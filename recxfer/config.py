"""Frozen config dataclasses <-> plain JSON-able dicts, strictly (unknown keys fail)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass instance as nested dicts/lists (tuples become lists: what JSON
    gives back, so a stored config equals its re-read self)."""
    return _lists(dataclasses.asdict(config))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` (a dataclass) from ``data``; nested dataclasses recurse, lists
    become tuples where the field is a tuple; missing keys keep their defaults.

    Raises:
        ValueError: ``data`` is not a mapping or has keys ``cls`` does not know,
            naming the dotted path.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(value, dict) and not dataclasses.is_dataclass(hint):
            # ``SomeConfig | None``: an object is the dataclass member of the union.
            members = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
            hint = members[0] if len(members) == 1 else hint
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
