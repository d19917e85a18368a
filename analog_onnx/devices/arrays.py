"""The few array operations the device physics needs, for numpy arrays, torch tensors, Python
numbers and traced function-body values alike.

The physics is written once (``base.py`` and the device classes) with Python operators and
``.clip``, which all of them share; the handful of calls whose names differ go through here, so
the numpy reference, the torch twin and the ONNX function body (``ops/device_functions.py`` traces
the same formulas) run the same operations. A formula must not branch on an array's value: it
selects with ``where``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Array = Any  # a float32 numpy.ndarray, torch.Tensor or traced value; formulas keep the type they are given


def _is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch")


def log(x: Array) -> Array:
    if isinstance(x, float | int):
        return math.log(x)
    return np.log(x) if isinstance(x, np.ndarray) else x.log()


def sqrt(x: Array) -> Array:
    if isinstance(x, float | int):
        return math.sqrt(x)
    return np.sqrt(x) if isinstance(x, np.ndarray) else x.sqrt()


def where(condition: Array, a: Array, b: Array) -> Array:
    """``a`` where ``condition`` holds, else ``b`` (a Python bool picks one of them whole)."""
    if isinstance(condition, bool | np.bool_):
        return a if condition else b
    if isinstance(condition, np.ndarray):
        return np.where(condition, a, b)
    if _is_torch(condition):
        import torch

        return torch.where(condition, a, b)
    return condition.select(a, b)


def absmax(x: Array, keep_axis: int | None) -> Array:
    """max |x| over all elements (``keep_axis=None``) or over all axes but ``keep_axis``, keeping dims."""
    axes = tuple(a for a in range(x.ndim) if a != keep_axis) if keep_axis is not None else tuple(range(x.ndim))
    if isinstance(x, np.ndarray):
        return np.abs(x).max(axis=axes, keepdims=True)
    return x.abs().amax(dim=axes, keepdim=True)


def mean_abs(x: Array) -> Array:
    """Mean of |x| as a 0-d array of the same kind."""
    return abs(x).mean()


def stack(a: Array, b: Array) -> Array:
    """``[a, b]`` along a new first axis."""
    if isinstance(a, np.ndarray):
        return np.stack([a, b])
    import torch

    return torch.stack([a, b])
