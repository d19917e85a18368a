"""What Python callers pass, checked where it enters: one clear :class:`AnalogError` for a value of
the wrong type (a ``dict`` where settings are due, a string where numbers are), and for a number
that the ops, which compute in float32, cannot take as it is.

A string given for a list of numbers is read as the CLI reads it (``"1,3600"``); a string given
for a list of names is one name. Neither is taken apart into its characters.

Each value is checked once, here or in the function that takes it; an error names the value as
its caller knows it: the Python parameter, or the CLI's flag while the CLI runs the function
(:func:`spelled_as`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from analog_onnx.errors import AnalogError

FLOAT32_MAX = float(np.finfo(np.float32).max)
_SPELLING: ContextVar[Callable[[str], str]] = ContextVar("spelling", default=str)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the known name spelled like ``name`` but for case, else the
    nearest one; "" when none is near."""
    known = list(known)
    nearest = difflib.get_close_matches(name, known, n=1)
    hint = {k.lower(): k for k in known}.get(name.lower()) or (nearest[0] if nearest else None)
    return f" (did you mean {hint}?)" if hint else ""


def spelled(name: str) -> str:
    """A parameter's name as the caller knows it (see :func:`spelled_as`)."""
    return _SPELLING.get()(name)


def flag(parameter: str) -> str:
    """A parameter as the CLI spells it: ``t_inference`` is ``--t-inference``."""
    return "--" + parameter.replace("_", "-")


@contextmanager
def spelled_as(spelling: Callable[[str], str]) -> Iterator[None]:
    """Errors raised inside name parameters by ``spelling(name)``: the CLI passes its flags."""
    token = _SPELLING.set(spelling)
    try:
        yield
    finally:
        _SPELLING.reset(token)


def _parts(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a type hint: ``X | Y``, ``Optional[X]`` or a tuple of them, flattened."""
    if isinstance(hint, tuple):
        return tuple(part for h in hint for part in _parts(h))
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _parts(typing.get_args(hint))
    return (hint,)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has one of the types of ``hint``."""
    return any(_is(value, kind) for kind in _parts(hint))


def _is(value: Any, kind: Any) -> bool:
    """Generic aliases count by their origin, ``list[X]`` also by its items; a bool is no number and
    an int is a float."""
    if typing.get_origin(kind) is list and typing.get_args(kind):
        return isinstance(value, list) and all(_matches(v, typing.get_args(kind)[0]) for v in value)
    kind = typing.get_origin(kind) or kind
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, int | float | np.integer | np.floating)
    if kind is int:
        return isinstance(value, int | np.integer)
    return isinstance(kind, type) and isinstance(value, kind)


def expect(value: Any, kinds: Any, what: str) -> Any:
    """``value`` when it has one of the types ``kinds`` (a class, ``X | Y`` or a tuple), else one
    error naming ``what`` and the types wanted."""
    if not _matches(value, kinds):
        raise AnalogError(f"{what} must be {_named(kinds)}, got {type(value).__name__} {_shown(value)}")
    return value


def _named(hint: Any) -> str:
    """A type hint in words: ``int | None`` is "int or None", ``list[str]`` is "list of str"."""
    return " or ".join(_type_name(kind) for kind in _parts(hint))


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "None"
    if typing.get_origin(kind) is list and typing.get_args(kind):
        return f"list of {_named(typing.get_args(kind)[0])}"
    return getattr(typing.get_origin(kind) or kind, "__name__", str(kind))


def check_table(table: dict[str, Any], types: dict[str, Any], where: str) -> dict[str, Any]:
    """``table`` (read from a file) when each key is one of ``types`` and its value has that type,
    else one error naming the first bad key: a wrong type is caught here, not as a TypeError deeper in."""
    unknown = sorted(set(table) - set(types))
    if unknown:
        raise AnalogError(f"{where}: unknown key {unknown[0]!r}; known: {', '.join(sorted(types))}")
    for key, value in table.items():
        expect(value, types[key], f"{where} {key}")
    return table


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_fields(obj: Any, what: str) -> None:
    """Every field of the dataclass ``obj`` has its declared type."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        expect(getattr(obj, field.name), hints[field.name], f"{what} {field.name}")


def numbers(value: Any, what: str, parse: Callable[[str, str], list[float]] | None = None) -> list[float]:
    """A list of numbers from a sequence of them, a single number, or CLI text (``parse(text, what)``,
    else comma-separated numbers)."""
    if isinstance(value, str):
        return parse(value, what) if parse is not None else _comma_separated(value, what)
    if _matches(value, float):
        return [float(value)]
    if isinstance(value, Sequence | np.ndarray) and all(_matches(v, float) for v in value):
        return [float(v) for v in value]
    raise AnalogError(f"{what} must be numbers (a list, or text like '1,2.5'), got {type(value).__name__} "
                      f"{_shown(value)}")


def _comma_separated(text: str, what: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise AnalogError(f"{what} expects comma-separated numbers, got {text!r}") from None


def names(value: Any, what: str) -> list[str]:
    """A list of names; a single string is one name."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise AnalogError(f"{what} must be a name or a list of names, got {type(value).__name__} {_shown(value)}")


def float32_problem(value: float) -> str | None:
    """Why ``value`` cannot go into a float32 tensor or attribute as it is, or None when it can."""
    if not math.isfinite(value):
        return "must be a finite number"
    if abs(value) > FLOAT32_MAX:
        return f"is beyond the float32 range (at most {FLOAT32_MAX:.4g}) the ops compute in"
    if value != 0 and np.float32(value) == 0:
        return "is too small for float32, the ops' precision (it would be 0)"
    return None


def check_float32(value: float, what: str) -> float:
    """``value`` when it fits float32 (see :func:`float32_problem`), else one error naming ``what``."""
    problem = float32_problem(value)
    if problem is not None:
        raise AnalogError(f"{what} {problem}, got {value!r}")
    return value
