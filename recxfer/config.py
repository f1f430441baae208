"""Frozen config dataclasses <-> plain JSON-able dicts, strictly.

``from_dict`` is the one place that turns a JSON object into a config dataclass. It
validates every value against the field's type hint, without coercion:

- ``bool`` takes only ``true``/``false``; ``int`` only integers (not bools, not
  ``"5"``, not ``5.0``); ``float`` integers or finite numbers (JSON has one number
  type), returned as ``float``; ``str`` only strings;
- ``tuple[X, ...]`` takes an array (each element checked, returned as a tuple): a
  string is refused, never split into characters; fixed ``tuple[X, Y]`` checks the
  length; ``X | None`` takes ``null``; ``Literal[...]`` one of its values;
- a nested dataclass takes an object and is built the same way, recursively.

Unknown keys are refused. A partial object replaces only the keys it gives, on top
of the *enclosing* default (``base``, by default ``cls()``): so
``{"train": {"mf": {"epochs": 30}}}`` keeps every other value of ``JobConfig().train.mf``
(the job's defaults, which may differ from ``MFConfig()``'s). Range checks live in
the dataclasses' ``__post_init__`` (so code that builds configs directly gets them
too); their ``ValueError`` is re-raised naming the key path.

Every refusal is a ``ConfigError`` (a ``ValueError``, so the CLI exits 2) whose
message names where the config came from, the dotted key path and what was
expected, e.g. ``job.json: train.mf.epochs: expected int, got string '5'``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

_SENSITIVE = ("token", "secret", "password")  # values of such keys are never echoed


class ConfigError(ValueError):
    """A config value is refused.

    Attributes:
        where: where the config came from (a file name, ``"config"``).
        key: dotted path of the refused key (``"train.mf.epochs"``, ``"ks[2]"``);
            empty for the top-level object.
    """

    def __init__(self, where: str, key: str, detail: str, sep: str = ": ") -> None:
        self.where = where
        self.key = key
        self.detail = detail
        super().__init__(f"{where}: {key}{sep}{detail}" if key else f"{where}: {detail}")


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


def from_dict(
    cls: type[T], data: Any, where: str = "config", base: T | None = None, *, key: str = ""
) -> T:
    """Build the dataclass ``cls`` from the JSON object ``data``, strictly.

    Args:
        where: where ``data`` came from, first in every error message.
        base: the instance whose values the keys of ``data`` replace (default:
            ``cls()`` when every field has a default); nested objects merge onto
            ``base``'s value of that field, recursively.
        key: dotted path of ``data`` inside a larger config (``"nightly"``), for
            error messages.

    Raises:
        ConfigError: not an object, an unknown key, a value of the wrong type, a
            missing required key or a value the dataclass refuses, naming the
            dotted key path and the expected type.
    """
    return _dataclass(cls, data, where, key, base)


# ----------------------------------------------------------------------------- internals


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _dataclass(cls: type[T], data: Any, where: str, key: str, base: Any) -> T:
    if not isinstance(data, dict):
        raise ConfigError(where, key, f"expected an object ({cls.__name__}), got {_describe(data, key)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in set(data) - set(fields))
    if unknown:
        raise ConfigError(where, key, f"unknown key(s) {unknown}; known {sorted(fields)}")
    if base is None and all(_field_default(f) is not dataclasses.MISSING for f in fields.values()):
        base = _construct(cls, {}, where, key, fields)
    kwargs = {}
    for name, value in data.items():
        current = getattr(base, name) if base is not None else _field_default(fields[name])
        kwargs[name] = _value(hints[name], value, where, _join(key, name),
                              None if current is dataclasses.MISSING else current)
    if base is not None:
        return _construct(lambda **kw: dataclasses.replace(base, **kw), kwargs, where, key, fields)
    missing = [n for n, f in fields.items() if n not in kwargs and _field_default(f) is dataclasses.MISSING]
    if missing:
        name = missing[0]
        raise ConfigError(where, _join(key, name), f"missing (expected {_type_name(hints[name])})")
    return _construct(cls, kwargs, where, key, fields)


def _construct(make: Any, kwargs: dict[str, Any], where: str, key: str,
               fields: dict[str, dataclasses.Field]) -> Any:
    """``make(**kwargs)``; a ``ValueError``/``TypeError`` of ``__post_init__`` is
    re-raised naming the key path (a message starting with a field name, as in
    ``"epochs must be >= 0"``, becomes ``"train.mf.epochs must be >= 0"``)."""
    try:
        return make(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        message = str(exc)
        match = re.match(r"([A-Za-z_]\w*)(:?) ", message)
        if match and match.group(1) in fields:
            raise ConfigError(where, _join(key, match.group(1)), message[match.end():],
                              sep=": " if match.group(2) else " ") from exc
        raise ConfigError(where, key, message) from exc


def _value(hint: Any, value: Any, where: str, key: str, base: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _value(args[0], value, where, key, base)
    if hint is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # ``X | None``: X's own errors inside, "X or null" here
            if dataclasses.is_dataclass(members[0]) and isinstance(value, dict):
                return _value(members[0], value, where, key, base)
            try:
                return _value(members[0], value, where, key, base)
            except ConfigError as exc:
                if exc.key != key:  # an element's error (``key[3]``): the precise one
                    raise
                raise _type_error(hint, value, where, key) from None
        classes = [m for m in members if dataclasses.is_dataclass(m)]
        if isinstance(value, dict) and len(classes) == 1:
            return _value(classes[0], value, where, key, base)
        for member in members:
            try:
                return _value(member, value, where, key, base)
            except ConfigError:
                continue
        raise _type_error(hint, value, where, key)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(where, key, f"expected one of {list(args)}, got {_describe(value, key)}")
    if dataclasses.is_dataclass(hint):
        return _dataclass(hint, value, where, key, base if isinstance(base, hint) else None)
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(hint, value, where, key)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and args:
            if len(value) != len(args):
                raise ConfigError(where, key, f"expected {_type_name(hint)} ({len(args)} elements), "
                                  f"got {len(value)} elements")
            items = [_value(a, v, where, f"{key}[{i}]", None) for i, (a, v) in enumerate(zip(args, value))]
        else:
            element = args[0] if args else Any
            items = [_value(element, v, where, f"{key}[{i}]", None) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(hint, value, where, key)
        k_hint, v_hint = args if args else (Any, Any)
        return {_value(k_hint, k, where, key, None): _value(v_hint, v, where, f"{key}.{k}", None)
                for k, v in value.items()}
    if hint is bool:
        if type(value) is bool:
            return value
        raise _type_error(hint, value, where, key)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(hint, value, where, key)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(where, key, f"expected a finite number, got {value!r}")
            return float(value)
        raise _type_error(hint, value, where, key)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(hint, value, where, key)
    if hint is type(None):
        if value is None:
            return None
        raise _type_error(hint, value, where, key)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _type_error(hint, value, where, key)
    raise TypeError(f"{key}: from_dict cannot check type hint {hint!r}")


def _type_error(hint: Any, value: Any, where: str, key: str) -> ConfigError:
    return ConfigError(where, key, f"expected {_type_name(hint)}, got {_describe(value, key)}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is tuple or origin is list:
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return "array [" + ", ".join(_type_name(a) for a in args) + "]"
        return f"array of {_type_name(args[0]) if args else 'values'}"
    if origin is dict:
        return f"object of {_type_name(args[1]) if args else 'values'}"
    if dataclasses.is_dataclass(hint):
        return f"object ({hint.__name__})"
    names = {bool: "bool (true/false)", int: "int", float: "number", str: "string",
             type(None): "null"}
    if hint in names:
        return names[hint]
    return getattr(hint, "__name__", repr(hint))


def _describe(value: Any, key: str) -> str:
    """JSON type of ``value`` and, unless the key looks secret, the value."""
    kind = {bool: "bool", int: "int", float: "number", str: "string", type(None): "null",
            list: "array", tuple: "array", dict: "object"}.get(type(value), type(value).__name__)
    if value is None or isinstance(value, (list, tuple, dict)):
        return kind
    last = key.rsplit(".", 1)[-1].lower()
    if any(word in last for word in _SENSITIVE):
        return f"{kind} (value not shown)"
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"
