"""Resistive RAM, as aihwkit's ``ReRamWan2022NoiseModel`` (``aihwkit/inference/noise/reram.py``):
polynomial fits, made by aihwkit, to the conductance spread Wan et al. measured 1 s, 1 day and 2
days after programming (Nature 608, 504 (2022), doi:10.1038/s41586-022-04992-8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analog_onnx.devices.arrays import Array
from analog_onnx.devices.base import DeviceModel, polynomial

DAY = 86400.0


@dataclass(frozen=True)
class ReRAMDevice(DeviceModel):
    """ReRAM: the spread around the target grows with time; no drift of the mean, no read noise.

    aihwkit accepts only the fitted times; between them we interpolate sigma linearly in ln t and
    hold the first (last) fit before (after) them. The per-device normal of the relaxation is fixed
    per chip and independent of the programming one (aihwkit draws a fresh one around the target).
    """

    fits: tuple[tuple[float, tuple[float, ...]], ...] = (  # (t in s, uS coefficients of (g/g_max)^0..4)
        (1.0, (0.348, 16.030, -43.853, 45.393, -16.815)),
        (DAY, (0.701, 22.086, -50.773, 47.095, -16.458)),
        (2 * DAY, (0.782, 20.274, -43.507, 37.062, -11.934)),
    )
    fit_g_max: float = 40.0  # uS: the g_max the fits were made at (sigma scales with g_max)

    def sigma_at(self, g_target: Array, t_inference: float) -> Array:
        """Spread of the conductance around its target at ``t_inference``, uS."""
        times = [t for t, _ in self.fits]
        t = min(max(t_inference, times[0]), times[-1])
        after = next(i for i, fit_t in enumerate(times) if fit_t >= t)
        before = max(after - 1, 0)
        weight = 0.0 if after == before else math.log(t / times[before]) / math.log(times[after] / times[before])
        x = g_target / self.g_max
        sigma = (1 - weight) * polynomial(self.fits[before][1], x) + weight * polynomial(self.fits[after][1], x)
        return sigma * (self.g_max / self.fit_g_max)

    def programming_sigma(self, g_target: Array) -> Array:
        return self.sigma_at(g_target, self.fits[0][0])

    def drift(self, g_target: Array, g_prog: Array, z: Array, t_inference: float) -> Array:
        return (g_target + self.prog_noise_scale * self.sigma_at(g_target, t_inference) * z).clip(min=0.0)
