"""TOML tables to frozen dataclasses, by field type, collecting every problem with its key path.

Generic: it knows the types a config field may have (``bool``, ``int``, ``float``, ``str``,
``Path``, ``Literal``, ``X | None``, ``tuple[X, ...]``, ``X | tuple[X, ...]`` (one value or an
array of them) and nested dataclasses), not the sections themselves. A value that does not
fit is recorded as ``key.path: must be ...`` and conversion goes on, so one pass reports every
problem in a file. A value is converted whole or not at all: an array with one bad item
(``hidden_units = ["a", 16]``) reports ``training.hidden_units[0]`` and the field keeps its
default, so the rules that run next only ever see well-typed values. Values echoed in a
message are shortened, and a URL's ``user:password@`` is masked. Fields typed
:class:`~scorebeater.config.secret.Secret` are never taken from a table: a key naming one is
unknown (secrets come from the environment).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from scorebeater.config.secret import Secret, redact_urls

if TYPE_CHECKING:
    from collections.abc import Mapping


_SHOWN_CHARS = 80


def shown(value: Any) -> str:
    """``repr(value)`` for a message: a URL's userinfo masked, cut to about 80 characters."""
    text = redact_urls(repr(value))
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 3]}..."


class Problems:
    """The problems found so far, each as ``key.path: message``."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        """Record one problem at key path ``path`` (``""``: the file as a whole)."""
        self.items.append(f"{path}: {message}" if path else message)


def _is_secret(tp: Any) -> bool:
    return tp is Secret or Secret in get_args(tp)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is tuple:
        return f"array of {_type_name(get_args(tp)[0])}"
    if isinstance(tp, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            tp.__name__, "path" if tp is Path else tp.__name__
        )
    return str(tp)


def _convert(tp: Any, value: Any, path: str, problems: Problems) -> Any:  # noqa: C901, PLR0911, PLR0912
    """Convert one TOML value to ``tp``; record a problem and return ``None`` if it does not fit."""
    origin = get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in get_args(tp) if a is not type(None)]
        if value == "" and Path in inner:
            return None
        if isinstance(value, list):  # `str | tuple[str, ...]`: one value, or an array of them
            inner = [a for a in inner if get_origin(a) is tuple] or inner
        return _convert(inner[0], value, path, problems)
    if origin is Literal:
        if value not in get_args(tp):
            problems.add(path, f"must be one of {_type_name(tp)}, got {shown(value)}")
            return None
        return value
    if origin is tuple:
        if not isinstance(value, list):
            problems.add(path, f"must be an {_type_name(tp)}, got {type(value).__name__}")
            return None
        item_tp = get_args(tp)[0]
        items = [_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return None if any(item is None for item in items) else tuple(items)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.add(path, f"must be a table, got {type(value).__name__}")
            return None
        return build_table(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, f"must be a boolean, got {shown(value)}")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, f"must be an integer, got {shown(value)}")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.add(path, f"must be a number, got {shown(value)}")
            return None
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range (TOML integers are unbounded here)
            number = math.inf
        if not math.isfinite(number):
            problems.add(path, f"must be a finite number, got {shown(value)}")
            return None
        return number
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, f"must be a string, got {shown(value)}")
            return None
        return value
    if tp is Path:
        if not isinstance(value, str) or not value or "\0" in value:
            problems.add(path, f"must be a non-empty path string, got {shown(value)}")
            return None
        return Path(value)
    problems.add(path, f"unsupported type {tp!r}")  # pragma: no cover - a bug in this module
    return None


def build_table(cls: Any, table: Mapping[str, Any], path: str, problems: Problems) -> Any:
    """Build dataclass ``cls`` from a TOML table; missing keys keep their defaults.

    ``path`` is the table's key path (``""`` for the root). Unknown keys and values of the
    wrong type are recorded in ``problems`` and left out, so the result holds every field
    that did convert and the caller reports every problem at once. Never raises for bad data.
    """
    hints = typing.get_type_hints(cls)
    from_file = [f for f in dataclasses.fields(cls) if not _is_secret(hints[f.name])]
    known = {f.name for f in from_file}
    for key in table:
        if key not in known:
            where = f"{path}.{key}" if path else key
            problems.add(redact_urls(where), "unknown key")  # a quoted key may be anything
    kwargs: dict[str, Any] = {}
    for f in from_file:
        if f.name not in table:
            continue
        where = f"{path}.{f.name}" if path else f.name
        value = _convert(hints[f.name], table[f.name], where, problems)
        if value is not None:
            kwargs[f.name] = value
    return cls(**kwargs)
