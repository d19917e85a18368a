"""Parsing the sweep axes the CLI takes as text: noise scales and inference times."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from analog_onnx.arguments import float32_problem, numbers, spelled
from analog_onnx.errors import AnalogError

MAX_LEVELS = 10_000
DEFAULT_NOISE_SCALES = "0,log:1e-2:1e1:13"  # no noise, then 13 levels over three decades


def _number(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AnalogError(f"{flag}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise AnalogError(f"{flag}: {text!r} is not a finite number")
    return value


def _range(item: str, flag: str) -> list[float]:
    """``log:START:STOP:COUNT`` (geometric) or ``lin:START:STOP:COUNT`` (arithmetic), both ends included."""
    kind, *parts = item.split(":")
    if len(parts) != 3:
        raise AnalogError(f"{flag}: {item!r} must be {kind}:START:STOP:COUNT")
    start, stop = _number(parts[0], flag), _number(parts[1], flag)
    try:
        count = int(parts[2])
    except ValueError:
        raise AnalogError(f"{flag}: count in {item!r} must be an integer") from None
    if not 1 <= count <= MAX_LEVELS:
        raise AnalogError(f"{flag}: count in {item!r} must be between 1 and {MAX_LEVELS}")
    if kind == "log":
        if start <= 0 or stop <= 0:
            raise AnalogError(f"{flag}: log ranges need positive ends, got {item!r}")
        return [float(v) for v in np.geomspace(start, stop, count)]
    return [float(v) for v in np.linspace(start, stop, count)]


def noise_levels(value: str | float | Sequence[float], flag: str | None = None) -> list[float]:
    """Noise scales from CLI text (see :func:`parse_noise_scales`), a number or a list of numbers;
    ``flag`` names them in errors (default: the ``noise_scales`` parameter, as spelled)."""
    flag = flag or spelled("noise_scales")
    if isinstance(value, str):
        return parse_noise_scales(value, flag)
    return _checked_levels(numbers(value, flag), flag)


def _checked_levels(levels: list[float], flag: str) -> list[float]:
    """Sorted distinct levels; negative levels, and levels float32 cannot hold (the ``noise_scale``
    input is float32), are an error; 0 (no noise) is allowed."""
    if not levels:
        raise AnalogError(f"{flag}: no noise scales given")
    for level in levels:
        problem = float32_problem(level)
        if problem:
            raise AnalogError(f"{flag}: noise scale {level:g} {problem}")
    if min(levels) < 0:
        raise AnalogError(f"{flag}: noise scales must be >= 0, got {min(levels)}")
    return sorted(set(levels))


def parse_noise_scales(text: str, flag: str | None = None) -> list[float]:
    """Comma-separated items, each a number or a ``log:``/``lin:`` range: ``0,log:1e-2:1e2:17``."""
    flag = flag or spelled("noise_scales")
    levels: list[float] = []
    for item in (part.strip() for part in text.split(",") if text.strip()):
        if not item:
            raise AnalogError(f"{flag}: empty item in {text!r}")
        if item.startswith(("log:", "lin:")):
            levels += _range(item, flag)
        elif ":" in item:
            raise AnalogError(f"{flag}: unknown range {item!r}; use log:START:STOP:COUNT or lin:START:STOP:COUNT")
        else:
            levels.append(_number(item, flag))
    return _checked_levels(levels, flag)


def parse_times(text: str, flag: str | None = None) -> list[float]:
    """Comma-separated inference times in seconds, checked by :func:`check_times`."""
    flag = flag or spelled("t_inference")
    return check_times([_number(part.strip(), flag) for part in text.split(",") if part.strip()], flag)


def check_times(times: str | float | Sequence[float], flag: str | None = None) -> list[float]:
    """Inference times (CLI text, a number or a list) must be positive, strictly increasing, as a
    drift model needs them, and fit the float32 ``t_inference`` input."""
    flag = flag or spelled("t_inference")
    if isinstance(times, str):
        return parse_times(times, flag)
    times = numbers(times, flag)
    if not times:
        raise AnalogError(f"{flag}: no times given")
    if not all(math.isfinite(t) and t > 0 for t in times):
        raise AnalogError(f"{flag}: times must be positive seconds, got {times}")
    for t in times:
        problem = float32_problem(t)
        if problem:
            raise AnalogError(f"{flag}: time {t:g} s {problem}")
    if any(b <= a for a, b in zip(times, times[1:], strict=False)):
        raise AnalogError(f"{flag}: times must be strictly increasing, got {times}")
    return times


def time_text(seconds: float) -> str:
    """Seconds as the largest unit that keeps a number >= 1: 1 s, 2 min, 1 h, 1 day, 1 year."""
    for unit, size in (("year", 31_536_000), ("day", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            value = seconds / size
            plural = "s" if unit in ("year", "day") and value != 1 else ""
            return f"{value:.3g} {unit}{plural}"
    return f"{seconds:.3g} s"
