"""Resistive RAM, as aihwkit's ``ReRamWan2022NoiseModel`` (``aihwkit/inference/noise/reram.py``):
polynomial fits, made by aihwkit, to the conductance spread Wan et al. measured 1 s, 1 day and 2
days after programming (Nature 608, 504 (2022), doi:10.1038/s41586-022-04992-8).
"""

from __future__ import annotations

from dataclasses import dataclass

from analog_onnx.devices.arrays import Array, log, where
from analog_onnx.devices.base import DeviceModel, polynomial

DAY = 86400.0


@dataclass(frozen=True)
class Fit:
    """The spread sigma(g) = sum c_i (g/g_max)^i, in uS, measured ``t`` seconds after programming."""

    t: float  # s
    coefficients: tuple[float, ...]  # uS, of (g/g_max)^0, ^1, ...


@dataclass(frozen=True)
class ReRAMDevice(DeviceModel):
    """ReRAM: the spread around the target grows with time; no drift of the mean, no read noise.

    aihwkit accepts only the fitted times; between them we interpolate sigma linearly in ln t and
    hold the first (last) fit before (after) them. The per-device normal of the relaxation is fixed
    per chip and independent of the programming one (aihwkit draws a fresh one around the target).
    Another fit is one more entry of ``fits`` (in time order, with as many coefficients): every
    implementation loops over them.
    """

    name = "reram"
    fits: tuple[Fit, ...] = (
        Fit(1.0, (0.348, 16.030, -43.853, 45.393, -16.815)),
        Fit(DAY, (0.701, 22.086, -50.773, 47.095, -16.458)),
        Fit(2 * DAY, (0.782, 20.274, -43.507, 37.062, -11.934)),
    )
    fit_g_max: float = 40.0  # uS: the g_max the fits were made at (sigma scales with g_max)

    def sigma_at(self, g_target: Array, t_inference: Array | float) -> Array:
        """Spread of the conductance around its target at ``t_inference``, uS: between fits i and
        i + 1 (the first whose time is not before t), linear in ln t."""
        x = g_target / self.g_max
        sigmas = [polynomial(fit.coefficients, x) for fit in self.fits]
        times = [fit.t for fit in self.fits]
        if isinstance(t_inference, float | int):
            t = min(max(float(t_inference), times[0]), times[-1])
        else:
            t = t_inference.clip(min=times[0], max=times[-1])
        sigma = sigmas[-1]
        for i in reversed(range(len(times) - 1)):
            weight = log(t / times[i]) / log(times[i + 1] / times[i])
            between = (1 - weight) * sigmas[i] + weight * sigmas[i + 1]
            sigma = between if i == len(times) - 2 else where(t <= times[i + 1], between, sigma)
        return sigma * (self.g_max / self.fit_g_max)

    def programming_sigma(self, g_target: Array) -> Array:
        return self.sigma_at(g_target, self.fits[0].t)

    def drift(self, g_target: Array, g_prog: Array, z: Array, t_inference: Array | float) -> Array:
        return (g_target + self.prog_noise_scale * self.sigma_at(g_target, t_inference) * z).clip(min=0.0)
