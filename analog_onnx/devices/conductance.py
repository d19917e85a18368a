"""Weights to conductances and back: one differential pair (g+, g-) per weight, as aihwkit's
``SinglePairConductanceConverter`` (``aihwkit/inference/converter/conductance.py``).

The largest |weight| of the tensor (or of each output channel) maps to ``g_max``; a positive
weight programs g+ and leaves g- at 0 uS, a negative one the reverse. A pair is held as one array
of shape ``(2, *weights.shape)``: ``[g+, g-]``, so every per-device step is one elementwise formula.
"""

from __future__ import annotations

from analog_onnx.devices.arrays import Array, absmax, stack
from analog_onnx.ops.grid import levels

ZERO_WEIGHT = 1e-7  # smallest abs-max a scale is computed from (an all-zero tensor maps to 0 uS)


def mapping_scale(weights: Array, g_max: float, channel_axis: int | None) -> Array:
    """uS per weight unit: ``g_max / max|W|`` per tensor (``channel_axis=None``) or per channel."""
    return g_max / absmax(weights, channel_axis).clip(min=ZERO_WEIGHT)


def to_conductances(weights: Array, scale: Array, g_max: float, bits: int = 0) -> Array:
    """Target conductances ``[g+, g-]``; ``bits > 0`` rounds them to the signed ``bits``-bit weight
    grid: ``2**(bits-1) - 1`` equal steps from 0 to ``g_max`` (half to even)."""
    scaled = weights * scale
    pair = stack(scaled.clip(min=0.0, max=g_max), (-scaled).clip(min=0.0, max=g_max))
    steps = levels(bits, signed=1)
    if steps == 0:
        return pair
    step = g_max / steps
    return (pair / step).round() * step


def to_weights(pair: Array, scale: Array) -> Array:
    """Weights from conductances: ``(g+ - g-) / scale``."""
    return (pair[0] - pair[1]) / scale
