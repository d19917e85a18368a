"""The few array operations the device physics needs, for numpy arrays and torch tensors alike.

The physics is written once (``base.py`` and the device classes) with Python operators and
``.clip``, which both libraries share; the handful of calls whose names differ go through here,
so the numpy reference and the torch twin run the same formulas.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # a float32 numpy.ndarray or torch.Tensor; formulas keep the type they are given


def log(x: Array) -> Array:
    return np.log(x) if isinstance(x, np.ndarray) else x.log()


def where(condition: Array, a: Array, b: Array) -> Array:
    if isinstance(condition, np.ndarray):
        return np.where(condition, a, b)
    import torch

    return torch.where(condition, a, b)


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
