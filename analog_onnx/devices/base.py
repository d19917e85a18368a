"""The device model: a conductance's life from programming to a read, split into named steps.

Every step is an elementwise formula on conductance arrays in uS (numpy or torch, see
``arrays.py``), taking its standard-normal draws as arguments, so which random numbers a step
uses (and how they are keyed to a chip or a read) is decided by the caller (``chip.py``):

1. ``program``: target -> programmed conductance (per chip), ``g_target + sigma_prog * z``, >= 0.
2. ``drift``: programmed conductance -> conductance at ``t_inference`` (per chip and time).
3. ``read``: conductance at ``t_inference`` -> what one read sees (per read).

A device overrides the sigma and drift formulas; the base class is an ideal device. A device's
fields are of two sorts: the ones the ``[device]`` config section also has (``g_max``, the scales,
a generic device's numbers) are its parameters, set per model file; every other field is a
constant of its published fit, documented with its source, which ``ops/native/generate.py``
writes into the native kernels' header. The formulas are written branch-free (``arrays.where``),
so ``ops/device_functions.py`` can trace them into the ONNX function body.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from analog_onnx.devices.arrays import Array


@dataclass(frozen=True)
class DeviceModel:
    """An ideal device (no noise, no drift); the scales multiply what a subclass defines."""

    name: ClassVar[str] = ""  # its device.model in a config and its DeviceWeights `device` attribute

    g_max: float = 25.0  # uS: the largest target conductance (the mapping puts max|W| there)
    prog_noise_scale: float = 1.0  # multiplies the programming sigma
    drift_scale: float = 1.0  # multiplies drift exponents
    read_noise_scale: float = 1.0  # multiplies the read-noise sigma

    def scaled(self, noise_scale: float) -> DeviceModel:
        """The same device with every sigma multiplied by ``noise_scale`` (the sweep axis)."""
        return dataclasses.replace(self, prog_noise_scale=self.prog_noise_scale * noise_scale,
                                   read_noise_scale=self.read_noise_scale * noise_scale)

    # -- 1. programming ------------------------------------------------------------------
    def programming_sigma(self, g_target: Array) -> Array:
        """Standard deviation of the programmed conductance around its target, uS."""
        return g_target * 0.0

    def program(self, g_target: Array, z: Array) -> Array:
        """The programmed conductance: target plus Gaussian error, never below 0 uS."""
        return (g_target + self.prog_noise_scale * self.programming_sigma(g_target) * z).clip(min=0.0)

    # -- 2. drift ------------------------------------------------------------------------
    def drift(self, g_target: Array, g_prog: Array, z: Array, t_inference: Array | float) -> Array:
        """The conductance ``t_inference`` seconds after programming ended; ``z`` is the device's
        own standard normal (fixed per chip, so a chip's trajectory over time is continuous)."""
        return g_prog

    # -- 3. read -------------------------------------------------------------------------
    def read_noise_sigma(self, g_prog: Array, g_now: Array, t_inference: Array | float) -> Array:
        """Standard deviation of one read around the current conductance, uS."""
        return g_now * 0.0

    def read(self, g_prog: Array, g_now: Array, z: Array, t_inference: Array | float) -> Array:
        """What one read sees: current conductance plus fresh Gaussian noise, never below 0 uS."""
        sigma = self.read_noise_sigma(g_prog, g_now, t_inference)
        return (g_now + self.read_noise_scale * sigma * z).clip(min=0.0)


def polynomial(coefficients: tuple[float, ...], x: Array) -> Array:
    """``sum_i c_i x**i`` (Horner), with ``coefficients`` from the constant term up."""
    result = x * 0.0 + coefficients[-1]
    for c in reversed(coefficients[:-1]):
        result = result * x + c
    return result


def power_law(t_inference: Array | float, t0: float, nu: Array) -> Array:
    """The drift factor ``((t_inference + t0) / t0) ** -nu``: 1 right after programming."""
    return ((t_inference + t0) / t0) ** (-nu)
